"""Running ComfyUI's CLIP_VISION encoders the way FlexIP needs them.

CLIP-H goes through ComfyUI's own `encode_image`. DINOv2 is run here at the adapter's
configured resolution: ComfyUI resizes DINOv2 to 518 px (1370 tokens, ~38 s per image on a
2-core CPU), while FlexIP reads 224 px features (257 tokens), so the position embeddings are
interpolated to the smaller grid as DINOv2 itself does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import comfy.clip_model
import comfy.clip_vision
import comfy.model_management
import torch
import torch.nn.functional as F
from comfy.image_encoders.dino2 import Dinov2Model

from flexip_model.errors import FlexIPError
from flexip_model.subject import FeatureNeed, ImageFeatures
from flexip_model.vocabulary import DINO_FEATURES, HIDDEN_STATES, IMAGE_EMBEDS, encoder_name, feature_words

from .progress import with_progress

if TYPE_CHECKING:
    from comfy.clip_vision import ClipVisionModel

# ComfyUI moved clip_preprocess to comfy.clip_model (after 0.3.75); comfy.clip_vision keeps the old
# name only as an alias marked for removal. The new home when the host has it, the old one otherwise.
clip_preprocess = getattr(comfy.clip_model, "clip_preprocess", None) or comfy.clip_vision.clip_preprocess


def clip_vision_model(encoder: object, where: str, fix: str) -> comfy.clip_model.CLIPVisionModelProjection:
    """The CLIP vision model with a projection inside the CLIP_VISION `encoder`; FlexIPError naming `where`
    (a node input or a config key) and `fix` when it is DINOv2 or anything else."""
    model = getattr(encoder, "model", None)
    if isinstance(model, Dinov2Model):
        raise FlexIPError(f"{where} got a DINOv2 encoder: {fix}.")
    projection = getattr(model, "visual_projection", None)
    if not isinstance(model, comfy.clip_model.CLIPVisionModelProjection) or projection is None:
        raise FlexIPError(f"{where} is not a CLIP vision model: {fix}.")
    return model


def dino_model(encoder: object, where: str, fix: str) -> Dinov2Model:
    """The DINOv2 model inside the CLIP_VISION `encoder`; FlexIPError naming `where` and `fix` otherwise."""
    model = getattr(encoder, "model", None)
    if not isinstance(model, Dinov2Model):
        raise FlexIPError(f"{where} is not a DINOv2 encoder: {fix}.")
    return model


def check_width(where: str, feature: str, given: int, adapter: str, expected: int, fix: str) -> None:
    """FlexIPError unless the encoder at `where` gives `feature` at the width `adapter` was trained on."""
    if given != expected:
        raise FlexIPError(
            f"{where} gives {given}-d {feature_words(feature)} ({encoder_name(feature, given)}) but {adapter} "
            f"expects {expected}-d ({encoder_name(feature, expected)}): {fix}."
        )


def check_encoders(
    features: ImageFeatures, clip_vision: ClipVisionModel, dino: ClipVisionModel | None, adapter_name: str
) -> None:
    """The encoders connected to FlexIPEncodeSubject must give every feature the adapter declares."""
    for need in features.needs:
        if need.feature == DINO_FEATURES:
            check_dino(dino, need.width, need.file or adapter_name)
        else:
            check_clip(clip_vision, need, need.file or adapter_name)


def check_clip(clip_vision: ClipVisionModel, need: FeatureNeed, adapter_name: str) -> None:
    """The `clip_vision` input must be a CLIP vision model giving `need.feature` at `need.width`."""
    model = clip_vision_model(
        clip_vision,
        "FlexIPEncodeSubject's clip_vision input",
        "connect CLIP ViT-H/14 from Load CLIP Vision there (and any DINOv2 encoder to the dino input)",
    )
    hidden = model.vision_model.post_layernorm.weight.shape[0]
    # a model without projection_dim has an identity lambda there: its image_embeds are `hidden` wide
    projection = model.visual_projection
    projected = projection.out_features if isinstance(projection, torch.nn.Linear) else hidden
    given = projected if need.feature == IMAGE_EMBEDS else hidden
    check_width(
        "FlexIPEncodeSubject's clip_vision",
        need.feature,
        given,
        adapter_name,
        need.width,
        f"load {encoder_name(need.feature, need.width)} in Load CLIP Vision{need.hint}",
    )


def check_dino(dino: ClipVisionModel | None, hidden_dim: int, adapter_name: str) -> None:
    """The `dino` input must be a DINOv2 model of width `hidden_dim`."""
    if dino is None:
        raise FlexIPError(
            f"{adapter_name} needs DINOv2 features but FlexIPEncodeSubject's dino input is empty: "
            "load DINOv2-L (models/clip_vision) with Load CLIP Vision and connect it."
        )
    model = dino_model(
        dino,
        "FlexIPEncodeSubject's dino input",
        "load a DINOv2-L file (the model.safetensors of dinov2-large) with Load CLIP Vision",
    )
    check_width(
        "FlexIPEncodeSubject's dino",
        DINO_FEATURES,
        model.layernorm.weight.shape[0],
        adapter_name,
        hidden_dim,
        "load the DINOv2 file the adapter was trained with in dino",
    )


def reference_features(
    features: ImageFeatures, clip_vision: ClipVisionModel, dino: ClipVisionModel | None, references: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The declared features of IMAGE references [N, H, W, 3] ([N, ...] each) and of the uncond input
    ([1, ...] each), on the intermediate device."""
    black = features.uncond == "black"
    # a black reference, not zeros, as the encoders never saw tensors of zeros
    images = torch.cat([references, torch.zeros_like(references[:1])]) if black else references

    def dino_of(image: torch.Tensor) -> torch.Tensor:
        # check_encoders refused a missing dino; every adapter that needs DINOv2 features sets the resolution
        assert dino is not None and features.dino_resolution is not None
        return dino_tokens(dino, image, features.dino_resolution)

    def encode(image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        clip = {}
        if any(name != DINO_FEATURES for name in features.names):
            clip = clip_vision.encode_image(image, crop=True)
        return tuple(dino_of(image) if name == DINO_FEATURES else clip[name] for name in features.names)

    rows = dict(zip(features.names, encode_each(images, encode)))
    if black:
        return {name: row[:-1] for name, row in rows.items()}, {name: row[-1:] for name, row in rows.items()}
    if features.uncond == "neutral":
        return rows, {HIDDEN_STATES: neutral_hidden_states(clip_vision)}
    return rows, {}


@torch.no_grad()
def neutral_hidden_states(clip_vision: ClipVisionModel) -> torch.Tensor:
    """Penultimate hidden states [1, N, C] of an all-zero normalised pixel input.

    IP-Adapter-plus was trained to read this as "no image" (its image drop is zeros after CLIP's
    normalisation, a mean-grey picture), so it makes the unconditional tokens of plus files.
    """
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    size = clip_vision.image_size
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    hidden = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[1]
    return hidden.to(comfy.model_management.intermediate_device())


def encode_each(
    images: Collection[torch.Tensor], encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
) -> tuple[torch.Tensor, ...]:
    """`encode` (IMAGE [1, H, W, C] -> tensors [1, ...]) of each image [H, W, C] in turn, each output
    concatenated over the images: one progress step per image, and no result depends on its batch neighbours."""
    outputs = [encode(image.unsqueeze(0)) for image in with_progress(images)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def clip_image_embeds(clip_vision: ClipVisionModel, images: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> projected CLIP [CLS] `image_embeds` [N, C] (ComfyUI's preprocessing)."""
    return clip_vision.encode_image(images, crop=True)[IMAGE_EMBEDS]


@torch.no_grad()
def dino_tokens(dino: ClipVisionModel, images: torch.Tensor, resolution: int) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> DINOv2 `last_hidden_state` [N, 1 + (resolution/14)^2, D] at `resolution`."""
    comfy.model_management.load_model_gpu(dino.patcher)
    pixels = clip_preprocess(
        images.to(dino.load_device), size=resolution, mean=dino.image_mean, std=dino.image_std, crop=True
    ).float()
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
    target = round(patch_count**0.5)
    if target == grid:
        return position
    cls, patches = position[:, :1], position[:, 1:]
    patches = patches.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(target, target), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.to(position.dtype).permute(0, 2, 3, 1).reshape(1, target * target, -1)], dim=1)
