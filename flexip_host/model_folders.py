"""ComfyUI's model folders (folder_paths) for the callers outside a server.

Imports ComfyUI when called (after `bootstrap.import_comfy`), so importing this module never imports ComfyUI.
"""

from __future__ import annotations

from pathlib import Path


def put_model_folder_first(kind: str, folder: Path) -> None:
    """Register `folder` for ComfyUI's `kind` models (flexip, ipadapter, ...) ahead of the others, so a
    same-named file elsewhere is not picked instead."""
    import folder_paths

    folder_paths.add_model_folder_path(kind, str(folder), is_default=True)
