"""ComfyUI's sampler, text encoding and decoding, as the pack's callers run them outside a server.

Each function imports ComfyUI when called (after `bootstrap.import_comfy`), so importing this
module never imports ComfyUI.
"""

from __future__ import annotations

from typing import Any

import torch


def prepare_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    """ComfyUI's seeded noise for `latent` [B, C, H, W], as KSampler draws it."""
    import comfy.sample

    return comfy.sample.prepare_noise(latent, seed)


def fix_empty_latent_channels(model: Any, latent: torch.Tensor) -> torch.Tensor:
    """An all-zero latent reshaped to the channels `model` (a ModelPatcher) samples in."""
    import comfy.sample

    return comfy.sample.fix_empty_latent_channels(model, latent)


def sample(
    model: Any,
    noise: torch.Tensor,
    steps: int,
    cfg: float,
    sampler: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent: torch.Tensor,
    seed: int,
) -> torch.Tensor:
    """ComfyUI's `comfy.sample.sample` (what KSampler runs), without a progress bar; the denoised latent."""
    import comfy.sample

    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=seed, disable_pbar=True
    )


def encode_text(clip: Any, text: str) -> list:
    """CONDITIONING of `text`, as ComfyUI's CLIPTextEncode node gives it."""
    import nodes  # ComfyUI's nodes.py: bootstrap.import_comfy put its folder first on sys.path

    (conditioning,) = nodes.CLIPTextEncode().encode(clip, text)
    return conditioning


def decode(vae: Any, samples: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] of a latent, as ComfyUI's VAEDecode node gives it."""
    import nodes  # ComfyUI's nodes.py

    (images,) = nodes.VAEDecode().decode(vae, {"samples": samples})
    return images


def stack_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """[L_i, d] each -> [B, L, d], shorter ones repeated up to the common multiple, as ComfyUI batches conds."""
    import comfy.conds

    conds = [comfy.conds.CONDCrossAttn(context[None]) for context in contexts]
    return conds[0].concat(conds[1:])
