"""Gate schedule: γ keyframes over sampling progress, per layer, evaluated on the device per step.

The schedule is built and checked on the host once; its table is read per step with
`gates_at`, which never reads a tensor value on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .errors import FlexIPError, shown
from .gate import GatedLayer, GatePlan, check_window, widget_items
from .vocabulary import BLOCKS

Keyframes = tuple[tuple[float, float], ...]
INTERPOLATIONS = ("linear", "cosine", "step")
# a schedule becomes a [layers, keyframes] table on the device; real schedules have a handful
MAX_KEYFRAMES = 256
# an override names at most every layer once: SIZE_BOUNDS' 1024 UNet layers (SDXL has 70)
MAX_LAYER_INDICES = 1024


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

    def with_window(self, start_at: float, end_at: float, source: str) -> GateSchedule:
        schedule = replace(self, start_at=float(start_at), end_at=float(end_at))
        validate_schedule(schedule, source)
        return schedule

    def plan(self, layers: Sequence[GatedLayer], sigma_at: Callable[[float], float]) -> GatePlan:
        """Layers whose keyframes hold one γ get it as a constant; the others read the table per step."""
        table = gate_table(self, layers)
        ranges = static_gate_range(self, layers)
        constants = tuple(low if low == high else None for low, high in (ranges[spec.key] for spec in layers))
        return GatePlan.build(constants, table if None in constants else None, self.start_at, self.end_at, sigma_at)


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
    check_window(schedule.start_at, schedule.end_at, source)
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


def parse_keyframes(text: str, source: str) -> Keyframes:
    """Widget text -> sorted keyframes: "0:1.0, 0.5:0.3, 1:0" (comma or newline separated), or "0.7"."""
    items = widget_items(text, source, MAX_KEYFRAMES, "0:1.0, 0.5:0.3, 1:0")
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
                f"{source} has {shown(item)}, which is not 'progress:gamma': "
                "write e.g. '0:1.0, 0.5:0.3, 1:0' or one number."
            )
        keyframes.append((progress, gamma))
    keyframes.sort(key=lambda pair: pair[0])
    result = tuple(keyframes)
    _check_keyframes(result, source)
    return result


def parse_layer_indices(text: str, source: str) -> tuple[int, ...]:
    """Widget text -> layer indices in the order given: "0, 1, 5" (comma or newline separated)."""
    items = widget_items(text, source, MAX_LAYER_INDICES, "0, 1, 5")
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise FlexIPError(f"{source} {shown(text)} is not a list of integers: write e.g. '0, 1, 5'.") from None


def _layer_keyframes(schedule: GateSchedule, layers: Sequence[GatedLayer]) -> list[Keyframes]:
    chosen = [schedule.keyframes] * len(layers)
    present = {spec.block for spec in layers}
    for override in schedule.overrides:
        for block in override.blocks:
            if block not in present:
                # FLUX has no middle block; saying so beats an override that silently does nothing
                raise FlexIPError(
                    f"the gate overrides the {block} blocks but this model has only {' and '.join(sorted(present))} "
                    "blocks (on FLUX, input_blocks are the double-stream groups and output_blocks the single-stream "
                    "ones): clear that override on FlexIPGateSchedule."
                )
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
    per_step = True  # LiveGates: γ follows the step's progress

    def to(self, device: torch.device | str) -> GateTable:
        """The same table on `device` (do it once per run, not per step)."""
        return GateTable(self.positions.to(device), self.values.to(device), self.interpolation)

    def at(self, progress: Tensor | None, chunks: int, batch: int, like: Tensor) -> Tensor:
        """LiveGates: [L] γ at this step, the same for every row of the call."""
        assert progress is not None  # per_step: GatePlan.call_gates always passes the step's progress
        return gates_at(self, progress).to(like.dtype)


def gate_table(schedule: GateSchedule, layers: Sequence[GatedLayer]) -> GateTable:
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


def static_gate_range(schedule: GateSchedule, layers: Sequence[GatedLayer]) -> dict[str, tuple[float, float]]:
    """Per layer key the (min, max) γ over the run; every interpolation stays within its keyframes.

    min == 1 means the personalization branch is dead for the whole run, max == 0 the preservation one.
    """
    per_layer = _layer_keyframes(schedule, layers)
    return {spec.key: (min(g for _, g in frames), max(g for _, g in frames)) for spec, frames in zip(layers, per_layer)}
