"""ComfyUI's model management for the callers outside a server: model patchers built, loaded and freed.

Each function imports ComfyUI when called (after `bootstrap.import_comfy`), so importing this
module never imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


def unet_patcher(
    family: str, unet_config: dict, dtype: torch.dtype, fill: Callable[[torch.nn.Module], None] | None = None
) -> Any:
    """A ModelPatcher of the BaseModel `comfy.supported_models.<family>` builds from `unet_config`.

    Built on ComfyUI's UNet offload device for its torch device, computing in `dtype`; `fill(diffusion_model)`
    writes the weights (None: allocated, never written).
    """
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, family)(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model = config.get_model({}, "", device=offload_device)
    if fill is not None:
        fill(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def pinned_patcher(module: torch.nn.Module, device: torch.device) -> Any:
    """A ModelPatcher of `module` whose load and offload device are both `device`: ComfyUI never moves it."""
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(module, load_device=device, offload_device=device)


def load_fully(patchers: Iterable[Any]) -> None:
    """Load every ModelPatcher fully on its load device (ComfyUI's load_models_gpu, force_full_load)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu(list(patchers), force_full_load=True)


def free_memory(bytes_wanted: int, device: torch.device) -> None:
    """Ask ComfyUI's model management for `bytes_wanted` on `device`, unloading models as it would."""
    import comfy.model_management

    comfy.model_management.free_memory(bytes_wanted, device)


def is_loaded(model: torch.nn.Module) -> bool:
    """Whether ComfyUI's model management holds a loaded ModelPatcher of `model` (a BaseModel)."""
    import comfy.model_management

    return any(entry.model.model is model for entry in comfy.model_management.current_loaded_models)


def checkpointable_blocks(diffusion_model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The UNet's transformer blocks and ResBlocks (timestep blocks other than the sequential containers)."""
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock, TimestepEmbedSequential

    for module in diffusion_model.modules():
        if isinstance(module, BasicTransformerBlock) or (
            isinstance(module, TimestepBlock) and not isinstance(module, TimestepEmbedSequential)
        ):
            yield module


def unload_all() -> None:
    """Unload every model ComfyUI's model management holds (ComfyUI's unload_all_models)."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
