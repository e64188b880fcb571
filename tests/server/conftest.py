"""The server layer: one real ComfyUI server per session, and a factory for extra ones."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def comfy_server(shared_comfy_server):
    """The session's ComfyServer (pack installed, generated models, CPU); shared with the ui layer."""
    return shared_comfy_server


@pytest.fixture
def start_comfy_server(tmp_path_factory: pytest.TempPathFactory, comfyui_path):
    """Factory: start_comfy_server(**ComfyServer kwargs) -> started ComfyServer, stopped after the test.

    For tests that need a differently configured server (another pack folder, no models).
    """
    from tools.harness.server import ComfyServer

    started = []

    def start(**kwargs):
        kwargs.setdefault("host_path", comfyui_path)
        server = ComfyServer(tmp_path_factory.mktemp("comfy-extra"), **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
