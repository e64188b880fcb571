"""The gate: γ (preservation share) per layer, per sampling step or per latent item, and its window.

A `Gate` (a `GateSchedule` or a `GateSweep`) is checked and planned on the host once per apply:
its `GatePlan` holds per layer a Python float where γ is fixed for the run (so a dead branch
is skipped statically) and otherwise `LiveGates` evaluated per model call on the device.
Progress runs from 0 (first step, high noise) to 1 (last step); nothing per call reads a
tensor value on the host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from .attention import Weight
from .errors import FlexIPError

PROGRESS_POINTS = 1001  # the sigma→progress grid: one point per discrete timestep of SD-family models
_ITEMS = re.compile(r"[,\n]")


class GatedLayer(Protocol):
    """What a gate reads of a layer it gates: a UNet attn2 `LayerSpec`, or a FLUX residual group."""

    @property
    def key(self) -> str: ...

    @property
    def block(self) -> str:
        """One of vocabulary.BLOCKS; block overrides of a gate schedule select layers by it."""
        ...


class LiveGates(Protocol):
    """The per-layer γ a Python constant cannot give, evaluated once per model call on the device."""

    per_step: bool  # True when γ depends on this step's progress

    def at(self, progress: Tensor | None, chunks: int, batch: int, like: Tensor) -> Sequence[Tensor] | Tensor:
        """γ per layer (index = layer) for a call of `batch` rows in `chunks` cond/uncond chunks.

        Each γ is [] (the same for every row) or [batch]; `progress` is given when `per_step`.
        """
        ...

    def to(self, device: torch.device | str) -> LiveGates: ...


class Gate(Protocol):
    """A FLEXIP_GATE: what FlexIPApply needs from a gate schedule or a gate sweep."""

    # read-only members (properties), so frozen dataclasses implement the protocol
    @property
    def start_at(self) -> float: ...

    @property
    def end_at(self) -> float: ...

    def with_window(self, start_at: float, end_at: float, source: str) -> Gate:
        """The same gate acting only inside [start_at, end_at]; FlexIPError naming `source` if invalid."""
        ...

    def plan(self, layers: Sequence[GatedLayer], sigma_at: Callable[[float], float]) -> GatePlan:
        """The plan for these layers; `sigma_at(progress)` is the model's sigma (percent_to_sigma)."""
        ...


def check_window(start_at: float, end_at: float, source: str) -> None:
    """FlexIPError naming `source` unless 0 <= start_at <= end_at <= 1."""
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise FlexIPError(f"{source} has start_at {start_at} and end_at {end_at}: use 0 <= start_at <= end_at <= 1.")


@dataclass(frozen=True)
class GatePlan:
    """The gate of every layer for one run, decided on the host once.

    `constants[i]` is layer i's γ as a Python float when it is fixed for the run, or None when
    it is `live.at(...)[i]`. Outside [start_at, end_at] the strength is 0.
    """

    constants: tuple[float | None, ...]
    live: LiveGates | None
    start_at: float
    end_at: float
    sigma_grid: Tensor  # [G] the model's sigma at progress_grid; only read when needs_progress
    progress_grid: Tensor

    @classmethod
    def build(
        cls,
        constants: tuple[float | None, ...],
        live: LiveGates | None,
        start_at: float,
        end_at: float,
        sigma_at: Callable[[float], float],
    ) -> GatePlan:
        """A plan; the sigma grid is only computed when a call will need its progress."""
        progress = torch.linspace(0.0, 1.0, PROGRESS_POINTS)
        plan = cls(constants, live, start_at, end_at, torch.zeros_like(progress), progress)
        if plan.needs_progress:
            plan = replace(plan, sigma_grid=torch.tensor([sigma_at(float(p)) for p in progress]))
        return plan

    @property
    def windowed(self) -> bool:
        return self.start_at > 0.0 or self.end_at < 1.0

    @property
    def needs_progress(self) -> bool:
        return self.windowed or (self.live is not None and self.live.per_step)

    def to(self, device: torch.device) -> GatePlan:
        return replace(
            self,
            live=None if self.live is None else self.live.to(device),
            sigma_grid=self.sigma_grid.to(device),
            progress_grid=self.progress_grid.to(device),
        )

    def call_gates(
        self, sigmas: Tensor | None, chunks: int, batch: int, strength: float, like: Tensor
    ) -> tuple[tuple[Weight, ...], Weight]:
        """(γ per layer, s) for one model call of `batch` rows; `sigmas` are the call's (read only if needed).

        Each γ is a float, a [] or a [batch] tensor; s is `strength`, or a [] tensor in `like`'s
        dtype that is 0 outside the window.
        """
        progress = None
        if self.needs_progress:
            if sigmas is None:
                raise FlexIPError(
                    "the FlexIP gate changes per step but this model call has no sigmas in its "
                    "transformer_options: run the model through a ComfyUI sampler."
                )
            sigma = sigmas.reshape(-1)[:1].float()
            progress = progress_from_sigma(sigma, self.sigma_grid, self.progress_grid)[0]
        live = () if self.live is None else self.live.at(progress, chunks, batch, like)
        gates = tuple(live[i] if g is None else g for i, g in enumerate(self.constants))
        if self.windowed:
            assert progress is not None  # windowed implies needs_progress
            return gates, (window_at(self.start_at, self.end_at, progress) * strength).to(like.dtype)
        return gates, strength


def window_at(start_at: float, end_at: float, progress: Tensor) -> Tensor:
    """1.0 where start_at <= progress <= end_at, else 0.0; multiply the strength s by it."""
    inside = (progress >= start_at) & (progress <= end_at)
    return inside.to(progress.dtype if progress.is_floating_point() else torch.float32)


def progress_from_sigma(sigma: Tensor, sigma_grid: Tensor, progress_grid: Tensor) -> Tensor:
    """Sampling progress of `sigma` ([] or [B]) by piecewise-linear interpolation on a grid [G].

    The caller builds the grid once per run (ComfyUI: `percent_to_sigma(p)` at p = progress_grid);
    sigma decreases as progress increases. Outside the grid the end progress is held.
    """
    sigmas = sigma_grid.flip(0).to(device=sigma.device, dtype=torch.float32)  # ascending for searchsorted
    progresses = progress_grid.flip(0).to(sigmas)
    point = sigma.to(torch.float32)
    upper = torch.searchsorted(sigmas, point.reshape(-1), right=True)
    lower = (upper - 1).clamp(min=0)
    upper = upper.clamp(max=sigmas.shape[0] - 1)
    x0, x1 = sigmas[lower], sigmas[upper]
    t = ((point.reshape(-1) - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
    return torch.lerp(progresses[lower], progresses[upper], t).reshape(sigma.shape)


def widget_items(text: str, source: str, limit: int, example: str) -> list[str]:
    """Comma or newline separated items of widget text, at most `limit` of them."""
    items = [item.strip() for item in _ITEMS.split(text or "") if item.strip()]
    if len(items) > limit:
        raise FlexIPError(f"{source} has {len(items)} items, more than the {limit} accepted: write e.g. '{example}'.")
    return items
