"""Timed model calls: nested A-B-B-A rounds in one process, so drift and order effects cancel.

One round runs the configurations forwards then backwards (base, F, T, ..., T, F, base): every
configuration's two calls have the same mean position in the round, so a linear drift of the
machine's speed adds the same to each. A configuration's ratio in a round is the sum of its two
times over the sum of the baseline's two; the figure is the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from . import workload


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(patcher, inputs: workload.StepInputs) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one model call."""
    device = inputs.x.device
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        workload.model_step(patcher, inputs)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class Rounds:
    """Per configuration: every call's wall and CPU time, and one ratio to the baseline per round."""

    baseline: str
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    wall_ratios: dict[str, list[float]] = field(default_factory=dict)
    cpu_ratios: dict[str, list[float]] = field(default_factory=dict)

    def median_ratio(self, name: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu_ratios if cpu else self.wall_ratios)[name])

    def median_seconds(self, name: str) -> float:
        return statistics.median(self.wall[name])

    @property
    def rounds(self) -> int:
        return len(self.wall_ratios[self.baseline])


def warm_up(configs: dict, inputs: workload.StepInputs, small: workload.StepInputs) -> float:
    """One full-size call of the baseline (allocator, oneDNN primitives), and a small-latent call per
    patched configuration, which builds its per-run K/V cache (keyed by batch layout, not latent size).
    Returns the full-size call's wall seconds."""
    names = list(configs)
    seconds, _ = timed_step(configs[names[0]], inputs)
    for name in names[1:]:
        workload.end_run(configs[name])
        timed_step(configs[name], small)
    return seconds


def nested_abba(configs: dict, inputs: workload.StepInputs, deadline: float, most: int, on_round=None) -> Rounds:
    """Rounds over `configs` (name -> patcher; the first is the baseline) until `most` rounds are done
    or the next round, as long as the last one, would end after `deadline` (perf_counter seconds).
    The first round always runs."""
    names = list(configs)
    result = Rounds(names[0])
    for name in names:
        for table in (result.wall, result.cpu, result.wall_ratios, result.cpu_ratios):
            table[name] = []
    last_round = 0.0
    while len(result.wall_ratios[names[0]]) < most:
        started = time.perf_counter()
        if result.wall_ratios[names[0]] and started + last_round > deadline:
            break
        wall: dict[str, float] = dict.fromkeys(names, 0.0)
        cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        for name in names + names[::-1]:
            seconds, cpu_seconds = timed_step(configs[name], inputs)
            wall[name] += seconds
            cpu[name] += cpu_seconds
            result.wall[name].append(seconds)
            result.cpu[name].append(cpu_seconds)
        for name in names:
            result.wall_ratios[name].append(wall[name] / wall[names[0]])
            result.cpu_ratios[name].append(cpu[name] / cpu[names[0]])
        last_round = time.perf_counter() - started
        if on_round is not None:
            on_round(len(result.wall_ratios[names[0]]), last_round)
    return result
