"""What the comfy-layer tests share: a node by id, the tiny FlexIP world, seeded SD1.5
conditioning, ComfyUI's sampler from a zero latent, a model's attn2 patches, and a probe in
front of one patch."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

import flexip_model
from tools.fixtures.tiny import tiny_clip_vision, tiny_dino, tiny_unet_patcher


def node(pack: Any, name: str) -> Any:
    """A new instance of the pack's node `name` (its NODE_CLASS_MAPPINGS id)."""
    return pack.node_classes[name]()


def tiny_world(pack: Any, gate_mode: str = "output", model: Any = None, dtype: torch.dtype | None = None) -> dict:
    """A tiny UNet (or `model`), tiny encoders, a random FlexIP adapter of `gate_mode` and the subject it encoded.

    The adapter's weights have std 0.2: large enough that the subject and γ visibly move the image;
    they are the same seeded values in every world, kept in `dtype` (default: as LoadedFlexIP.wrap picks).
    """
    import comfy.sample  # noqa: F401  (imported here: the conftest sets ComfyUI up first)

    model = model or tiny_unet_patcher()
    clip, dino = tiny_clip_vision(), tiny_dino()
    fm = flexip_model
    layers = pack.nodes.layers.layer_specs_of(model.model.diffusion_model)
    config = dataclasses.replace(
        fm.config_for("sd15", tiny=True), layers=layers, clip_embed_dim=64, dino_dim=64, gate_mode=gate_mode
    )
    torch.manual_seed(0)
    adapter = fm.FlexIPAdapter(config)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0.0, 0.2)
    flexip = pack.nodes.bundles.LoadedFlexIP.wrap(f"tiny_flexip_{gate_mode}.safetensors", adapter, dtype)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    (subject,) = node(pack, "FlexIPEncodeSubject").encode(flexip, clip, image, "average", dino=dino)
    return dict(pack=pack, model=model, flexip=flexip, subject=subject, clip=clip, dino=dino, image=image)


def apply(
    world: dict,
    strength: float = 1.0,
    preservation: float = 0.5,
    start_at: float = 0.0,
    end_at: float = 1.0,
    gate: Any = None,
    attn_mask: torch.Tensor | None = None,
    model: Any = None,
) -> Any:
    """FlexIPApply of the world's adapter and subject on `model` (default: the world's own model)."""
    (patched,) = node(world["pack"], "FlexIPApply").apply(
        model or world["model"],
        world["flexip"],
        world["subject"],
        strength,
        preservation,
        start_at,
        end_at,
        gate=gate,
        attn_mask=attn_mask,
    )
    return patched


def sd15_conds() -> tuple[list, list]:
    """Seeded (positive, negative) conditioning of one 77-token, 768-wide context each."""
    generator = torch.Generator().manual_seed(7)
    return tuple([[torch.randn(1, 77, 768, generator=generator), {}]] for _ in range(2))


def sample(
    model: Any,
    steps: int,
    batch: int = 1,
    size: int = 16,
    seed: int = 0,
    cfg: float = 5.0,
    batch_index: list[int] | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """ComfyUI's euler/normal sampling of `model` from a zero latent [batch, 4, size, size] with sd15_conds()."""
    import comfy.sample

    latent = torch.zeros(batch, 4, size, size)
    noise = comfy.sample.prepare_noise(latent, seed, batch_index)
    positive, negative = sd15_conds()
    return comfy.sample.sample(
        model,
        noise,
        steps,
        cfg,
        "euler",
        "normal",
        positive,
        negative,
        latent,
        disable_pbar=True,
        seed=seed,
        callback=callback,
    )


def attn2_patches(model: Any) -> dict:
    """The attn2 replace patches of `model` (the dict itself, so tests can swap entries; {} when none)."""
    return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


class PatchProbe:
    """Stands in front of one attn2 patch: `observe(q, extra_options)` sees every call, which runs
    inside `guard()`; models() and to() reach the patch, as ComfyUI calls them."""

    def __init__(
        self,
        inner: Any,
        observe: Callable[[torch.Tensor, dict], None] | None = None,
        guard: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.inner, self.observe, self.guard = inner, observe, guard

    def __call__(self, q, k, v, extra_options):
        if self.observe is not None:
            self.observe(q, extra_options)
        with self.guard():
            return self.inner(q, k, v, extra_options)

    def models(self) -> list:
        return self.inner.models()

    def to(self, device) -> PatchProbe:
        self.inner = self.inner.to(device)
        return self


def progress_of(model: Any, sigma: float) -> float:
    """The sampling progress whose sigma is `sigma` (bisection on ComfyUI's percent_to_sigma, decreasing)."""
    sampling = model.get_model_object("model_sampling")
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if sampling.percent_to_sigma(middle) > sigma else (low, middle)
    return (low + high) / 2
