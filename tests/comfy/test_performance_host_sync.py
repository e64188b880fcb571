"""No host sync inside the FlexIP patch during sampling, under the grad modes ComfyUI samples in.

The guard (tests/comfy/host_sync.py) fails on every host sync inside FlexIP's code; the last
tests inject each kind of sync into the patch and check that the guard fails.
"""

from __future__ import annotations

import pytest
import torch

from tests.comfy.host_sync import HostSyncFound, run_guarded
from tests.comfy.tiny_world import apply, node, sample

pytestmark = pytest.mark.comfy

STEPS = 6


def guarded_sampling(patched, grad_mode) -> tuple[int, int]:
    """Sample `patched` under `grad_mode` with FlexIP's code guarded: (preparations, layer calls)."""

    def run():
        with grad_mode():
            sample(patched, STEPS)

    return run_guarded(patched, run)


def every_feature(world, flexip_pack):
    """Per-step γ (cosine schedule), per-block overrides, a start/end window and an attention mask."""
    schedule = node(flexip_pack, "FlexIPGateSchedule").build("0:1, 1:0", "cosine", output_blocks="0:0.2, 1:0.9")[0]
    return apply(world, gate=schedule, start_at=0.1, end_at=0.9, attn_mask=torch.ones(1, 64, 64))


# ComfyUI's executor runs nodes under inference_mode, where PyTorch hands different ops to the
# dispatcher (e.g. is_nonzero instead of _local_scalar_dense), so both modes are checked.
GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_patch_does_no_host_sync_with_a_scheduled_gate_window_and_mask(world, flexip_pack, mode):
    preparations, layer_calls = guarded_sampling(every_feature(world, flexip_pack), GRAD_MODES[mode])
    assert preparations == STEPS  # cond and uncond batched: one model call per step
    assert layer_calls == STEPS * len(world["pack"].nodes.layers.layer_specs_of(world["model"].model.diffusion_model))


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_patch_does_no_host_sync_with_a_constant_gate(world, mode):
    preparations, layer_calls = guarded_sampling(apply(world, preservation=0.5), GRAD_MODES[mode])
    assert preparations == STEPS and layer_calls > 0


# each reads the gate (a tensor under a schedule) the way a careless patch would
SYNCS = {
    "item": lambda gate: gate.item(),
    "float": lambda gate: float(gate),
    "if tensor": lambda gate: 1.0 if gate > 0.5 else 0.0,
    "tolist": lambda gate: gate.reshape(-1).tolist(),
    "equal": lambda gate: torch.equal(gate, gate),
    "nonzero": lambda gate: gate.reshape(-1).nonzero(),
    "boolean index": lambda gate: gate.reshape(-1)[gate.reshape(-1) > 0],
}


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("sync", SYNCS)
def test_guard_fails_when_the_patch_syncs(world, flexip_pack, monkeypatch, sync, mode):
    patch_module = flexip_pack.nodes.patch
    original = patch_module.gated_attention

    def syncing_gated_attention(q, text, kv, heads, strength, gate, *args, **kwargs):
        SYNCS[sync](gate if isinstance(gate, torch.Tensor) else torch.tensor(gate))
        return original(q, text, kv, heads, strength, gate, *args, **kwargs)

    monkeypatch.setattr(patch_module, "gated_attention", syncing_gated_attention)
    with pytest.raises(HostSyncFound):
        guarded_sampling(every_feature(world, flexip_pack), GRAD_MODES[mode])
