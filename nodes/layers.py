"""The cross-attention layers of a loaded ComfyUI model, read from the model itself."""

from __future__ import annotations

import re

import torch

from ..flexip_model.config import LayerSpec, layer_key

# attn2 of a transformer block inside a UNet block, e.g. "output_blocks.3.1.transformer_blocks.0.attn2".
_ATTN2 = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?\d+\.transformer_blocks\.(\d+)\.attn2$")
_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
_BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2}


def layer_specs_of(diffusion_model: torch.nn.Module) -> tuple[LayerSpec, ...]:
    """Every attn2 layer of a UNet in ComfyUI's patch order; the middle block's id is 0."""
    found = []
    for name, module in diffusion_model.named_modules():
        match = _ATTN2.match(name)
        if match is None:
            continue
        block = _BLOCK_NAMES[match.group(1)]
        block_id = 0 if block == "middle" else int(match.group(2))
        key = layer_key(block, block_id, int(match.group(3)))
        found.append(((_BLOCK_ORDER[block], block_id, int(match.group(3))), LayerSpec(key, module.to_q.out_features, module.heads)))
    return tuple(spec for _, spec in sorted(found, key=lambda item: item[0]))


def context_dim_of(diffusion_model: torch.nn.Module) -> int | None:
    """Width of the text context the model's cross-attention expects (768 SD1.5, 2048 SDXL)."""
    for name, module in diffusion_model.named_modules():
        if _ATTN2.match(name):
            return module.to_k.in_features
    return None
