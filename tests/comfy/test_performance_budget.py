"""Per-step cost of the patch on a real ComfyUI model: few ops per layer, and no K/V work per step.

The same counting as `make bench` (figures A and B of issue 9), on the tiny UNet so it runs
in seconds: ops that reach the dispatcher in one steady-state model call (the per-run K/V
cache already built), and FLOPs per aten op by torch.utils.flop_counter. ComfyUI is pointed
at PyTorch attention, what it selects on NVIDIA GPUs (on a CPU it picks a chunked fallback).
"""

from __future__ import annotations

import pytest

from benchmarks import counting, host
from tests.comfy.tiny_world import apply

pytestmark = pytest.mark.comfy

OPS_PER_LAYER = 16  # issue 9: <= 256 for SD1.5's 16 layers; IPAdapter_plus adds 50 per layer


@pytest.fixture
def pytorch_attention(monkeypatch):
    import comfy.ldm.modules.attention as attention

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)


def _layers(world) -> int:
    return len(world["pack"].nodes.layers.layer_specs_of(world["model"].model.diffusion_model))


@pytest.mark.parametrize("preservation", [0.5, 1.0])
def test_steady_state_step_adds_at_most_16_ops_per_layer(world, pytorch_attention, preservation):
    patched = apply(world, preservation=preservation)
    inputs = host.StepInputs.make(latent=16)
    base = counting.step_cost(world["model"], inputs, fake=False)
    first, steady = counting.run_costs(patched, inputs, fake=False)
    added = steady.minus(base)
    assert 0 < added.op_count <= OPS_PER_LAYER * _layers(world), counting.per_layer(added.ops, _layers(world))
    # the first call of a run builds the K/V cache; a steady-state call must not repeat that work
    assert first.op_count > steady.op_count


def test_steady_state_step_adds_only_attention_flops(world, pytorch_attention):
    """Adapter K/V are projected once per run: per step FlexIP adds attention, no matmuls."""
    patched = apply(world, preservation=0.5)
    inputs = host.StepInputs.make(latent=16)
    base = counting.step_cost(world["model"], inputs, fake=False)
    _, steady = counting.run_costs(patched, inputs, fake=False)
    added = steady.minus(base).flops
    assert added, "FlexIP added no FLOPs: the patch did not run"
    assert all("attention" in op for op in added), added
