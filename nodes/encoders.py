"""Running ComfyUI's CLIP_VISION encoders the way FlexIP needs them.

CLIP-H goes through ComfyUI's own `encode_image`. DINOv2 is run here at the adapter's
configured resolution: ComfyUI resizes DINOv2 to 518 px (1370 tokens, ~38 s per image on a
2-core CPU), while FlexIP reads 224 px features (257 tokens), so the position embeddings are
interpolated to the smaller grid as DINOv2 itself does.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import comfy.clip_model
import comfy.clip_vision
import comfy.model_management
from comfy.image_encoders.dino2 import Dinov2Model

from ..flexip_model.errors import FlexIPError
from .progress import with_progress


def check_clip(clip_vision, embed_dim: int, adapter_name: str) -> None:
    """The `clip_vision` input must be a CLIP vision model with `embed_dim`-d image embeddings."""
    model = getattr(clip_vision, "model", None)
    if isinstance(model, Dinov2Model):
        raise FlexIPError(
            "FlexIPEncodeSubject's clip_vision input got a DINOv2 encoder: connect CLIP ViT-H/14 "
            "there and the DINOv2 encoder to the dino input.")
    projection = getattr(model, "visual_projection", None)
    if not isinstance(model, comfy.clip_model.CLIPVisionModelProjection) or projection is None:
        raise FlexIPError(
            "FlexIPEncodeSubject's clip_vision input is not a CLIP vision model: load CLIP ViT-H/14 "
            "with Load CLIP Vision.")
    if projection.out_features != embed_dim:
        raise FlexIPError(
            f"FlexIPEncodeSubject's clip_vision gives {projection.out_features}-d image embeddings but "
            f"{adapter_name} expects {embed_dim}-d (CLIP ViT-H/14): load the CLIP-H file in clip_vision.")


def check_dino(dino, hidden_dim: int, adapter_name: str) -> None:
    """The `dino` input must be a DINOv2 model of width `hidden_dim`."""
    if dino is None:
        raise FlexIPError(
            f"{adapter_name} needs DINOv2 features but FlexIPEncodeSubject's dino input is empty: "
            "load DINOv2-L (models/clip_vision) with Load CLIP Vision and connect it.")
    model = getattr(dino, "model", None)
    if not isinstance(model, Dinov2Model):
        raise FlexIPError(
            "FlexIPEncodeSubject's dino input is not a DINOv2 encoder: load a DINOv2-L file "
            "(the model.safetensors of dinov2-large) with Load CLIP Vision.")
    width = model.layernorm.weight.shape[0]
    if width != hidden_dim:
        raise FlexIPError(
            f"FlexIPEncodeSubject's dino gives {width}-d features but {adapter_name} expects "
            f"{hidden_dim}-d (DINOv2-L): load the DINOv2-L file in dino.")


def encode_each(images: Sequence[torch.Tensor],
                encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """`encode` (IMAGE [1, H, W, C] -> tensors [1, ...]) of each image [H, W, C] in turn, each output
    concatenated over the images: one progress step per image, and no result depends on its batch neighbours."""
    outputs = [encode(image.unsqueeze(0)) for image in with_progress(images)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def clip_image_embeds(clip_vision, images: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> projected CLIP [CLS] `image_embeds` [N, C] (ComfyUI's preprocessing)."""
    return clip_vision.encode_image(images, crop=True)["image_embeds"]


@torch.no_grad()
def dino_tokens(dino, images: torch.Tensor, resolution: int) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> DINOv2 `last_hidden_state` [N, 1 + (resolution/14)^2, D] at `resolution`."""
    comfy.model_management.load_model_gpu(dino.patcher)
    pixels = comfy.clip_vision.clip_preprocess(
        images.to(dino.load_device), size=resolution, mean=dino.image_mean, std=dino.image_std, crop=True).float()
    model: Dinov2Model = dino.model
    embeddings = model.embeddings
    patches = embeddings.patch_embeddings(pixels)
    cls = embeddings.cls_token.to(device=patches.device, dtype=patches.dtype).expand(patches.shape[0], -1, -1)
    position = comfy.model_management.cast_to_device(embeddings.position_embeddings, patches.device, patches.dtype)
    tokens = torch.cat([cls, patches], dim=1) + _resized_positions(position, patches.shape[1])
    tokens, _ = model.encoder(tokens)
    return model.layernorm(tokens).to(comfy.model_management.intermediate_device())


def _resized_positions(position: torch.Tensor, patch_count: int) -> torch.Tensor:
    """Bicubic resize of DINOv2's position embeddings [1, 1 + G*G, D] to a grid of `patch_count`."""
    grid = round((position.shape[1] - 1) ** 0.5)
    target = round(patch_count ** 0.5)
    if target == grid:
        return position
    cls, patches = position[:, :1], position[:, 1:]
    patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(target, target), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.to(position.dtype).permute(0, 2, 3, 1).reshape(1, target * target, -1)], dim=1)
