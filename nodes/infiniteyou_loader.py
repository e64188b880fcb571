"""FlexIPInfiniteYouLoader: InfiniteYou's two stages (InfuseNet + identity projection each) as one pair."""

from __future__ import annotations

import logging
from typing import Any

import folder_paths

from flexip_model.errors import FlexIPError
from flexip_model.flux.identity_projection import load_identity_projection

from .folders import model_file
from .infiniteyou_bundles import PAIR_TYPE, InfiniteYouPair, InfiniteYouStage
from .infusenet_files import InfuseNetFile, check_infusenet, load_infusenet
from .inputs import choice_input

logger = logging.getLogger(__name__)
NODE = "FlexIPInfiniteYouLoader"


class FlexIPInfiniteYouLoader:
    DISPLAY_NAME = "FlexIP InfiniteYou Loader"
    DESCRIPTION = (
        "Loads InfiniteYou v1.0's two stages for the FlexIP gate: sim_stage1 (identity, preservation) and "
        "aes_stage2 (prompt following, personalization), each an InfuseNet from models/controlnet and its "
        "image_proj_model.bin from models/infiniteyou."
    )
    CATEGORY = "FlexIP/flux"
    RETURN_TYPES = (PAIR_TYPE,)
    RETURN_NAMES = ("pair",)
    OUTPUT_TOOLTIPS = ("Both stages, for FlexIP InfiniteYou Face and Apply FlexIP InfiniteYou.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        controlnets = folder_paths.get_filename_list("controlnet")
        projections = folder_paths.get_filename_list("infiniteyou")
        return {
            "required": {
                "sim_infusenet": choice_input(
                    controlnets, "sim_stage1's InfuseNet (e.g. infusenet_sim_fp8e4m3fn.safetensors): γ = 1."
                ),
                "sim_projection": choice_input(
                    projections, "sim_stage1's image_proj_model.bin (renamed, e.g. infiniteyou_sim_image_proj.bin)."
                ),
                "aes_infusenet": choice_input(
                    controlnets, "aes_stage2's InfuseNet (e.g. infusenet_aes_fp8e4m3fn.safetensors): γ = 0."
                ),
                "aes_projection": choice_input(
                    projections, "aes_stage2's image_proj_model.bin (renamed, e.g. infiniteyou_aes_image_proj.bin)."
                ),
            }
        }

    def load(
        self, sim_infusenet: str, sim_projection: str, aes_infusenet: str, aes_projection: str
    ) -> tuple[InfiniteYouPair]:
        sim_file = check_infusenet(sim_infusenet, f"{NODE}'s sim_infusenet")
        aes_file = check_infusenet(aes_infusenet, f"{NODE}'s aes_infusenet")
        if sim_file.groups != aes_file.groups:  # from the headers: before loading GBs
            raise FlexIPError(
                f"{NODE}'s InfuseNets differ: {sim_infusenet} has {sim_file.groups[0]} double and "
                f"{sim_file.groups[1]} single residuals, {aes_infusenet} {aes_file.groups[0]} and "
                f"{aes_file.groups[1]}: load the two stages of one release."
            )
        pair = InfiniteYouPair(_stage(sim_file, sim_projection, "sim"), _stage(aes_file, aes_projection, "aes"))
        logger.info(
            "FlexIP InfiniteYou pair: sim %s, aes %s, %d + %d residual groups.",
            sim_infusenet,
            aes_infusenet,
            *sim_file.groups,
        )
        return (pair,)


def _stage(file: InfuseNetFile, projection: str, stage: str) -> InfiniteYouStage:
    resampler = load_identity_projection(model_file("infiniteyou", projection, f"{NODE}'s {stage}_projection"))
    return InfiniteYouStage(file.name, load_infusenet(file, f"{NODE}'s {stage}_infusenet"), resampler)
