"""FLUX: the FlexIP gate over InfiniteYou's two stages (pure torch; docs/design.md §8)."""

from .arcface_ir_se50 import ArcFaceIRSE50, arcface_input, load_ir_se50
from .identity_projection import identity_projection, identity_tokens, load_identity_projection
from .residuals import ResidualGroup, blend_residuals, mask_tokens, residual_groups

__all__ = [
    "ArcFaceIRSE50",
    "ResidualGroup",
    "arcface_input",
    "blend_residuals",
    "identity_projection",
    "identity_tokens",
    "load_identity_projection",
    "load_ir_se50",
    "mask_tokens",
    "residual_groups",
]
