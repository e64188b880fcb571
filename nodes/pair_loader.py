"""Compatibility mode (docs/design.md §7): a pair of public IP-Adapter files as FlexIP's two branches.

Not trained FlexIP: the weights are IP-Adapter's, the FlexIP gate blends them. The pair is a
`FLEXIP` for the usual FlexIPEncodeSubject / FlexIPGateSchedule / FlexIPApply nodes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import folder_paths

from flexip_model.ip_adapter import load_pair

from .bundles import LoadedFlexIP
from .folders import model_file
from .inputs import choice_input, typed_input
from .layers import context_dim_of, layer_specs_of

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher

logger = logging.getLogger(__name__)


class FlexIPAdapterPairLoader:
    DISPLAY_NAME = "Load IP-Adapter Pair (FlexIP compatibility mode)"
    DESCRIPTION = (
        "Compatibility mode over IP-Adapter weights, not trained FlexIP: loads two public IP-Adapter files "
        "from models/ipadapter as the preservation and personalization branches, and the FlexIP gate blends "
        "them. γ = 1 is plain IP-Adapter with the preservation file, γ = 0 with the personalization file. "
        "FlexIP Encode Subject needs only CLIP ViT-H/14 here (no DINOv2)."
    )
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("FLEXIP",)
    RETURN_NAMES = ("flexip",)
    OUTPUT_TOOLTIPS = ("Both IP-Adapter files as one FLEXIP, for FlexIPEncodeSubject and FlexIPApply.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        files = folder_paths.get_filename_list("ipadapter")
        return {
            "required": {
                "model": typed_input(
                    "MODEL",
                    "The model to patch later: the files' layers are matched to its cross-attention layers here.",
                ),
                "preservation": choice_input(
                    files,
                    "IP-Adapter file for identity, weighted by γ (e.g. ip-adapter-plus_sd15 or "
                    "ip-adapter-plus-face_sd15).",
                ),
                "personalization": choice_input(
                    files,
                    "IP-Adapter file for editability, weighted by 1 − γ (e.g. ip-adapter_sd15 or "
                    "ip-adapter_sd15_light).",
                ),
            }
        }

    def load(self, model: ModelPatcher, preservation: str, personalization: str) -> tuple[LoadedFlexIP]:
        preservation_file = model_file("ipadapter", preservation, "FlexIPAdapterPairLoader's preservation")
        personalization_file = model_file("ipadapter", personalization, "FlexIPAdapterPairLoader's personalization")
        diffusion_model = model.get_model_object("diffusion_model")
        pair = load_pair(
            preservation_file, personalization_file, layer_specs_of(diffusion_model), context_dim_of(diffusion_model)
        )
        logger.info(
            "FlexIP compatibility mode: preservation %s, personalization %s, %d layers.",
            pair.preservation.spec.describe(),
            pair.personalization.spec.describe(),
            len(pair.config.layers),
        )
        return (LoadedFlexIP.wrap(f"{preservation} + {personalization}", pair),)
