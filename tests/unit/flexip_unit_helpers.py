"""Unit-layer helpers: an independent attention reference, dispatch-level op recorders, one-file loading.

Helpers more than one test layer uses live in tests/support/."""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flexip_model.ip_adapter import IPAdapterBranch, load_pair

HOST_SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single head, written from the definition: softmax(q·kᵀ/√dh)·v in float64. q [N, dh], k/v [T, dh]."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.T / math.sqrt(q.shape[-1])
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v


def load_one_file(path, layers, context_dim=None, dtype=None) -> IPAdapterBranch:
    """One IP-Adapter file through the loader users run (`load_pair`), as both branches: its branch."""
    return load_pair(path, path, layers, context_dim, dtype).preservation


class OpRecorder(TorchDispatchMode):
    """Records every aten op that reaches the dispatcher; raises on ops that read a tensor on the host."""

    def __init__(self, forbid_host_sync: bool = False) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.forbid_host_sync = forbid_host_sync

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.ops.append(name)
        if self.forbid_host_sync and name.startswith(HOST_SYNC_OPS):
            raise AssertionError(f"host sync: {name}")
        return func(*args, **(kwargs or {}))
