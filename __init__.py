"""ComfyUI-FlexIP: identity preservation vs. personalization for Stable Diffusion, gate-controlled."""

import os
import sys

# The node layer imports the pure-torch core as the top-level package `flexip_model`, the same
# module the trainer, the CLI and the tests import: appended, so ComfyUI's own modules and other
# packs always come first.
_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
