"""ComfyUI as a library, and this pack loaded the way ComfyUI loads a custom node.

The one module through which everything that is not ComfyUI itself (the trainer, the evaluation,
the tests, the benchmarks, the tools) imports ComfyUI and the pack:

- sys.path: ComfyUI's folder goes first, as ComfyUI's own main.py has it, so its top-level
  modules (`nodes`, `utils`, `app`, ...) win over same-named folders of this repository; the
  repository root comes after it (it is the working directory of `python -m`, or appended by
  the pack's `__init__.py` inside ComfyUI) so `flexip_model`, `flexip_host` and the
  rest import as top-level packages in every process, once.
- The pack is loaded by ComfyUI's own custom-node loader (`nodes.load_custom_node`), so its
  node layer has the same identity and registration as in a server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from flexip_model.errors import FlexIPError

from .loaded_pack import Pack

log = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMFYUI = PACK_ROOT / ".cache" / "comfyui"


def comfyui_path() -> Path:
    """ComfyUI's folder: $COMFYUI_PATH, else <repo>/.cache/comfyui; FlexIPError if it is not ComfyUI."""
    configured = os.environ.get("COMFYUI_PATH")
    path = Path(configured).expanduser() if configured else DEFAULT_COMFYUI
    if not (path / "comfy" / "sd.py").is_file() or not (path / "nodes.py").is_file():
        origin = f"COMFYUI_PATH={configured}" if configured else "the default location (no COMFYUI_PATH set)"
        raise FlexIPError(
            f"ComfyUI was not found at {path} ({origin}): run `make setup` to extract the pinned ComfyUI "
            "into .cache/comfyui, or set COMFYUI_PATH to your ComfyUI folder, the one that holds main.py and comfy/."
        )
    return path.resolve()


def import_comfy(cpu: bool, base_directory: Path | None = None, **flags: Any) -> Path:
    """Make `comfy.*` importable and fix ComfyUI's device choice; returns ComfyUI's folder.

    `base_directory` points folder_paths (models/, input/, output/) away from the host's own
    folders; `flags` set other command-line options (e.g. use_pytorch_cross_attention=True).
    model_management reads them once, at its first import, so they only count in a process
    that has not imported it yet. Idempotent.
    """
    host = comfyui_path()
    if str(host) in sys.path:
        sys.path.remove(str(host))
    sys.path.insert(0, str(host))
    if str(PACK_ROOT) not in sys.path:
        sys.path.append(str(PACK_ROOT))
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = cpu
        for name, value in flags.items():
            setattr(comfy.cli_args.args, name, value)
        if base_directory is not None and "folder_paths" not in sys.modules:
            Path(base_directory).mkdir(parents=True, exist_ok=True)
            comfy.cli_args.args.base_directory = str(base_directory)
        log.info("ComfyUI from %s", host)
    import comfy.model_management

    return host


_loaded: Pack | None = None


def load_pack() -> Pack:
    """Load the repository root with ComfyUI's custom-node loader (after import_comfy); once per process."""
    global _loaded
    if _loaded is None:
        import nodes  # ComfyUI's nodes.py: import_comfy put its folder first on sys.path

        root = str(PACK_ROOT)
        if not asyncio.run(nodes.load_custom_node(root)):
            raise FlexIPError(
                f"ComfyUI could not import the pack at {root}: the traceback is in the log above; "
                "reinstall the pack's requirements (pip install -r requirements.txt)."
            )
        init = str(PACK_ROOT / "__init__.py")  # found by file: the module name is the loader's choice
        _loaded = Pack(next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == init))
    return _loaded
