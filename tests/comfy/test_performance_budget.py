"""Per-step cost of the patch on a real ComfyUI model: no adapter K/V work per step.

Structural properties only: what a steady-state model call (the per-run K/V cache already
built) may touch, and which kinds of FLOPs it adds. Exact op counts move with PyTorch
releases without any change in behaviour, so they live in the benchmark (`make bench`,
figure `added_ops_per_step_sd15_512` with its target), not here. Host syncs are checked in
test_performance_host_sync.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks import counting, workload
from tests.comfy.tiny_world import apply

pytestmark = pytest.mark.comfy


@pytest.fixture
def pytorch_attention(monkeypatch):
    import comfy.ldm.modules.attention as attention

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)


class ParameterReads(TorchDispatchMode):
    """Names of the given parameters that any aten op reads (directly, or through a view)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.names = {p.untyped_storage().data_ptr(): name for name, p in module.named_parameters()}
        self.read: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(value, torch.Tensor):
                name = self.names.get(value.untyped_storage().data_ptr())
                if name is not None:
                    self.read.add(name)
        return func(*args, **(kwargs or {}))


def adapter_reads_per_call(patched, adapter: torch.nn.Module, calls: int) -> list[set[str]]:
    """The adapter parameters each of `calls` model calls of one sampling run reads."""
    inputs = workload.StepInputs.make(latent=16)
    workload.end_run(patched)
    reads = []
    for _ in range(calls):
        with torch.inference_mode(), ParameterReads(adapter) as recorder:
            workload.model_step(patched, inputs)
        reads.append(recorder.read)
    workload.end_run(patched)
    return reads


@pytest.mark.parametrize("preservation", [0.5, 1.0])
def test_adapter_weights_are_read_in_the_first_call_of_a_run_and_never_again(world, preservation):
    """K/V projections (and the personalization adapter) run once per sampling run, not per step."""
    patched = apply(world, preservation=preservation)
    adapter = world["flexip"].adapter
    first, *steady = adapter_reads_per_call(patched, adapter, calls=3)
    projections = {name for name, _ in adapter.named_parameters() if name.startswith("layers.")}
    # the first call builds the cache: it reads every layer's K/V projection, so the probe works
    assert projections <= first, sorted(projections - first)[:5]
    assert steady == [set(), set()], steady


def test_steady_state_step_adds_only_attention_flops(world, pytorch_attention):
    """Adapter K/V are projected once per run: per step FlexIP adds attention, no matmuls."""
    patched = apply(world, preservation=0.5)
    inputs = workload.StepInputs.make(latent=16)
    base = counting.step_cost(world["model"], inputs, fake=False)
    _, steady = counting.run_costs(patched, inputs, fake=False)
    added = steady.minus(base).flops
    assert added, "FlexIP added no FLOPs: the patch did not run"
    assert all("attention" in op for op in added), added
