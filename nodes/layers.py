"""The cross-attention layers of a loaded ComfyUI model, read from the model itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import comfy.ldm.modules.attention as comfy_attention
import torch

from flexip_model.config import LayerSpec
from flexip_model.errors import FlexIPError
from flexip_model.vocabulary import attn2_layer, comfy_order, family_name, layer_key

from .bundles import LoadedFlexIP

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher


def cross_attention_modules(
    diffusion_model: torch.nn.Module,
) -> Iterator[tuple[str, comfy_attention.CrossAttention]]:
    """(layer key, attn2 module) of every cross-attention layer of a UNet, in ComfyUI's patch order."""
    found: list[tuple[tuple[int, int, int], str, comfy_attention.CrossAttention]] = []
    for name, module in diffusion_model.named_modules():
        layer = attn2_layer(name)
        if layer is not None:
            # ComfyUI's boundary: named_modules() gives plain Modules; a UNet's attn2 is its CrossAttention
            found.append((comfy_order(layer), layer_key(*layer), cast(comfy_attention.CrossAttention, module)))
    for _, key, module in sorted(found, key=lambda item: item[0]):
        yield key, module


def layer_specs_of(diffusion_model: torch.nn.Module) -> tuple[LayerSpec, ...]:
    """Every attn2 layer of a UNet in ComfyUI's patch order; the middle block's id is 0."""
    return tuple(
        LayerSpec(key, module.to_q.out_features, module.heads)
        for key, module in cross_attention_modules(diffusion_model)
    )


def context_dim_of(diffusion_model: torch.nn.Module) -> int | None:
    """Width of the text context the model's cross-attention expects (768 SD1.5, 2048 SDXL)."""
    for _, module in cross_attention_modules(diffusion_model):
        return module.to_k.in_features
    return None


def matching_layers(model: ModelPatcher, flexip: LoadedFlexIP) -> tuple[LayerSpec, ...]:
    """The adapter's layers in the MODEL's patch order, after checking they are the model's attn2 layers;
    FlexIPError (before any sampling) otherwise."""
    diffusion_model = model.get_model_object("diffusion_model")
    config = flexip.config
    context = context_dim_of(diffusion_model)
    if context != config.context_dim:
        expected, actual = family_name(config.context_dim), family_name(context)
        raise FlexIPError(
            f"{flexip.name} is an {expected} adapter (context {config.context_dim}) but the model is {actual} "
            f"(context {context}): load an {actual} FlexIP file or an {expected} checkpoint."
        )
    layers = layer_specs_of(diffusion_model)
    expected_layers = {spec.key: spec for spec in config.layers}
    if {spec.key for spec in layers} != set(expected_layers):
        raise FlexIPError(
            f"{flexip.name} has {len(config.layers)} cross-attention layers but the model has {len(layers)}: "
            "use a FlexIP file made for this model's architecture (flexip_model init --layers-from <checkpoint>)."
        )
    for spec in layers:
        if expected_layers[spec.key].inner_dim != spec.inner_dim:
            raise FlexIPError(
                f"{flexip.name} layer {spec.key} is {expected_layers[spec.key].inner_dim} wide but the model's is "
                f"{spec.inner_dim}: use a FlexIP file made for this model's architecture."
            )
    return tuple(expected_layers[spec.key] for spec in layers)
