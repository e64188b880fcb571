"""Preservation adapter: identity tokens from DINOv2 patches, driven by queries and by CLIP [CLS]."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import PerceiverBlock
from .config import FlexIPConfig


class PreservationAdapter(nn.Module):
    """[CLS]-branch tokens (global look) and learnable-query tokens (fine detail), docs/design.md §2."""

    def __init__(self, config: FlexIPConfig) -> None:
        super().__init__()
        width, heads, mult = config.preservation_width, config.preservation_heads, config.ffn_mult
        self.cls_tokens = config.cls_tokens
        self.proj_in = nn.Linear(config.dino_dim, width)
        # query branch
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, width) / width**0.5)
        self.query_blocks = nn.ModuleList(PerceiverBlock(width, heads, mult) for _ in range(config.query_depth))
        self.query_out = nn.Linear(width, config.context_dim)
        self.query_norm = nn.LayerNorm(config.context_dim)
        # [CLS] branch
        self.cls_proj = nn.Linear(config.clip_embed_dim, config.cls_tokens * width)
        self.cls_blocks = nn.ModuleList(PerceiverBlock(width, heads, mult) for _ in range(config.cls_depth))
        self.cls_out = nn.Linear(width, config.context_dim)
        self.cls_norm = nn.LayerNorm(config.context_dim)

    def forward(self, clip_embeds: Tensor, dino_tokens: Tensor) -> Tensor:
        """clip_embeds [B, C], dino_tokens [B, T, Dd] -> [B, cls_tokens + num_queries, d]."""
        context = self.proj_in(dino_tokens)
        batch = context.shape[0]
        cls = self.cls_proj(clip_embeds).reshape(batch, self.cls_tokens, -1)
        for block in self.cls_blocks:
            cls = block(cls, context)
        queries = self.queries.expand(batch, -1, -1)
        for block in self.query_blocks:
            queries = block(queries, context)
        return torch.cat([self.cls_norm(self.cls_out(cls)), self.query_norm(self.query_out(queries))], dim=1)
