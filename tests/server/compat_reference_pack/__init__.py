"""Test-only ComfyUI pack: plain IP-Adapter, computed by the float64 reference, as a node.

The server-layer compatibility test installs it next to ComfyUI-FlexIP so the same server
renders the baseline the pair must reproduce at γ = 1 (or γ = 0). It shares no code with the
pack: the math is tools/fixtures/ip_adapter_reference.py (loaded by path, since the server's
working directory is the ComfyUI host), the layer list is read from the UNet's modules here.
Never shipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

import folder_paths

_SOURCE = Path(__file__).resolve().parents[3] / "tools" / "fixtures" / "ip_adapter_reference.py"
_spec = importlib.util.spec_from_file_location("flexip_test_ip_adapter_reference", _SOURCE)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _cross_attention_layers(diffusion_model) -> list[tuple[str, int, int]]:
    """(block, id, transformer index) of every attn2, as ComfyUI keys its replace patches."""
    found = []
    for block, modules in (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
                           ("output", diffusion_model.output_blocks)):
        for block_id, module in enumerate(modules):
            for part in module:
                for index, transformer in enumerate(getattr(part, "transformer_blocks", [])):
                    if getattr(transformer, "attn2", None) is not None:
                        found.append((block, block_id, index))
    return found


class _DecoupledAttention:
    """attn2 replace: Attn(q, k, v) + w·Attn(q, c W_kᵀ, c W_vᵀ), c = cond or uncond tokens per row."""

    def __init__(self, cond, uncond, to_k, to_v, weight):
        self.cond, self.uncond, self.to_k, self.to_v, self.weight = cond, uncond, to_k, to_v, weight

    def __call__(self, q, k, v, extra_options):
        order = extra_options["cond_or_uncond"]
        rows = q.shape[0] // len(order)
        tokens = torch.cat([(self.cond, self.uncond)[chunk].expand(rows, -1, -1) for chunk in order]).to(q.device)
        out = reference.decoupled_attention(q, k, v, extra_options["n_heads"], tokens, self.to_k.to(q.device),
                                            self.to_v.to(q.device), self.weight)
        return out.to(q.dtype)


class IPAdapterReferenceApply:
    DESCRIPTION = "TEST ONLY: plain IP-Adapter from a float64 reference implementation."
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",), "clip_vision": ("CLIP_VISION",), "image": ("IMAGE",),
            "ipadapter_file": ("STRING", {"default": "ip-adapter_sd15.safetensors"}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01}),
        }}

    def apply(self, model, clip_vision, image, ipadapter_file, weight):
        weights = load_file(folder_paths.get_full_path_or_raise("ipadapter", ipadapter_file))
        features = clip_vision.encode_image(image, crop=True)
        with torch.no_grad():
            if reference.uses_hidden_states(weights):
                # the release's get_image_embeds: uncond = encoder(zeros_like(normalised pixels)).hidden_states[-2]
                size = clip_vision.image_size
                zero = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
                neutral = clip_vision.model(pixel_values=zero, intermediate_output=-2)[1].cpu()
                cond = reference.image_tokens(weights, features["penultimate_hidden_states"].cpu())
                uncond = reference.image_tokens(weights, neutral)
            else:  # ip-adapter / light: uncond = image_proj(zeros_like(image_embeds))
                embeds = features["image_embeds"].cpu()
                cond = reference.image_tokens(weights, embeds)
                uncond = reference.image_tokens(weights, torch.zeros_like(embeds))
        patched = model.clone()
        layers = reference.layer_order(_cross_attention_layers(model.get_model_object("diffusion_model")))
        for number, key in enumerate(layers):
            to_k, to_v = reference.ip_weights(weights, number)
            patched.set_model_attn2_replace(_DecoupledAttention(cond, uncond, to_k, to_v, weight), *key)
        return (patched,)


NODE_CLASS_MAPPINGS = {"IPAdapterReferenceApply": IPAdapterReferenceApply}
