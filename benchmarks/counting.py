"""Deterministic cost of one model call: aten ops (a TorchDispatchMode) and FLOPs (torch.utils.flop_counter).

A step is counted on fake tensors (`FakeTensorMode`): the same dispatcher calls as a real
forward, with shapes but no arithmetic, so a full-size 64×64 step costs seconds instead of a
minute. `prim.*` entries are fake-tensor bookkeeping and are not counted. `check_against_real`
counts a real forward at a small latent, where the numbers of ops must be the same: ops do not
depend on the latent size, only FLOPs do.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import workload


class OpCounter(TorchDispatchMode):
    """Counts every aten op that reaches the dispatcher (on a GPU, at most one kernel launch each)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not name.startswith("prim."):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# ops that read a value on the host, or whose output shape depends on values: a device-to-host sync
# on a GPU (the benchmarks count them; tests/comfy/host_sync.py forbids them inside a step)
HOST_READ_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.item",
        "aten.is_nonzero",
        "aten.equal",
        "aten.nonzero",
        "aten.nonzero_static",
        "aten.masked_select",
        "aten._unique2",
        "aten.unique_consecutive",
        "aten.unique_dim",
        "aten.repeat_interleave.Tensor",
        "aten.repeat_interleave.self_Tensor",
    }
)

# PyTorch's flop counter knows the CUDA attention kernels but not the CPU one sdpa dispatches to.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@dataclass(frozen=True)
class Cost:
    """Ops and FLOPs (each by aten op name) of one model call."""

    ops: Counter
    flops: Counter

    @property
    def op_count(self) -> int:
        return sum(self.ops.values())

    @property
    def flop_count(self) -> int:
        return sum(self.flops.values())

    def minus(self, other: Cost) -> Cost:
        return Cost(_difference(self.ops, other.ops), _difference(self.flops, other.flops))


def _difference(a: Counter, b: Counter) -> Counter:
    out = Counter(a)
    out.subtract(b)
    return Counter({name: n for name, n in out.items() if n})


def step_cost(patcher, inputs: workload.StepInputs, fake: bool = True) -> Cost:
    """Ops and FLOPs of one `workload.model_step` (under inference mode, as ComfyUI executes nodes)."""
    faking = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    # the op counter is entered last, so it sees each op before FlopCounterMode decomposes
    # composite ones (inference mode hands e.g. aten.linear to the modes undecomposed)
    with (
        torch.inference_mode(),
        faking,
        FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as flops,
        OpCounter() as ops,
    ):
        workload.model_step(patcher, inputs)
    by_op = Counter({str(op): n for op, n in flops.get_flop_counts().get("Global", {}).items()})
    return Cost(ops.ops, by_op)


def run_costs(patcher, inputs: workload.StepInputs, fake: bool = True) -> tuple[Cost, Cost]:
    """(first call, steady-state call) of a fresh sampling run: the first builds the adapter K/V cache."""
    workload.end_run(patcher)
    first = step_cost(patcher, inputs, fake)
    steady = step_cost(patcher, inputs, fake)
    workload.end_run(patcher)  # a fake run leaves fake K/V in the cache
    return first, steady


def per_layer(ops: Counter, layers: int) -> str:
    """'2 scaled_dot_product_attention, 2 transpose, ...' per layer, most frequent first."""
    parts = []
    for name, count in ops.most_common():
        short = name.removeprefix("aten.").rsplit(".", 1)[0]
        parts.append(f"{count / layers:g} {short}")
    return ", ".join(parts)


def op_difference(ours: Counter, theirs: Counter) -> str:
    """'+2 lerp, -57 add' (aten op names shortened), largest first."""
    out = Counter(ours)
    out.subtract(theirs)
    parts = [(n, name) for name, n in out.items() if n]
    parts.sort(key=lambda item: -abs(item[0]))
    return ", ".join(f"{n:+d} {name.removeprefix('aten.').rsplit('.', 1)[0]}" for n, name in parts) or "none"
