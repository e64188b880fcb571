"""What the InfiniteYou nodes pass along: INFINITEYOU_PAIR (the two stages) and INFINITEYOU_IDENTITY."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from flexip_model.ip_adapter.image_projections import Resampler

if TYPE_CHECKING:
    from comfy.controlnet import ControlNet
    from comfy.ldm.flux.controlnet import ControlNetFlux

PAIR_TYPE, IDENTITY_TYPE = "INFINITEYOU_PAIR", "INFINITEYOU_IDENTITY"


@dataclass(frozen=True, eq=False)
class InfiniteYouStage:
    """One stage: its InfuseNet, as ComfyUI loaded it, and its identity projection."""

    name: str  # the InfuseNet file name
    control: ControlNet
    projection: Resampler  # ArcFace 512 -> 8 x 4096 tokens, float32, cpu, eval


@dataclass(frozen=True, eq=False)
class InfiniteYouPair:
    """sim_stage1 acts as FlexIP's preservation branch, aes_stage2 as its personalization branch."""

    sim: InfiniteYouStage
    aes: InfiniteYouStage


@dataclass(frozen=True, eq=False)
class InfiniteYouIdentity:
    """A face as both stages' identity tokens (each InfuseNet's text context)."""

    pair: InfiniteYouPair  # the pair whose projections made the tokens
    sim_tokens: torch.Tensor  # [1, 8, 4096] float32, cpu
    aes_tokens: torch.Tensor


def pair_group_counts(stage: InfiniteYouStage) -> tuple[int, int]:
    """(double, single) residuals of the stage's InfuseNet: its residual groups."""
    # ComfyUI types control_model as optional; a loaded stage's is a ControlNetFlux (load_infusenet checked it)
    params = cast("ControlNetFlux", stage.control.control_model).params
    return params.depth, params.depth_single_blocks
