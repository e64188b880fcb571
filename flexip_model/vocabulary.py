"""The pack's shared words, defined once: UNet layer keys, model families, encoder names, gate modes, masks.

Every other module (nodes, trainer, checkpoint readers, CLI) imports these instead of spelling
them again, so a key, a family or an error sentence cannot drift between two places.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import FlexIPError

BLOCKS = ("input", "middle", "output")
BLOCK_ORDER = MappingProxyType({block: position for position, block in enumerate(BLOCKS)})  # ComfyUI's patch order
GATE_MODES = ("output", "token")

# ids of real UNets have 1-2 digits; 6 keeps int() of a file's name bounded
_KEY_PATTERN = re.compile(r"^(input|middle|output)_(\d{1,6})_(\d{1,6})$")
# attn2 of a transformer block in ComfyUI's (LDM) UNet, e.g. "output_blocks.3.1.transformer_blocks.0.attn2";
# the middle block has no id (it is 0 in the key)
_ATTN2_PATTERN = re.compile(
    r"^(?:(input|output)_blocks\.(\d{1,6})|(middle)_block)\.\d{1,6}\.transformer_blocks\.(\d{1,6})\.attn2$")


def layer_key(block: str, block_id: int, index: int) -> str:
    """Key of one attn2 layer, e.g. ("input", 1, 0) -> "input_1_0" (ComfyUI's replace key joined)."""
    return f"{block}_{block_id}_{index}"


def is_layer_key(key: object) -> bool:
    """Whether `key` is a well-formed layer key such as 'input_1_0'."""
    return isinstance(key, str) and _KEY_PATTERN.match(key) is not None


def parse_layer_key(key: str) -> tuple[str, int, int]:
    """Inverse of `layer_key`: "output_11_0" -> ("output", 11, 0)."""
    match = _KEY_PATTERN.match(key) if is_layer_key(key) else None
    if match is None:
        raise FlexIPError(
            f"layer key {key!r} is malformed: use '<input|middle|output>_<id>_<index>', e.g. 'input_1_0'."
        )
    return match.group(1), int(match.group(2)), int(match.group(3))


def attn2_layer(module_name: str) -> Optional[tuple[str, int, int]]:
    """'input_blocks.1.1.transformer_blocks.0.attn2' -> ("input", 1, 0); None for any other module name."""
    match = _ATTN2_PATTERN.match(module_name)
    if match is None:
        return None
    if match.group(3):
        return "middle", 0, int(match.group(4))
    return match.group(1), int(match.group(2)), int(match.group(4))


def comfy_order(layer: tuple[str, int, int]) -> tuple[int, int, int]:
    """Sort key of (block, block id, index) in ComfyUI's patch order: input, middle, output."""
    block, block_id, index = layer
    return BLOCK_ORDER[block], block_id, index


# model families by the width d of their text context
_FAMILIES = MappingProxyType({768: ("sd15", "SD1.5"), 2048: ("sdxl", "SDXL")})
BASES = tuple(base for base, _ in _FAMILIES.values())


def base_of(context_dim: Optional[int]) -> str:
    """'sd15', 'sdxl', or '' for a UNet of another context width."""
    return _FAMILIES[context_dim][0] if context_dim in _FAMILIES else ""


def family_name(context_dim: Optional[int]) -> str:
    """'SD1.5', 'SDXL', or 'context <d>' for other UNets."""
    return _FAMILIES[context_dim][1] if context_dim in _FAMILIES else f"context {context_dim}"


def check_base(base: str) -> None:
    """FlexIPError unless `base` is one of BASES."""
    if base not in BASES:
        raise FlexIPError(f"base {base!r} is unknown: use one of {', '.join(BASES)}.")


def context_dim_for(base: str) -> int:
    """The UNet cross-attention width d of `base`: 768 (SD1.5) or 2048 (SDXL)."""
    check_base(base)
    return next(width for width, (name, _) in _FAMILIES.items() if name == base)


# image encoders by what the adapters read from them and its width
_ENCODERS = MappingProxyType({
    ("image_embeds", 768): "CLIP ViT-L/14", ("image_embeds", 1024): "CLIP ViT-H/14",
    ("image_embeds", 1280): "CLIP ViT-bigG/14",
    ("penultimate_hidden_states", 1024): "CLIP ViT-L/14", ("penultimate_hidden_states", 1280): "CLIP ViT-H/14",
    ("penultimate_hidden_states", 1664): "CLIP ViT-bigG/14",
    ("dino_features", 1024): "DINOv2-L", ("dino_features", 1536): "DINOv2-g",
})
_FEATURE_WORDS = MappingProxyType({"image_embeds": "image embeddings", "penultimate_hidden_states": "hidden states",
                                   "dino_features": "features"})


def feature_words(feature: str) -> str:
    """How an error names `feature`: 'image embeddings', 'hidden states' or 'features'."""
    return _FEATURE_WORDS[feature]


def encoder_name(feature: str, width: int) -> str:
    """The encoder that gives `width`-d `feature`, e.g. 'CLIP ViT-H/14', or a plain description."""
    default = "a DINOv2 model" if feature == "dino_features" else "a CLIP vision model"
    return _ENCODERS.get((feature, width), f"{default} with {width}-d {feature_words(feature)}")


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK [H, W] or [N, H, W] -> float [N, H, W]."""
    return (mask.unsqueeze(0) if mask.ndim == 2 else mask).float()


def image_masks(mask: Optional[torch.Tensor], count: int, size: tuple[int, int], where: str) -> Optional[torch.Tensor]:
    """MASK [H, W] or [1 or count, H, W] -> float [1 or count, *size] (bilinear when the size differs);
    FlexIPError naming `where` when the mask count fits neither one mask nor one per image."""
    if mask is None:
        return None
    mask = mask_batch(mask)
    if mask.shape[0] not in (1, count):
        raise FlexIPError(
            f"{where} got {count} images but {mask.shape[0]} masks: give one mask "
            "for all images or one per image.")
    if tuple(mask.shape[1:]) != tuple(size):
        mask = F.interpolate(mask.unsqueeze(1), size=tuple(size), mode="bilinear").squeeze(1)
    return mask
