"""The frozen models, loaded with ComfyUI's own loaders and checked: the base the trainer trains an adapter
for and the evaluation samples with."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flexip_model.errors import FlexIPError
from flexip_model.vocabulary import base_of

from .loaded_pack import Pack
from .model_section import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrozenModels:
    """Everything that stays frozen: UNet (ModelPatcher), text encoder, VAE, CLIP-H, DINOv2."""

    unet: Any
    clip: Any
    vae: Any
    clip_vision: Any
    dino: Any
    base: str

    @property
    def diffusion_model(self) -> torch.nn.Module:
        """The UNet module itself, inside its ModelPatcher."""
        return self.unet.model.diffusion_model


@dataclass(frozen=True)
class Factories:
    """Builders of a UNet ModelPatcher / CLIP_VISION objects in code instead of files (None = load the file)."""

    unet: Callable[[], Any] | None = None
    clip_vision: Callable[[], Any] | None = None
    dino: Callable[[], Any] | None = None


def resolve_factories(config: ModelConfig) -> Factories:
    """Import the "module:function" factories of [model]. Call before `import_comfy`: ComfyUI's folder
    holds packages (`tests`, `utils`) that would otherwise shadow a project's own."""

    def resolve(spec: str, key: str) -> Callable[[], Any] | None:
        if not spec:
            return None
        module_name, _, function = spec.partition(":")
        try:
            return getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError, ValueError) as error:
            raise FlexIPError(
                f"[model] {key} {spec!r} cannot be imported ({error}): write it as "
                "'package.module:function', importable from the current folder."
            ) from None

    return Factories(
        resolve(config.unet_factory, "unet_factory"),
        resolve(config.clip_vision_factory, "clip_vision_factory"),
        resolve(config.dino_factory, "dino_factory"),
    )


def _existing(path: Path | None, key: str) -> Path:
    if path is None or not path.is_file():
        raise FlexIPError(f"[model] {key} {path} was not found: give the path of the .safetensors file.")
    return path


def _load_encoder(path: Path | None, factory: Callable[[], Any] | None, key: str) -> Any:
    if factory is not None:
        return factory()
    import comfy.clip_vision

    try:
        encoder = comfy.clip_vision.load(str(_existing(path, key)))
    except (RuntimeError, KeyError, ValueError) as error:
        raise FlexIPError(
            f"[model] {key} {path.name} is not an image encoder ComfyUI can load ({error}): "
            "use the CLIP ViT-H/14 and DINOv2-L files from models/clip_vision."
        ) from None
    if encoder is None:
        raise FlexIPError(
            f"[model] {key} {path.name} is not an image encoder ComfyUI recognises: "
            "use the CLIP ViT-H/14 and DINOv2-L files from models/clip_vision."
        )
    return encoder


def load_frozen(config: ModelConfig, factories: Factories, unet_dtype: torch.dtype | None, pack: Pack) -> FrozenModels:
    """Load the base checkpoint with ComfyUI's own loader (UNet dtype `unet_dtype`, None = ComfyUI's choice)."""
    import comfy.model_base
    import comfy.sd

    path = _existing(config.checkpoint, "checkpoint")
    options = {} if unet_dtype is None else {"dtype": unet_dtype}
    try:
        unet, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), output_model=factories.unet is None, model_options=options
        )
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise FlexIPError(
            f"[model] checkpoint {path.name} is not a model ComfyUI recognises ({reason}): "
            "give a full SD1.5 or SDXL checkpoint (UNet, text encoder and VAE in one file)."
        ) from None
    if clip is None or vae is None:
        raise FlexIPError(
            f"[model] checkpoint {path.name} lacks its text encoder or VAE: give a full checkpoint, "
            "not a UNet-only file."
        )
    if factories.unet is not None:
        unet = factories.unet()
    clip_vision = _load_encoder(config.clip_vision, factories.clip_vision, "clip_vision")
    dino = _load_encoder(config.dino, factories.dino, "dino")
    pack.clip_vision_model(
        clip_vision, "[model] clip_vision", "give CLIP ViT-H/14 (the file IP-Adapter uses), and the DINOv2 file as dino"
    )
    pack.dino_model(dino, "[model] dino", "give the DINOv2-L file (dinov2-large model.safetensors)")
    diffusion_model = unet.model.diffusion_model
    width = pack.context_dim_of(diffusion_model)
    base = base_of(width)
    # each family's extra UNet input: none for SD1.5; for SDXL model_base.SDXL's pooled-text and
    # size/crop vector, which objective.model_conditions has the model build
    is_sdxl = isinstance(unet.model, comfy.model_base.SDXL)
    sd15 = base == "sd15" and not is_sdxl and getattr(diffusion_model, "num_classes", None) is None
    if not (sd15 or (base == "sdxl" and is_sdxl)):
        raise FlexIPError(
            f"[model] checkpoint {path.name} is neither SD1.5 nor SDXL (cross-attention width {width}): "
            "the trainer and the evaluation support SD1.5 and SDXL checkpoints."
        )
    unet.model.requires_grad_(False)
    for encoder in (clip_vision, dino):
        encoder.model.requires_grad_(False)
    return FrozenModels(unet=unet, clip=clip, vae=vae, clip_vision=clip_vision, dino=dino, base=base)
