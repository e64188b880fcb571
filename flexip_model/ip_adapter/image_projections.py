"""The image projections of public IP-Adapter files, with the files' own state-dict names.

Three kinds exist (IP-Adapter, Ye et al. 2023, and its "plus"/"full-face" releases):
- `ImageProjection` (ip-adapter, light): CLIP `image_embeds` [B, C] -> T tokens [B, T, d].
- `Resampler` (plus, plus-face): Perceiver over the CLIP penultimate hidden states
  [B, N, C] -> Q learned queries [B, Q, d].
- `MLPProjection` (full-face): the penultimate hidden states token by token [B, N, d].
Names (`proj`, `norm`, `latents`, `layers.<i>.0.to_kv` ...) are exactly those under
`image_proj.` in the files, so a file's tensors load with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import merge_heads, split_heads

RESAMPLER_HEAD_WIDTH = 64  # every published IP-Adapter resampler uses 64-wide heads


class ImageProjection(nn.Module):
    """Linear CLIP [CLS] embedding -> `tokens` tokens of width d, each layer-normed."""

    def __init__(self, feature_dim: int, context_dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.context_dim = context_dim
        self.proj = nn.Linear(feature_dim, tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, image_embeds: Tensor) -> Tensor:
        """[B, C] -> [B, T, d]."""
        return self.norm(self.proj(image_embeds).reshape(-1, self.tokens, self.context_dim))


class MLPProjection(nn.Module):
    """Two-layer MLP applied to every hidden-state token (the full-face file)."""

    def __init__(self, feature_dim: int, context_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(feature_dim, feature_dim),
            nn.GELU(),
            nn.Linear(feature_dim, context_dim),
            nn.LayerNorm(context_dim),
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        """[B, N, C] -> [B, N, d]."""
        return self.proj(hidden_states)


class PerceiverAttention(nn.Module):
    """Latents attend to [image features; latents]; both inputs are layer-normed first."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        inner = heads * RESAMPLER_HEAD_WIDTH
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)  # image features
        self.norm2 = nn.LayerNorm(width)  # latents
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        """features [B, N, w], latents [B, Q, w] -> update of the latents [B, Q, w]."""
        features, latents = self.norm1(features), self.norm2(latents)
        key, value = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        query = split_heads(self.to_q(latents), self.heads)
        out = F.scaled_dot_product_attention(query, split_heads(key, self.heads), split_heads(value, self.heads))
        return self.to_out(merge_heads(out))


def feed_forward(width: int, mult: int) -> nn.Sequential:
    """LN -> Linear -> GELU -> Linear, bias-free (indices 0, 1, 3 in the files)."""
    return nn.Sequential(
        nn.LayerNorm(width),
        nn.Linear(width, width * mult, bias=False),
        nn.GELU(),
        nn.Linear(width * mult, width, bias=False),
    )


class Resampler(nn.Module):
    """Perceiver resampler: `queries` learned latents read the projected CLIP hidden states."""

    def __init__(
        self, feature_dim: int, context_dim: int, width: int, heads: int, depth: int, queries: int, ff_mult: int = 4
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, queries, width))
        self.proj_in = nn.Linear(feature_dim, width)
        self.proj_out = nn.Linear(width, context_dim)
        self.norm_out = nn.LayerNorm(context_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, heads), feed_forward(width, ff_mult)]) for _ in range(depth)
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        """[B, N, C] -> [B, Q, d]."""
        features = self.proj_in(hidden_states)
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)
        # torch types a ModuleList's items as plain Modules; __init__ put an [attention, feed] ModuleList at each
        for attention, feed in cast(Iterable[nn.ModuleList], self.layers):
            latents = latents + attention(features, latents)
            latents = latents + feed(latents)
        return self.norm_out(self.proj_out(latents))
