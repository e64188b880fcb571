"""The pack's shared words, defined once: UNet blocks and layer keys, model families, image features and
encoder names, gate modes, masks.

Every other module (nodes, trainer, checkpoint readers, CLI) imports these instead of spelling
them again, so a key, a family or an error sentence cannot drift between two places.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import overload

import torch
import torch.nn.functional as F

from .errors import FlexIPError

# the UNet's block groups, as ComfyUI names them in its attn2 patch keys
INPUT_BLOCK, MIDDLE_BLOCK, OUTPUT_BLOCK = "input", "middle", "output"
BLOCKS = (INPUT_BLOCK, MIDDLE_BLOCK, OUTPUT_BLOCK)
BLOCK_ORDER = MappingProxyType({block: position for position, block in enumerate(BLOCKS)})  # ComfyUI's patch order

# how γ mixes the two token sets (docs/design.md §2): blend the two attention outputs, or weight the
# tokens of one joint attention
OUTPUT_MODE, TOKEN_MODE = "output", "token"
GATE_MODES = (OUTPUT_MODE, TOKEN_MODE)

# the image features an adapter reads, by the names of the encoders' outputs: CLIP vision's
# (ComfyUI's encode_image keys) [B, C] and [B, N, C], and DINOv2's tokens [B, T, D]
IMAGE_EMBEDS, HIDDEN_STATES, DINO_FEATURES = "image_embeds", "penultimate_hidden_states", "dino_features"

# ids of real UNets have 1-2 digits; 6 keeps int() of a file's name bounded
_KEY_PATTERN = re.compile(rf"^({'|'.join(BLOCKS)})_(\d{{1,6}})_(\d{{1,6}})$")
# attn2 of a transformer block in ComfyUI's (LDM) UNet, e.g. "output_blocks.3.1.transformer_blocks.0.attn2";
# the middle block has no id (it is 0 in the key)
_ATTN2_PATTERN = re.compile(
    r"^(?:(input|output)_blocks\.(\d{1,6})|(middle)_block)\.\d{1,6}\.transformer_blocks\.(\d{1,6})\.attn2$"
)


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


def attn2_layer(module_name: str) -> tuple[str, int, int] | None:
    """'input_blocks.1.1.transformer_blocks.0.attn2' -> ("input", 1, 0); None for any other module name."""
    match = _ATTN2_PATTERN.match(module_name)
    if match is None:
        return None
    if match.group(3):
        return MIDDLE_BLOCK, 0, int(match.group(4))
    return match.group(1), int(match.group(2)), int(match.group(4))


def comfy_order(layer: tuple[str, int, int]) -> tuple[int, int, int]:
    """Sort key of (block, block id, index) in ComfyUI's patch order: input, middle, output."""
    block, block_id, index = layer
    return BLOCK_ORDER[block], block_id, index


# model families by the width d of their text context
_FAMILIES = MappingProxyType({768: ("sd15", "SD1.5"), 2048: ("sdxl", "SDXL")})
BASES = tuple(base for base, _ in _FAMILIES.values())


def base_of(context_dim: int | None) -> str:
    """'sd15', 'sdxl', or '' for a UNet of another context width."""
    return _FAMILIES[context_dim][0] if context_dim is not None and context_dim in _FAMILIES else ""


def family_name(context_dim: int | None) -> str:
    """'SD1.5', 'SDXL', or 'context <d>' for other UNets."""
    return (
        _FAMILIES[context_dim][1] if context_dim is not None and context_dim in _FAMILIES else f"context {context_dim}"
    )


def check_base(base: str) -> None:
    """FlexIPError unless `base` is one of BASES."""
    if base not in BASES:
        raise FlexIPError(f"base {base!r} is unknown: use one of {', '.join(BASES)}.")


def context_dim_for(base: str) -> int:
    """The UNet cross-attention width d of `base`: 768 (SD1.5) or 2048 (SDXL)."""
    check_base(base)
    return next(width for width, (name, _) in _FAMILIES.items() if name == base)


