"""The `[model]` section of the training and evaluation configs: the frozen base, and its one check.

Both configs hold the same section, so a training config's [model] block can be pasted into an
evaluation config as it is; `check_model_section` is the one place its rules live.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flexip_model.errors import FlexIPError


@dataclass(frozen=True)
class ModelConfig:
    """The frozen base: a ComfyUI checkpoint and the two image encoders (files from models/)."""

    checkpoint: Path
    clip_vision: Path | None = None
    dino: Path | None = None
    # "module:function" returning the ComfyUI object instead of loading a file (tests, custom builds)
    unet_factory: str = ""
    clip_vision_factory: str = ""
    dino_factory: str = ""


def check_model_section(model: ModelConfig, name: str) -> None:
    """FlexIPError naming the config file `name` if [model] lacks an encoder (a file or a factory)."""
    if model.clip_vision is None and not model.clip_vision_factory:
        raise FlexIPError(f"{name} [model] lacks clip_vision: give the CLIP ViT-H/14 file from models/clip_vision.")
    if model.dino is None and not model.dino_factory:
        raise FlexIPError(f"{name} [model] lacks dino: give the DINOv2-L file from models/clip_vision.")
