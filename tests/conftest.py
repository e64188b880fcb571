"""Layer markers by folder, the repository paths, and the one ComfyUI server a session shares.

tests/unit -> unit, tests/comfy -> comfy, tests/train -> train, tests/eval -> eval, tests/server -> server,
tests/ui -> ui, tests/gpu -> gpu, so `pytest -m comfy` (make test-comfy) selects a layer. When `-m` names only
layers, the other layers' folders are not even collected (their conftests import ComfyUI or start
processes).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Test helpers import as `tests.<layer>.<module>` (one layer's) or `tests.support.<module>` (several
# layers'; no layer, nothing collected) from the repo root. ComfyUI has a `tests`
# package too, and its folder goes first on sys.path once a layer imports ComfyUI
# (flexip_host.bootstrap), so the name is bound to this folder now, before any layer's conftest runs.
import tests  # noqa: F401
from flexip_model.errors import FlexIPError
from tools.fixtures import CACHE_DIR, REPO_ROOT
from tools.fixtures import comfyui_path as resolve_comfyui_path

TESTS_DIR = Path(__file__).resolve().parent
LAYERS = ("unit", "comfy", "train", "eval", "server", "ui", "gpu")

# Frontend settings seeded into the shared server's user/default/comfy.settings.json:
# no tutorial or template browser over the canvas.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.3,  # readable screenshots of whole graphs
}


def layer_of(path: Path) -> str | None:
    try:
        first = Path(path).resolve().relative_to(TESTS_DIR).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in LAYERS else None


def _selected_layers(config: pytest.Config) -> set[str] | None:
    """The layers a plain `-m "a or b"` expression selects; None for any other expression."""
    expression = (config.getoption("markexpr") or "").strip()
    if not expression:
        return None
    names = re.split(r"\s+or\s+", expression)
    if all(name in LAYERS for name in names):
        return set(names)
    return None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    selected = _selected_layers(config)
    if selected is None or collection_path.parent != TESTS_DIR:
        return None
    if collection_path.name in LAYERS and collection_path.name not in selected:
        return True
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(item.path)
        if layer is not None:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """<repo>/.cache (generated fixtures under fixtures/, screenshots under screenshots/)."""
    CACHE_DIR.mkdir(exist_ok=True)
    return CACHE_DIR


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI host: $COMFYUI_PATH, else <repo>/.cache/comfyui."""
    try:
        return resolve_comfyui_path()
    except FlexIPError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def shared_comfy_server(tmp_path_factory: pytest.TempPathFactory, comfyui_path: Path):
    """One ComfyUI server (pack, generated models, frontend settings) for the server and ui layers."""
    from tools.harness.server import LRU_CACHE_ARGS, ComfyServer

    base = tmp_path_factory.mktemp("comfy-server")
    with ComfyServer(base, host_path=comfyui_path, settings=FRONTEND_SETTINGS, extra_args=LRU_CACHE_ARGS) as server:
        yield server
