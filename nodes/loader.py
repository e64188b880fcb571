"""FlexIPLoader: a FlexIP checkpoint (format v1) from models/flexip."""

from __future__ import annotations

from typing import Any

import folder_paths

from flexip_model import checkpoint

from .bundles import LoadedFlexIP
from .folders import model_file
from .inputs import choice_input


class FlexIPLoader:
    DISPLAY_NAME = "Load FlexIP Adapters"
    DESCRIPTION = (
        "Loads a FlexIP adapter file (preservation + personalization adapters and their per-layer projections)."
    )
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("FLEXIP",)
    RETURN_NAMES = ("flexip",)
    OUTPUT_TOOLTIPS = ("The loaded FlexIP adapters, for FlexIPEncodeSubject and FlexIPApply.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "adapter_name": choice_input(
                    folder_paths.get_filename_list("flexip"),
                    "A FlexIP .safetensors file in models/flexip (see README: Model files).",
                ),
            }
        }

    def load(self, adapter_name: str) -> tuple[LoadedFlexIP]:
        path = model_file("flexip", adapter_name, "FlexIPLoader's adapter_name")
        return (LoadedFlexIP.wrap(adapter_name, checkpoint.load(path)),)
