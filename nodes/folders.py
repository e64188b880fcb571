"""Model folders of the pack: registered with ComfyUI (so extra_model_paths.yaml works), and names resolved inside them.

A name can reach a node through a link from any node (wildcard "Any" nodes skip ComfyUI's
combo-list check), so every file or folder name is resolved here and nowhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import folder_paths

from flexip_model.errors import FlexIPError

# Pickle files are listed so that picking one gets the explanation instead of an empty list.
ADAPTER_EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
# insightface: packs live in models/insightface/models/<pack>/ (see faces_packs.py).
# infiniteyou: InfiniteYou's identity projections and facexlib's ArcFace IR-SE50 (InfuseNets: models/controlnet).
FOLDERS = {
    "flexip": ADAPTER_EXTENSIONS,
    "ipadapter": ADAPTER_EXTENSIONS,
    "insightface": {".onnx"},
    "infiniteyou": {".safetensors", ".bin", ".pth"},
}
_DRIVE = re.compile(r"^[A-Za-z]:")


def register_model_folders() -> None:
    """models/flexip (FlexIP adapters), models/ipadapter (compatibility mode), models/insightface (faces),
    models/infiniteyou (FLUX)."""
    for name, extensions in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            known.update(extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def _shown(folder: str) -> str:
    """The folder as the user knows it: its first registered path."""
    paths = folder_paths.get_folder_paths(folder)
    return paths[0] if paths else f"models/{folder}"


def check_name(name: object, folder: str, where: str, single: bool = False) -> str:
    """`name` if it is a relative name that stays inside `folder`; FlexIPError naming `where` otherwise.

    Refused: empty names, NUL bytes, absolute paths, drive letters, '..' parts, backslashes where
    they are not the separator, and (with `single`) any separator at all.
    """
    shown = _shown(folder)
    fix = f"pick a {'folder' if single else 'file'} listed in the node (a name inside {shown}, not a path)"
    if not isinstance(name, str) or not name.strip():
        raise FlexIPError(f"{where} is empty or not a name ({name!r}): {fix}.")
    parts = re.split(r"[\\/]", name)
    problem = (
        "contains a NUL byte"
        if "\0" in name
        else "is an absolute path"
        if os.path.isabs(name) or name.startswith(("/", "\\")) or _DRIVE.match(name)
        else "contains '..'"
        if ".." in parts
        else "contains a backslash"
        if "\\" in name and os.sep != "\\"
        else "contains a folder separator"
        if single and len(parts) > 1
        else None
    )
    if problem:
        raise FlexIPError(f"{where} {name!r} {problem}, so it could leave {shown}: {fix}.")
    return name


def check_inside(path: Path, folder: str, where: str, listed: Callable[[], Iterable[str]], name: str) -> Path:
    """`path` if its real path stays inside a registered `folder` (real path too), or `name` is one ComfyUI lists.

    Users symlink model folders and files to share them between installs: a listed name is one
    they placed there (the listing follows their links), so its target is theirs to choose.
    """
    real = os.path.realpath(path)
    if any(_within(real, os.path.realpath(root)) for root in folder_paths.get_folder_paths(folder)):
        return path
    if name in set(listed()):  # listing reads the disk: only for paths that leave the folder
        return path
    raise FlexIPError(
        f"{where} {name!r} leads to {real}, outside {_shown(folder)}: pick a file listed in the node "
        f"or move the model into {_shown(folder)}."
    )


def _within(real: str, root: str) -> bool:
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:  # Windows: another drive
        return False


def model_file(folder: str, name: object, where: str) -> str:
    """The full path of `name` in the registered `folder`; FlexIPError naming `where` if it is not a file there."""
    name = check_name(name, folder, where)
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        looked = ", ".join(folder_paths.get_folder_paths(folder)) or _shown(folder)
        raise FlexIPError(
            f"{where} {name!r} was not found (looked in {looked}): put the file into "
            f"{_shown(folder)} and refresh the node list (press R)."
        )
    return str(check_inside(Path(path), folder, where, lambda: folder_paths.get_filename_list(folder), name))
