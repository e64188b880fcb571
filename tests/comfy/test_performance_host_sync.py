"""No host sync inside the FlexIP patch during sampling, under the grad modes ComfyUI samples in.

A host sync (a tensor value read on the CPU, or an op whose output shape depends on values)
stalls the GPU queue once per layer call. The guard below fails on every form of it that
reaches PyTorch: `.item()`, `float()`, `bool()` / `if t:`, `torch.equal`, data-dependent shapes
(`nonzero`, boolean indexing, `masked_select`, `unique`), and `.tolist()` / `.numpy()`, which do
not always reach the dispatcher and are caught at the Python method instead. It is active only
inside FlexIP's code (the per-call preparation of the diffusion-model wrapper and every attn2
patch): ComfyUI's own samplers read sigmas on the host, which is their business.
The last tests inject each kind of sync into the patch and check that the guard fails.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.comfy.test_flexip_apply import STEPS, apply, attn2_patches, node, sample, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.comfy

# ops that read values on the host, or whose output shape depends on values (a sync on CUDA)
_SYNC_OPS = {
    "aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "aten.nonzero",
    "aten.nonzero_static", "aten.masked_select", "aten._unique2", "aten.unique_consecutive",
    "aten.unique_dim", "aten.repeat_interleave.Tensor", "aten.repeat_interleave.self_Tensor",
}
_HOST_METHODS = ("tolist", "numpy", "__array__")


class HostSyncFound(AssertionError):
    pass


class _SyncGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        packet = name.rsplit(".", 1)[0]
        if name in _SYNC_OPS or packet in _SYNC_OPS:
            raise HostSyncFound(f"host sync inside the FlexIP patch: {name}")
        if packet == "aten.index" and any(
                isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1]):
            raise HostSyncFound("host sync inside the FlexIP patch: boolean indexing")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_sync():
    """Fail on any host sync in the block (dispatcher ops, and the Tensor methods that bypass it)."""
    def refuse(name):
        def method(*args, **kwargs):
            raise HostSyncFound(f"host sync inside the FlexIP patch: Tensor.{name}")
        return method

    saved = {name: torch.Tensor.__dict__.get(name) for name in _HOST_METHODS}
    for name in _HOST_METHODS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        with _SyncGuard():
            yield
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


class _GuardedPatch:
    """Runs one attn2 patch under the guard and counts its calls; forwards models()/to()."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls = inner, calls

    def __call__(self, q, k, v, extra_options):
        self.calls.append(1)
        with no_host_sync():
            return self.inner(q, k, v, extra_options)

    def models(self):
        return self.inner.models()

    def to(self, device):
        self.inner = self.inner.to(device)
        return self


def guarded_sampling(world, patched, grad_mode) -> tuple[int, int]:
    """Sample `patched` with FlexIP's per-call preparation and layer patches under the guard.

    Returns (guarded preparations, guarded layer calls).
    """
    patches = attn2_patches(patched)
    state = next(iter(patches.values())).state
    prepare = state._call_state  # the per-model-call work of the diffusion-model wrapper
    preparations, layer_calls = [], []

    def guarded_prepare(*args):
        preparations.append(1)
        with no_host_sync():
            return prepare(*args)

    state._call_state = guarded_prepare
    for key, patch in list(patches.items()):
        patches[key] = _GuardedPatch(patch, layer_calls)
    try:
        with grad_mode():
            sample(patched)  # the first call builds the per-run K/V cache, later ones hit it: all guarded
    finally:
        del state._call_state
    return len(preparations), len(layer_calls)


def every_feature(world, flexip_pack):
    """Per-step γ (cosine schedule), per-block overrides, a start/end window and an attention mask."""
    schedule = node(flexip_pack, "FlexIPGateSchedule").build("0:1, 1:0", "cosine", output_blocks="0:0.2, 1:0.9")[0]
    return apply(world, gate=schedule, start_at=0.1, end_at=0.9, attn_mask=torch.ones(1, 64, 64))


# ComfyUI's executor runs nodes under inference_mode, where PyTorch hands different ops to the
# dispatcher (e.g. is_nonzero instead of _local_scalar_dense), so both modes are checked.
GRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_patch_does_no_host_sync_with_a_scheduled_gate_window_and_mask(world, flexip_pack, mode):
    preparations, layer_calls = guarded_sampling(world, every_feature(world, flexip_pack), GRAD_MODES[mode])
    assert preparations == STEPS  # cond and uncond batched: one model call per step
    assert layer_calls == STEPS * len(world["pack"].nodes.layers.layer_specs_of(world["model"].model.diffusion_model))


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_patch_does_no_host_sync_with_a_constant_gate(world, mode):
    preparations, layer_calls = guarded_sampling(world, apply(world, preservation=0.5), GRAD_MODES[mode])
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
    original = patch_module.adapter_attention

    def syncing_adapter_attention(q_heads, kv, strength, gate, *args, **kwargs):
        SYNCS[sync](gate if isinstance(gate, torch.Tensor) else torch.tensor(gate))
        return original(q_heads, kv, strength, gate, *args, **kwargs)

    monkeypatch.setattr(patch_module, "adapter_attention", syncing_adapter_attention)
    with pytest.raises(HostSyncFound):
        guarded_sampling(world, every_feature(world, flexip_pack), GRAD_MODES[mode])
