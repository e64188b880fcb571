"""ComfyUI as a library, and this pack imported the way ComfyUI imports a custom node.

The trainer must run the very attention code that inference runs, so it imports the pack
(the repository root, a ComfyUI custom node) as a package and uses its `nodes.patch`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from flexip_model.errors import FlexIPError

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_MODULE = "comfyui_flexip"  # the package name the pack gets in this process
DEFAULT_COMFYUI = PACK_ROOT / ".cache" / "comfyui"


@dataclass(frozen=True)
class Pack:
    """The pack's ComfyUI glue modules the trainer drives."""

    patch: ModuleType
    layers: ModuleType
    encoders: ModuleType
    encode: ModuleType
    apply: ModuleType
    bundles: ModuleType
    loader: ModuleType


def comfyui_path() -> Path:
    """ComfyUI's folder: $COMFYUI_PATH, else <repo>/.cache/comfyui; FlexIPError if it is not ComfyUI."""
    configured = os.environ.get("COMFYUI_PATH")
    path = Path(configured).expanduser() if configured else DEFAULT_COMFYUI
    if not (path / "comfy" / "sd.py").is_file():
        origin = f"COMFYUI_PATH={configured}" if configured else "the default location (no COMFYUI_PATH set)"
        raise FlexIPError(
            f"ComfyUI was not found at {path} ({origin}): set COMFYUI_PATH to your ComfyUI folder, "
            "the one that holds main.py and comfy/.")
    return path.resolve()


def import_comfy(cpu: bool) -> Path:
    """Make `comfy.*` importable and fix ComfyUI's device choice (CPU or the current CUDA device).

    The host goes to the end of sys.path: ComfyUI's own `tests` and `nodes` must not shadow this
    repository's packages, and nothing in comfy.* imports them. Idempotent; if ComfyUI is already
    imported in this process (tests), it is used as it is.
    """
    if "comfy.model_management" in sys.modules:
        return Path(sys.modules["comfy"].__path__[0]).parent
    host = comfyui_path()
    if str(host) not in sys.path:
        sys.path.append(str(host))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads the device flags once, now)

    log.info("ComfyUI from %s", host)
    return host


def _alias_core() -> None:
    """Let the pack's `..flexip_model` imports resolve to the already imported `flexip_model`.

    One copy of the core in the process: adapters built by the trainer and errors raised by the
    pack's code are the same classes the trainer uses.
    """
    import flexip_model  # noqa: F401

    for name, module in list(sys.modules.items()):
        if name == "flexip_model" or name.startswith("flexip_model."):
            sys.modules.setdefault(f"{PACK_MODULE}.{name}", module)


def import_pack() -> Pack:
    """Import the repository root as the custom-node package `comfyui_flexip` (after import_comfy)."""
    if PACK_MODULE not in sys.modules:
        _alias_core()
        spec = importlib.util.spec_from_file_location(
            PACK_MODULE, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[PACK_MODULE]
            raise

    def load(name: str) -> ModuleType:
        return importlib.import_module(f"{PACK_MODULE}.nodes.{name}")

    return Pack(patch=load("patch"), layers=load("layers"), encoders=load("encoders"), encode=load("encode"),
                apply=load("apply"), bundles=load("bundles"), loader=load("loader"))