# image encoders by what the adapters read from them and its width
CLIP_L, CLIP_H, CLIP_BIGG = "CLIP ViT-L/14", "CLIP ViT-H/14", "CLIP ViT-bigG/14"
_ENCODERS = MappingProxyType(
    {
        (IMAGE_EMBEDS, 768): CLIP_L,
        (IMAGE_EMBEDS, 1024): CLIP_H,
        (IMAGE_EMBEDS, 1280): CLIP_BIGG,
        (HIDDEN_STATES, 1024): CLIP_L,
        (HIDDEN_STATES, 1280): CLIP_H,
        (HIDDEN_STATES, 1664): CLIP_BIGG,
        (DINO_FEATURES, 1024): "DINOv2-L",
        (DINO_FEATURES, 1536): "DINOv2-g",
    }
)
# the CLIPs that FlexIP and IP-Adapter files condition on; ViT-L/14 is only named, to say what a wrong input is
CONDITIONING_CLIPS = (CLIP_H, CLIP_BIGG)
_FEATURE_WORDS = MappingProxyType(
    {IMAGE_EMBEDS: "image embeddings", HIDDEN_STATES: "hidden states", DINO_FEATURES: "features"}
)


def feature_words(feature: str) -> str:
    """How an error names `feature`: 'image embeddings', 'hidden states' or 'features'."""
    return _FEATURE_WORDS[feature]


def encoder_name(feature: str, width: int) -> str:
    """The encoder that gives `width`-d `feature`, e.g. 'CLIP ViT-H/14', or a plain description."""
    default = "a DINOv2 model" if feature == DINO_FEATURES else "a CLIP vision model"
    return _ENCODERS.get((feature, width), f"{default} with {width}-d {feature_words(feature)}")


# which face of a reference image that holds several (docs/faces.md, "Which face"): the largest, the one at
# face_index counting from 0 at the left, or the one a face mask covers most; "by index" is the word saved
# FlexIP Face Crop workflows hold
LARGEST_FACE, FACE_BY_INDEX, FACE_IN_MASK = "largest", "by index", "in mask"
FACE_CHOICES = (LARGEST_FACE, FACE_BY_INDEX, FACE_IN_MASK)


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK [H, W] or [N, H, W] -> float [N, H, W]."""
    return (mask.unsqueeze(0) if mask.ndim == 2 else mask).float()


def attention_masks(mask: object, where: str) -> torch.Tensor:
    """A MASK [H, W] or [N, H, W] (float or bool) -> float [N, 1, H, W] clamped to 0..1, the weight of a
    subject's term (docs/gate.md, "Several subjects"); FlexIPError naming `where` for another type, shape,
    dtype, or NaN/Inf values. Reads the mask on the host: call it once, when the node runs."""
    if not isinstance(mask, torch.Tensor):
        raise FlexIPError(f"{where} is a {type(mask).__name__}, not a MASK: connect a MASK (white = on).")
    if mask.ndim not in (2, 3) or 0 in mask.shape:
        raise FlexIPError(
            f"{where} has shape {list(mask.shape)}, not a MASK [H, W] or [N, H, W]: "
            "turn an image into a mask with Convert Image to Mask."
        )
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise FlexIPError(f"{where} holds {mask.dtype} values: give a float MASK in 0..1 (white = on).")
    masks = mask_batch(mask)
    if not bool(torch.isfinite(masks).all()):
        raise FlexIPError(f"{where} holds NaN or infinite values: give a MASK in 0..1 (white = on).")
    # ComfyUI masks lie in 0..1, but a bicubic resize overshoots a little: past the ends, 0 and 1 hold
    return masks.clamp(0.0, 1.0).unsqueeze(1)


@overload
def image_masks(mask: torch.Tensor, count: int, size: tuple[int, ...], where: str) -> torch.Tensor: ...
@overload
def image_masks(mask: torch.Tensor | None, count: int, size: tuple[int, ...], where: str) -> torch.Tensor | None: ...
def image_masks(mask: torch.Tensor | None, count: int, size: tuple[int, ...], where: str) -> torch.Tensor | None:
    """MASK [H, W] or [1 or count, H, W] -> float [1 or count, *size] (bilinear when the size differs);
    FlexIPError naming `where` when the mask count fits neither one mask nor one per image."""
    if mask is None:
        return None
    mask = mask_batch(mask)
    if mask.shape[0] not in (1, count):
        raise FlexIPError(
            f"{where} got {count} images but {mask.shape[0]} masks: give one mask for all images or one per image."
        )
    if tuple(mask.shape[1:]) != tuple(size):
        mask = F.interpolate(mask.unsqueeze(1), size=tuple(size), mode="bilinear").squeeze(1)
    return mask
