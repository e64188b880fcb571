"""ComfyUI-FlexIP: identity preservation vs. personalization for Stable Diffusion, gate-controlled."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
