"""A sample grid made with the inference nodes themselves, so progress is judged on what users get.

One row per pair: the reference, then one image per gate γ in [samples] gates, each sampled
with FlexIPEncodeSubject + FlexIPApply + ComfyUI's KSampler from the same seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from flexip_host.frozen_models import FrozenModels
from flexip_host.images import fit_square
from flexip_host.loaded_pack import Pack
from flexip_host.sampling import prepare_noise, sample
from flexip_model.adapter import FlexIPAdapter

from .config import SamplesConfig
from .data import CANONICAL, PairImageSource


def _conditioning(clip, text: str) -> list:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


@torch.no_grad()
def sample_grid(
    pack: Pack,
    models: FrozenModels,
    adapter: FlexIPAdapter,
    source: PairImageSource,
    indices: list[int],
    config: SamplesConfig,
    path: Path,
) -> Path:
    """Write the grid PNG to `path`; `adapter` is a CPU copy (the nodes place and cast it)."""
    loaded = pack.loaded_flexip.wrap(path.stem, adapter)
    negative = _conditioning(models.clip, config.negative)
    size = source.resolution
    rows = []
    for index in indices:
        images = source.load(index, CANONICAL)
        (subject,) = pack.encode_subject_node().encode(
            loaded, models.clip_vision, images.reference[None], "average", dino=models.dino
        )
        positive = _conditioning(models.clip, images.caption)
        latent = torch.zeros(1, 4, size // 8, size // 8)
        row = [fit_square(images.reference, size)]
        for gate in config.gates:
            (model,) = pack.apply_node().apply(models.unet, loaded, subject, config.strength, gate, 0.0, 1.0)
            noise = prepare_noise(latent, config.seed)
            samples = sample(
                model,
                noise,
                config.steps,
                config.cfg,
                config.sampler,
                config.scheduler,
                positive,
                negative,
                latent,
                seed=config.seed,
            )
            row.append(models.vae.decode(samples)[0, ..., :3].float().cpu())
        rows.append(torch.cat(row, dim=1))
    grid = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
