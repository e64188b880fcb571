"""The cross-attention layers of a loaded ComfyUI model, read from the model itself."""

from __future__ import annotations

from typing import Iterator

import torch

from flexip_model.config import LayerSpec
from flexip_model.vocabulary import attn2_layer, comfy_order, layer_key


def cross_attention_modules(diffusion_model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(layer key, attn2 module) of every cross-attention layer of a UNet, in ComfyUI's patch order."""
    found = []
    for name, module in diffusion_model.named_modules():
        layer = attn2_layer(name)
        if layer is not None:
            found.append((comfy_order(layer), layer_key(*layer), module))
    for _, key, module in sorted(found, key=lambda item: item[0]):
        yield key, module


def layer_specs_of(diffusion_model: torch.nn.Module) -> tuple[LayerSpec, ...]:
    """Every attn2 layer of a UNet in ComfyUI's patch order; the middle block's id is 0."""
    return tuple(LayerSpec(key, module.to_q.out_features, module.heads)
                 for key, module in cross_attention_modules(diffusion_model))


def context_dim_of(diffusion_model: torch.nn.Module) -> int | None:
    """Width of the text context the model's cross-attention expects (768 SD1.5, 2048 SDXL)."""
    for _, module in cross_attention_modules(diffusion_model):
        return module.to_k.in_features
    return None
