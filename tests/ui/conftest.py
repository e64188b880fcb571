"""The ui layer: the session's ComfyUI server (frontend settings seeded) and one headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ui_server(shared_comfy_server):
    """The session's ComfyServer; user/default/comfy.settings.json has Comfy.TutorialCompleted."""
    return shared_comfy_server


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (tools.harness.browser.Browser), quit and killed by PID at the end."""
    from tools.harness.browser import Browser

    with Browser() as instance:
        yield instance


@pytest.fixture(scope="session")
def frontend(browser, ui_server):
    """The browser with the real frontend of `ui_server` loaded and ready."""
    browser.open_frontend(ui_server.url)
    return browser


@pytest.fixture(scope="session")
def screenshot_dir(cache_dir: Path) -> Path:
    """<repo>/.cache/screenshots (kept after the run for a human to look at)."""
    folder = cache_dir / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
