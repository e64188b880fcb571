"""FLUX: the FlexIP gate over InfiniteYou's two stages (pure torch; docs/design.md §8)."""

from .residuals import ResidualGroup, blend_residuals, mask_tokens, residual_groups

__all__ = ["ResidualGroup", "blend_residuals", "mask_tokens", "residual_groups"]
