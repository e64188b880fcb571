"""InsightFace model packs on disk: which exist, and where a pack must sit.

A pack is a folder of .onnx files in `models/insightface/models/<pack>/` (the layout
insightface itself reads, shared with IPAdapter plus, InstantID and PuLID), under any path
registered for `insightface` (extra_model_paths.yaml included). Only the filesystem is read
here; nothing imports insightface.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from flexip_model.errors import FlexIPError

from .folders import check_inside, check_name

KNOWN_PACKS = ("antelopev2", "buffalo_l")
_WHERE = "FlexIPInsightFaceLoader's pack"


def insightface_roots() -> list[Path]:
    """The registered `insightface` folders (models/insightface first)."""
    return [Path(path) for path in folder_paths.get_folder_paths("insightface")]


def found_packs() -> set[str]:
    """The pack folders present under every registered root's models/ (their links followed)."""
    found = set()
    for root in insightface_roots():
        packs = root / "models"
        if packs.is_dir():
            found.update(entry.name for entry in packs.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    return found


def pack_names() -> list[str]:
    """The well-known packs first (so shipped workflows validate), then every folder found."""
    return list(KNOWN_PACKS) + sorted(found_packs() - set(KNOWN_PACKS))


def _onnx_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*.onnx") if path.is_file())


def pack_folder(pack: str) -> Path:
    """The folder of `pack`, holding its .onnx files directly; FlexIPError with the expected path otherwise."""
    check_name(pack, "insightface", _WHERE, single=True)
    roots = insightface_roots()
    if not roots:
        raise FlexIPError(
            "No insightface model folder is registered with ComfyUI: restart ComfyUI so the "
            "FlexIP pack can register models/insightface."
        )
    expected = roots[0] / "models" / pack
    for root in roots:
        folder = root / "models" / pack
        if not folder.is_dir():
            continue
        if _onnx_files(folder):
            return check_inside(folder, "insightface", _WHERE, found_packs, pack)
        nested = [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and _onnx_files(sub)]
        if nested:
            raise FlexIPError(
                f"The InsightFace pack '{pack}' is nested one folder too deep ({nested[0]}{os.sep}*.onnx): move "
                f"the .onnx files up into {folder}{os.sep}, where insightface looks for them."
            )
        raise FlexIPError(
            f"The InsightFace pack folder {folder} has no .onnx files: unzip the complete '{pack}' pack so that "
            f"its .onnx files sit directly in {folder}{os.sep}."
        )
    for root in roots:
        misplaced = root / pack
        if misplaced.is_dir():
            raise FlexIPError(
                f"The InsightFace pack '{pack}' is at {misplaced} but insightface reads packs from "
                f"{root / 'models' / pack}: move the folder into {root / 'models'}{os.sep}."
            )
    looked = ", ".join(str(root / "models") for root in roots)
    raise FlexIPError(
        f"The InsightFace pack '{pack}' was not found (looked in {looked}): download it and unzip it so that its "
        f".onnx files sit in {expected}{os.sep}."
    )
