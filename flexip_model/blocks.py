"""Small transformer blocks shared by the two adapters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import merge_heads, split_heads


class CrossAttention(nn.Module):
    """Multi-head attention of `x` [B, N, D] over `context` [B, T, D] -> [B, N, D]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class FeedForward(nn.Module):
    """LN -> Linear D->mult·D -> GELU -> Linear back, as in IP-Adapter-Plus's resampler."""

    def __init__(self, width: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * mult, bias=False)
        self.fc2 = nn.Linear(width * mult, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class PerceiverBlock(nn.Module):
    """q ← q + Attn(LN(q), [LN(x); LN(q)]); q ← q + FFN(LN(q)). q [B, Q, W], x [B, T, W]."""

    def __init__(self, width: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm_context = nn.LayerNorm(width)
        self.norm_query = nn.LayerNorm(width)
        self.attn = CrossAttention(width, heads)
        self.ff = FeedForward(width, ffn_mult)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        normed = self.norm_query(queries)
        # the queries also attend to themselves, so they can exchange what they found
        queries = queries + self.attn(normed, torch.cat([self.norm_context(context), normed], dim=1))
        return queries + self.ff(queries)


class PersonalizationBlock(nn.Module):
    """E ← E + CrossAttn(LN(E), kv); E ← E + FFN(LN(E)). E [B, L, d], kv [B, K, d] (already normed)."""

    def __init__(self, width: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = CrossAttention(width, heads)
        self.ff = FeedForward(width, ffn_mult)

    def forward(self, text: Tensor, kv: Tensor) -> Tensor:
        text = text + self.attn(self.norm(text), kv)
        return text + self.ff(text)
