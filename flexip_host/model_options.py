"""ComfyUI's model-patcher wrappers: their kinds, and the options a sampler hands the model.

Each function imports ComfyUI when called (after `bootstrap.import_comfy`), so importing this
module never imports ComfyUI.
"""

from __future__ import annotations

from typing import Any


def wrapper_kinds() -> Any:
    """ComfyUI's `WrappersMP`: the names of the points a ModelPatcher wrapper wraps (SAMPLER_SAMPLE, APPLY_MODEL...)."""
    import comfy.patcher_extension

    return comfy.patcher_extension.WrappersMP


def merge_wrappers(wrappers: dict, patcher_wrappers: dict, copy_wrappers: bool = True) -> dict:
    """`wrappers` with a ModelPatcher's wrappers merged in (ComfyUI's merge_nested_dicts); `copy_wrappers`
    False merges into `wrappers` itself."""
    import comfy.patcher_extension

    return comfy.patcher_extension.merge_nested_dicts(wrappers, patcher_wrappers, copy_dict1=copy_wrappers)
