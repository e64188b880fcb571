"""Personalization adapter: text tokens grounded in the subject's CLIP [CLS] embedding."""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import PersonalizationBlock
from .config import FlexIPConfig


class PersonalizationAdapter(nn.Module):
    """Each text token cross-attends to K tokens made from CLIP [CLS]; one output token per input."""

    def __init__(self, config: FlexIPConfig) -> None:
        super().__init__()
        width = config.context_dim
        self.kv_tokens = config.personalization_kv_tokens
        self.kv_proj = nn.Linear(config.clip_embed_dim, self.kv_tokens * width)
        self.kv_norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(
            PersonalizationBlock(width, config.personalization_heads, config.ffn_mult)
            for _ in range(config.personalization_depth)
        )
        self.norm_out = nn.LayerNorm(width)

    def forward(self, context: Tensor, clip_embeds: Tensor) -> Tensor:
        """context [B, L, d] (text embedding, any L), clip_embeds [B, C] -> [B, L, d]."""
        kv = self.kv_norm(self.kv_proj(clip_embeds).reshape(clip_embeds.shape[0], self.kv_tokens, -1))
        for block in self.blocks:
            context = block(context, kv)
        return self.norm_out(context)
