"""Gate schedule: γ (preservation share) over sampling progress, per layer, evaluated on device.

Progress runs from 0 (first step, high noise) to 1 (last step). The schedule is built and
checked on the host once; `gates_at`, `window_at` and `progress_from_sigma` are per-step
and never read a tensor value on the host.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .config import LayerSpec, shown
from .errors import FlexIPError
from .vocabulary import BLOCKS

Keyframes = tuple[tuple[float, float], ...]
INTERPOLATIONS = ("linear", "cosine", "step")
# a schedule becomes a [layers, keyframes] table on the device; real schedules have a handful
MAX_KEYFRAMES = 256
MAX_SWEEP_GAMMAS = 64  # RepeatLatentBatch's limit; a larger sweep belongs in several runs
_ITEMS = re.compile(r"[,\n]")


@dataclass(frozen=True)
class BlockOverride:
    """Keyframes for the layers in `blocks` (input/middle/output) or at `layer_indices` (order of the layer list)."""

    keyframes: Keyframes
    blocks: tuple[str, ...] = ()
    layer_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class GateSchedule:
    """γ keyframes (progress, γ), sorted by progress; the adapter is on only inside [start_at, end_at]."""

    keyframes: Keyframes
    interpolation: str = "linear"
    start_at: float = 0.0
    end_at: float = 1.0
    overrides: tuple[BlockOverride, ...] = ()  # later overrides win


def _check_keyframes(keyframes: Keyframes, source: str) -> None:
    if not keyframes:
        raise FlexIPError(f"{source} has no keyframes: give at least one 'progress:gamma' pair or a number.")
    for progress, gamma in keyframes:
        if not (0.0 <= progress <= 1.0 and 0.0 <= gamma <= 1.0):
            raise FlexIPError(
                f"{source} has keyframe {progress}:{gamma} outside [0, 1]: progress and gamma both lie in 0..1."
            )
    positions = [progress for progress, _ in keyframes]
    if len(set(positions)) != len(positions):
        raise FlexIPError(f"{source} repeats a progress value: give each progress at most one gamma.")
    if positions != sorted(positions):
        raise FlexIPError(f"{source} has keyframes out of order: sort them by progress.")


def validate_schedule(schedule: GateSchedule, source: str) -> None:
    """FlexIPError naming `source` if the schedule is inconsistent."""
    _check_keyframes(schedule.keyframes, source)
    if schedule.interpolation not in INTERPOLATIONS:
        raise FlexIPError(
            f"{source} has interpolation {schedule.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}."
        )
    if not 0.0 <= schedule.start_at <= schedule.end_at <= 1.0:
        raise FlexIPError(
            f"{source} has start_at {schedule.start_at} and end_at {schedule.end_at}: use 0 <= start_at <= end_at <= 1."
        )
    for override in schedule.overrides:
        _check_keyframes(override.keyframes, f"{source} override")
        for block in override.blocks:
            if block not in BLOCKS:
                raise FlexIPError(f"{source} overrides block {block!r}: use input, middle or output.")
        if any(index < 0 for index in override.layer_indices):
            raise FlexIPError(f"{source} overrides a negative layer index: layer indices start at 0.")


def constant_schedule(gamma: float, start_at: float = 0.0, end_at: float = 1.0) -> GateSchedule:
    """γ fixed for the whole run (inside the window)."""
    schedule = GateSchedule(keyframes=((0.0, float(gamma)),), start_at=float(start_at), end_at=float(end_at))
    validate_schedule(schedule, "the gate")
    return schedule


def _items(text: str, source: str, limit: int, example: str) -> list[str]:
    """Comma or newline separated items of widget text, at most `limit` of them."""
    items = [item.strip() for item in _ITEMS.split(text or "") if item.strip()]
    if len(items) > limit:
        raise FlexIPError(f"{source} has {len(items)} items, more than the {limit} accepted: write e.g. '{example}'.")
    return items


def parse_keyframes(text: str, source: str) -> Keyframes:
    """Widget text -> sorted keyframes: "0:1.0, 0.5:0.3, 1:0" (comma or newline separated), or "0.7"."""
    items = _items(text, source, MAX_KEYFRAMES, "0:1.0, 0.5:0.3, 1:0")
    if len(items) == 1 and ":" not in items[0]:
        items = [f"0:{items[0]}"]  # a bare number is a constant γ
    keyframes = []
    for item in items:
        parts = item.split(":")
        try:
            progress, gamma = (float(part) for part in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            progress, gamma = math.nan, math.nan
        if math.isnan(progress) or math.isnan(gamma):
            raise FlexIPError(
                f"{source} has {shown(item)}, which is not 'progress:gamma': write e.g. '0:1.0, 0.5:0.3, 1:0' or one number."
            )
        keyframes.append((progress, gamma))
    keyframes.sort(key=lambda pair: pair[0])
    result = tuple(keyframes)
    _check_keyframes(result, source)
    return result


def parse_gammas(text: str, source: str) -> tuple[float, ...]:
    """Widget text "0, 0.25, 0.5" (comma or newline separated) -> γ values, each in [0, 1] (a gate sweep)."""
    gammas = []
    for item in _items(text, source, MAX_SWEEP_GAMMAS, "0, 0.25, 0.5, 0.75, 1"):
        try:
            gamma = float(item)
        except ValueError:
            gamma = math.nan
        if not 0.0 <= gamma <= 1.0:  # also false for nan
            raise FlexIPError(f"{source} has {shown(item)}, which is not a γ in [0, 1]: write e.g. '0, 0.25, 0.5, 0.75, 1'.")
        gammas.append(gamma)
    if not gammas:
        raise FlexIPError(f"{source} is empty: write at least one γ, e.g. '0, 0.5, 1'.")
    return tuple(gammas)


def _layer_keyframes(schedule: GateSchedule, layers: Sequence[LayerSpec]) -> list[Keyframes]:
    chosen = [schedule.keyframes] * len(layers)
    for override in schedule.overrides:
        for index in override.layer_indices:
            if index >= len(layers):
                raise FlexIPError(
                    f"the gate overrides layer index {index} but the adapter has {len(layers)} layers: "
                    f"use indices 0..{len(layers) - 1}."
                )
        for index, spec in enumerate(layers):
            if spec.block in override.blocks or index in override.layer_indices:
                chosen[index] = override.keyframes
    return chosen


@dataclass(frozen=True)
class GateTable:
    """Per-layer keyframes as tensors, padded by repeating the last keyframe: positions/values [L, K]."""

    positions: Tensor
    values: Tensor
    interpolation: str

    def to(self, device: torch.device | str) -> GateTable:
        """The same table on `device` (do it once per run, not per step)."""
        return GateTable(self.positions.to(device), self.values.to(device), self.interpolation)


def gate_table(schedule: GateSchedule, layers: Sequence[LayerSpec]) -> GateTable:
    """Build the table once per run on the host; row i belongs to layers[i]."""
    validate_schedule(schedule, "the gate")
    per_layer = _layer_keyframes(schedule, layers)
    width = max((len(frames) for frames in per_layer), default=1)
    padded = [list(frames) + [frames[-1]] * (width - len(frames)) for frames in per_layer]
    table = torch.tensor(padded, dtype=torch.float32).reshape(len(layers), width, 2)
    return GateTable(table[..., 0].contiguous(), table[..., 1].contiguous(), schedule.interpolation)


def gates_at(table: GateTable, progress: Tensor) -> Tensor:
    """γ per layer at `progress` ([] or [B]) -> [L] or [L, B]; holds the end values outside the keyframes."""
    layers, width = table.positions.shape
    point = progress.to(table.positions).reshape(1, -1).expand(layers, -1).contiguous()  # [L, B]
    # number of keyframes at or before the point: the previous keyframe is at upper - 1
    upper = torch.searchsorted(table.positions, point, right=True)
    lower = (upper - 1).clamp(min=0)
    upper = upper.clamp(max=width - 1)
    x0, x1 = table.positions.gather(1, lower), table.positions.gather(1, upper)
    y0, y1 = table.values.gather(1, lower), table.values.gather(1, upper)
    if table.interpolation == "step":
        gamma = y0
    else:
        # outside the keyframes x0 == x1 and y0 == y1, so the clamped span only avoids 0/0
        t = ((point - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
        if table.interpolation == "cosine":
            t = (1.0 - torch.cos(math.pi * t)) * 0.5
        gamma = torch.lerp(y0, y1, t)
    return gamma.reshape(layers) if progress.ndim == 0 else gamma


def window_at(schedule: GateSchedule, progress: Tensor) -> Tensor:
    """1.0 where start_at <= progress <= end_at, else 0.0; multiply the strength s by it."""
    inside = (progress >= schedule.start_at) & (progress <= schedule.end_at)
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


def static_gate_range(schedule: GateSchedule, layers: Sequence[LayerSpec]) -> dict[str, tuple[float, float]]:
    """Per layer key the (min, max) γ over the run; every interpolation stays within its keyframes.

    min == 1 means the personalization branch is dead for the whole run, max == 0 the preservation one.
    """
    per_layer = _layer_keyframes(schedule, layers)
    return {
        spec.key: (min(g for _, g in frames), max(g for _, g in frames)) for spec, frames in zip(layers, per_layer)
    }
