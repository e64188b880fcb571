"""Gate sweep: one γ per latent batch item for the whole run, so one sampler run renders the trade-off."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .errors import FlexIPError, shown
from .gate import GatedLayer, GatePlan, check_window, widget_items

MAX_SWEEP_GAMMAS = 64  # RepeatLatentBatch's limit; a larger sweep belongs in several runs


@dataclass(frozen=True)
class GateSweep:
    """Latent batch item i gets γ = gammas[i] at every layer and step; the adapter acts inside [start_at, end_at]."""

    gammas: tuple[float, ...]
    start_at: float = 0.0
    end_at: float = 1.0

    def with_window(self, start_at: float, end_at: float, source: str) -> GateSweep:
        check_window(start_at, end_at, source)
        return replace(self, start_at=float(start_at), end_at=float(end_at))

    def plan(self, layers: Sequence[GatedLayer], sigma_at: Callable[[float], float]) -> GatePlan:
        items = ItemGammas(torch.tensor(self.gammas, dtype=torch.float32), len(layers))
        return GatePlan.build((None,) * len(layers), items, self.start_at, self.end_at, sigma_at)


@dataclass(frozen=True)
class ItemGammas:
    """LiveGates of a sweep: γ per latent item [N], the same at every layer and step."""

    values: Tensor
    layers: int
    per_step = False

    def to(self, device: torch.device | str) -> ItemGammas:
        return ItemGammas(self.values.to(device), self.layers)

    def at(self, progress: Tensor | None, chunks: int, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        """[batch] γ per row, for every layer: latent item i gets values[i] in every cond/uncond chunk.

        The sampler concatenates chunks of batch // chunks rows each, in cond_or_uncond order,
        and every chunk holds the whole latent batch, so the values repeat once per chunk.
        """
        items = self.values.shape[0]
        if items * chunks != batch:
            raise FlexIPError(
                f"FlexIPGateSweep has {items} gate values but the latent batch has {batch // chunks} "
                f"images: connect the sweep's latent output to the sampler (or use a batch of {items})."
            )
        return (self.values.to(device=like.device, dtype=like.dtype).repeat(chunks),) * self.layers


def parse_gammas(text: str, source: str) -> tuple[float, ...]:
    """Widget text "0, 0.25, 0.5" (comma or newline separated) -> γ values, each in [0, 1] (a gate sweep)."""
    gammas = []
    for item in widget_items(text, source, MAX_SWEEP_GAMMAS, "0, 0.25, 0.5, 0.75, 1"):
        try:
            gamma = float(item)
        except ValueError:
            gamma = math.nan
        if not 0.0 <= gamma <= 1.0:  # also false for nan
            raise FlexIPError(
                f"{source} has {shown(item)}, which is not a γ in [0, 1]: write e.g. '0, 0.25, 0.5, 0.75, 1'."
            )
        gammas.append(gamma)
    if not gammas:
        raise FlexIPError(f"{source} is empty: write at least one γ, e.g. '0, 0.5, 1'.")
    return tuple(gammas)


def range_gammas(start: float, stop: float, count: int, source: str) -> tuple[float, ...]:
    """`count` γ values evenly spaced from `start` to `stop`, both included (one value: `start`)."""
    if not (0.0 <= start <= 1.0 and 0.0 <= stop <= 1.0 and 1 <= count <= MAX_SWEEP_GAMMAS):
        raise FlexIPError(
            f"{source} {start}..{stop} x {count} is invalid: start and stop lie in [0, 1], "
            f"count in 1..{MAX_SWEEP_GAMMAS}."
        )
    if count == 1:
        return (float(start),)
    step = (stop - start) / (count - 1)
    return tuple(round(start + i * step, 6) for i in range(count))
