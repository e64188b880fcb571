"""Compatibility mode: public IP-Adapter files as FlexIP's two branches (docs/design.md §7).

Pure torch, no ComfyUI. `load_pair(preservation, personalization, layers)` reads two files,
detects their variants, matches their layers to the model and returns an `IPAdapterPair`.
These are IP-Adapter weights blended by the FlexIP gate, not trained FlexIP weights.
"""

from .checkpoint import load_pair, open_file
from .image_projections import ImageProjection, MLPProjection, PerceiverAttention, Resampler
from .pair import IPAdapterBranch, IPAdapterPair, IPAdapterPairConfig
from .variants import (
    IPAdapterSpec,
    describe,
    ip_adapter_index,
    ip_adapter_order,
    match_layers,
)

__all__ = [
    "IPAdapterBranch",
    "IPAdapterPair",
    "IPAdapterPairConfig",
    "IPAdapterSpec",
    "ImageProjection",
    "MLPProjection",
    "PerceiverAttention",
    "Resampler",
    "describe",
    "ip_adapter_index",
    "ip_adapter_order",
    "load_pair",
    "match_layers",
    "open_file",
]
