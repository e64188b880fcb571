"""Per-layer K/V projections of the adapter tokens (the new trainable cross-attention, docs/design.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn

from .attention import BranchKV, split_heads
from .config import FlexIPConfig
from .errors import FlexIPError
from .vocabulary import OUTPUT_MODE


class KVProjection(nn.Module):
    """Bias-free to_k / to_v, d -> inner_dim, like the UNet's own attn2."""

    def __init__(self, context_dim: int, inner_dim: int) -> None:
        super().__init__()
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)

    def branch_kv(self, tokens: Tensor, heads: int) -> BranchKV:
        """Head-split K/V [B, H, T, dh] of `tokens` [B, T, d]."""
        return BranchKV(split_heads(self.to_k(tokens), heads), split_heads(self.to_v(tokens), heads))


def _branch_names(gate_mode: str) -> tuple[str, ...]:
    # output mode has one projection pair per adapter; token mode projects the joint sequence
    return ("pres", "pers") if gate_mode == OUTPUT_MODE else ("joint",)


class LayerProjections(nn.ModuleDict):
    """Keyed by layer key; state-dict names `<key>.{pres,pers}.{to_k,to_v}.weight` (or `<key>.joint...`)."""

    def __init__(self, config: FlexIPConfig) -> None:
        super().__init__(
            {
                spec.key: nn.ModuleDict(
                    {name: KVProjection(config.context_dim, spec.inner_dim) for name in _branch_names(config.gate_mode)}
                )
                for spec in config.layers
            }
        )

    def projection(self, key: str, branch: str) -> KVProjection:
        """Layer `key`'s projection pair `branch` ("pres", "pers" or "joint")."""
        # torch types a ModuleDict's items as plain Modules; __init__ put a KVProjection at each
        return cast(KVProjection, cast(nn.ModuleDict, self[key])[branch])

    @torch.no_grad()
    def init_from_base(self, base: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Copy each layer's frozen base to_k / to_v weights [inner, d] into all its projections."""
        for key, branches in self.items():
            if key not in base:
                raise FlexIPError(
                    f"the base weights have no to_k/to_v for layer {key}: "
                    "pass the attn2 weights of every adapter layer."
                )
            for branch in cast(nn.ModuleDict, branches):  # a layer's item is its ModuleDict of branches
                projection = self.projection(key, branch)
                for linear, weight in zip((projection.to_k, projection.to_v), base[key]):
                    if tuple(weight.shape) != tuple(linear.weight.shape):
                        raise FlexIPError(
                            f"the base weight for layer {key} has shape {tuple(weight.shape)}, the adapter expects "
                            f"{tuple(linear.weight.shape)}: use the UNet this adapter's config was made for."
                        )
                    linear.weight.copy_(weight)
