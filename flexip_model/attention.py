"""The FlexIP layer equation (docs/design.md §2), the hot path of every patched attn2 call.

Paper symbols: s = `strength` (overall adapter weight), γ = `gate` (preservation share).
    output mode: Z = Attn(Q, K_t, V_t) + s·(γ·Attn(Q, K_p, V_p) + (1−γ)·Attn(Q, K_y, V_y))
    token mode:  Z = Attn(Q, K_t, V_t) + s·Attn(Q, [γ·K_p; (1−γ)·K_y], [γ·V_p; (1−γ)·V_y])
K_p/V_p come from the preservation tokens, K_y/V_y from the personalization tokens.
Nothing here reads a tensor value on the host: gates may change per step and per batch item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FlexIPError
from .vocabulary import OUTPUT_MODE, TOKEN_MODE

# ComfyUI's optimized_attention contract:
# fn(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False)
AttentionFn = Callable[..., Tensor]
Weight = float | Tensor
# Weights under compile: a float γ or s enters a torch.compile graph as a product, never as an op's
# `alpha`: once the value changes between runs, dynamo makes it a symbolic float, and inductor
# (torch 2.14) bakes a symbolic `alpha` into its kernel, so later values silently reuse the first
# one (tests/comfy/test_compile.py). Eager mode keeps the fused `alpha` op.


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, H*dh] -> [B, H, T, dh] (a view when possible)."""
    batch, tokens, width = x.shape
    return x.reshape(batch, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, N, dh] -> [B, N, H*dh]."""
    batch, heads, tokens, dim_head = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim_head)


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    mask: Tensor | None = None,
    attn_precision: torch.dtype | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    **kwargs: object,
) -> Tensor:
    """Pure-torch attention with ComfyUI's `optimized_attention` contract.

    Inputs are [B, T, H*dh], or [B, H, T, dh] with `skip_reshape`; the output is [B, N, H*dh],
    or [B, H, N, dh] with `skip_output_reshape`. `mask` is additive (or bool) and broadcastable
    to [B, H, N, T]. Extra keyword arguments (ComfyUI's transformer_options) are ignored.
    """
    if not skip_reshape:
        q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    out_dtype = q.dtype
    # like ComfyUI's attn_precision: half inputs overflow in q·k, so compute in float32
    if attn_precision == torch.float32 and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
        mask = mask.float() if mask is not None and mask.is_floating_point() else mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).to(out_dtype)
    return out if skip_output_reshape else merge_heads(out)


@dataclass(frozen=True)
class BranchKV:
    """Keys and values of one adapter branch, already split into heads: [B, H, T, dh]."""

    key: Tensor
    value: Tensor


@dataclass(frozen=True)
class JointKV:
    """Token mode's K/V [B, H, Tp+Ty, dh] = [preservation; personalization], built once per run.

    A token's weight is `offset + γ·slope` ([1, 1, T, 1] each): γ on preservation tokens
    (offset 0, slope 1) and 1−γ on personalization tokens (offset 1, slope −1), exact at γ = 0 and 1.
    """

    key: Tensor
    value: Tensor
    offset: Tensor
    slope: Tensor


@dataclass(frozen=True)
class LayerKV:
    """What one layer needs from the adapter; a branch is None when its tokens are absent."""

    preservation: BranchKV | None
    personalization: BranchKV | None
    joint: JointKV | None = None  # token mode cache; `join_branches` fills it


def join_branches(kv: LayerKV) -> LayerKV:
    """Precompute token mode's concatenated K/V (once per run, not per layer call); idempotent."""
    if kv.joint is not None or kv.preservation is None or kv.personalization is None:
        return kv
    return LayerKV(kv.preservation, kv.personalization, _joint(kv.preservation, kv.personalization))


def _joint(pres: BranchKV, pers: BranchKV) -> JointKV:
    device, dtype = pres.key.device, pres.key.dtype
    tokens_p, tokens_y = pres.key.shape[2], pers.key.shape[2]
    offset = torch.cat(
        [torch.zeros(tokens_p, device=device, dtype=dtype), torch.ones(tokens_y, device=device, dtype=dtype)]
    ).view(1, 1, -1, 1)
    return JointKV(
        key=torch.cat([pres.key, pers.key], dim=2),
        value=torch.cat([pres.value, pers.value], dim=2),
        offset=offset,
        slope=1.0 - 2.0 * offset,
    )


def _is_zero(weight: Weight) -> bool:
    # only Python numbers are inspected; a tensor is never read on the host
    return not isinstance(weight, Tensor) and float(weight) == 0.0


def _as_weight(weight: Weight, like: Tensor) -> Weight:
    """A tensor weight as [B, 1, 1, 1] (or scalar) in the query's dtype/device; floats pass through."""
    if not isinstance(weight, Tensor):
        return float(weight)
    if weight.ndim == 1:
        weight = weight.view(-1, 1, 1, 1)
    return weight.to(device=like.device, dtype=like.dtype)


def _scaled(x: Tensor, weight: Weight) -> Tensor:
    return x if not isinstance(weight, Tensor) and weight == 1.0 else x * weight


def adapter_attention(
    q_heads: Tensor,
    kv: LayerKV,
    strength: Weight,
    gate: Weight,
    gate_mode: str,
    attention: AttentionFn = sdpa_attention,
    attn_precision: torch.dtype | None = None,
) -> Tensor | None:
    """The adapter term of one layer, without the text term: [B, H, N, dh], or None if nothing is live.

    `q_heads` is [B, H, N, dh]; `strength` (s) and `gate` (γ) are floats or tensors of shape [],
    [B] or [B, 1, 1, 1]. A branch whose weight is a Python 0 or whose KV is None is skipped.
    Keys/values must have q's batch size (expand a shared reference; expand is free).
    """
    strength, gate = _as_weight(strength, q_heads), _as_weight(gate, q_heads)
    if _is_zero(strength):
        return None
    pres = None if _is_zero(gate) else kv.preservation
    pers = kv.personalization if isinstance(gate, Tensor) or gate != 1.0 else None
    if pres is None and pers is None:
        return None
    heads = q_heads.shape[1]

    def attend(key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        return attention(
            q_heads,
            key,
            value,
            heads,
            mask=mask,
            attn_precision=attn_precision,
            skip_reshape=True,
            skip_output_reshape=True,
        )

    if gate_mode == OUTPUT_MODE:
        if pers is None:
            assert pres is not None  # both None returned above
            return _scaled(attend(pres.key, pres.value), strength * gate)
        if pres is None:
            return _scaled(attend(pers.key, pers.value), strength * (1.0 - gate))
        pres_weight = strength * gate
        pers_weight = strength - pres_weight  # s·(1−γ) in one op
        out = attend(pres.key, pres.value) * pres_weight
        if isinstance(pers_weight, Tensor):
            return out.addcmul_(attend(pers.key, pers.value), pers_weight)
        if torch.compiler.is_compiling():  # never an `alpha` in a graph: see "Weights under compile"
            return out.add_(attend(pers.key, pers.value) * pers_weight)
        return out.add_(attend(pers.key, pers.value), alpha=pers_weight)

    if gate_mode != TOKEN_MODE:
        raise FlexIPError(f"gate_mode {gate_mode!r} is unknown: use {OUTPUT_MODE!r} or {TOKEN_MODE!r}.")
    # s scales V only: Attn(q, K, s·V) = s·Attn(q, K, V), one op fewer than scaling the output
    if pers is None:
        assert pres is not None  # both None returned above
        return attend(_scaled(pres.key, gate), _scaled(pres.value, strength * gate))
    if pres is None:
        rest = 1.0 - gate
        return attend(_scaled(pers.key, rest), _scaled(pers.value, strength * rest))
    joint = kv.joint if kv.joint is not None else _joint(pres, pers)
    if not isinstance(gate, Tensor):
        # 0 < γ < 1 here, so no token has weight 0 and no mask is needed
        if torch.compiler.is_compiling():  # see "Weights under compile" above
            token_weight = joint.offset + joint.slope * gate
        else:
            token_weight = torch.add(joint.offset, joint.slope, alpha=gate)
        return attend(joint.key * token_weight, joint.value * _scaled(token_weight, strength))
    # per-item γ: items with γ = 0 or 1 get exact zero token weights, and those tokens leave
    # the softmax through an additive -inf mask built on device (no host read of γ)
    token_weight = torch.addcmul(joint.offset, joint.slope, gate)  # [B, 1, T, 1]
    mask = torch.zeros_like(token_weight).masked_fill_(token_weight == 0, float("-inf")).transpose(-1, -2)
    return attend(joint.key * token_weight, joint.value * _scaled(token_weight, strength), mask)


def gated_attention(
    q: Tensor,
    text: Tensor,
    kv: LayerKV,
    heads: int,
    strength: Weight,
    gate: Weight,
    gate_mode: str = OUTPUT_MODE,
    mask: Tensor | None = None,
    attention: AttentionFn = sdpa_attention,
    attn_precision: torch.dtype | None = None,
) -> Tensor:
    """The full layer Z: the text term plus the adapter term, [B, N, inner].

    `q` is [B, N, inner]; `text` is the text term Attn(Q, K_t, V_t) [B, N, inner], computed by
    the caller (ComfyUI's attention, or another extension's patch that this one chains).
    `mask` [B, N] or [B, N, 1] in [0, 1], in q's dtype and device (the caller casts it once per
    model call, not per layer), weights the adapter term per query token (a latent-grid mask
    flattened by the caller).
    """
    term = adapter_attention(split_heads(q, heads), kv, strength, gate, gate_mode, attention, attn_precision)
    if term is None:
        return text
    term = merge_heads(term)
    if mask is None:
        return text + term
    if mask.ndim == 2:
        mask = mask.unsqueeze(-1)
    return torch.addcmul(text, term, mask)
