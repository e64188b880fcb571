"""A guard that fails on every host sync inside FlexIP's code while a model samples.

A host sync (a tensor value read on the CPU, or an op whose output shape depends on values)
stalls the GPU queue once per layer call. The guard fails on every form of it that reaches
PyTorch: `.item()`, `float()`, `bool()` / `if t:`, `torch.equal`, data-dependent shapes
(`nonzero`, boolean indexing, `masked_select`, `unique`), and `.tolist()` / `.numpy()`, which do
not always reach the dispatcher and are caught at the Python method instead. `run_guarded` turns
it on only inside FlexIP's code (the per-call preparation of the diffusion-model wrapper and
every attn2 patch): ComfyUI's own samplers read sigmas on the host, which is their business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.counting import HOST_READ_OPS
from tests.comfy.tiny_world import PatchProbe, attn2_patches

_HOST_METHODS = ("tolist", "numpy", "__array__")


class HostSyncFound(AssertionError):
    pass


class _SyncGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        packet = name.rsplit(".", 1)[0]
        if name in HOST_READ_OPS or packet in HOST_READ_OPS:
            raise HostSyncFound(f"host sync inside the FlexIP patch: {name}")
        if packet == "aten.index" and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1]
        ):
            raise HostSyncFound("host sync inside the FlexIP patch: boolean indexing")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
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


def run_guarded(patched: Any, run: Callable[[], Any]) -> tuple[int, int]:
    """Call `run()` (which samples `patched`) with FlexIP's per-call preparation and every attn2
    patch of `patched` under no_host_sync(). Returns (guarded preparations, guarded layer calls)."""
    patches = attn2_patches(patched)
    state = next(iter(patches.values())).state
    prepare = state.call_state  # the per-model-call work of the diffusion-model wrapper
    preparations, layer_calls = [], []

    def guarded_prepare(*args):
        preparations.append(1)
        with no_host_sync():
            return prepare(*args)

    state.call_state = guarded_prepare
    for key, patch in list(patches.items()):
        patches[key] = PatchProbe(patch, observe=lambda q, options: layer_calls.append(1), guard=no_host_sync)
    try:
        run()  # the first model call builds the per-run K/V cache, later ones hit it: all guarded
    finally:
        del state.call_state
    return len(preparations), len(layer_calls)
