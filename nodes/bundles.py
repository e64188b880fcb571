"""What flows between the FlexIP nodes: the loaded adapter and the encoded subject."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import torch

from flexip_model.subject import AdapterConfig, SubjectAdapter, SubjectTokens


@dataclass(frozen=True, eq=False)
class LoadedFlexIP:
    """The `FLEXIP` type: adapter weights in a ModelPatcher, so ComfyUI loads and offloads them.

    `adapter` is a trained FlexIPAdapter, or an IPAdapterPair in compatibility mode (docs/design.md §7):
    the nodes only call the `SubjectAdapter` contract both implement.
    """

    name: str
    adapter: SubjectAdapter
    patcher: comfy.model_patcher.ModelPatcher

    @property
    def config(self) -> AdapterConfig:
        return self.adapter.config

    @classmethod
    def wrap(cls, name: str, adapter: SubjectAdapter, dtype: torch.dtype | None = None) -> LoadedFlexIP:
        """`adapter` in a ModelPatcher, in `dtype` (default: the UNet's compute type, unet_compute_dtype)."""
        load_device = comfy.model_management.get_torch_device()
        offload_device = comfy.model_management.unet_offload_device()
        adapter = adapter.to(device=offload_device, dtype=dtype or unet_compute_dtype(load_device)).eval()
        adapter.requires_grad_(False)
        return cls(name, adapter, comfy.model_patcher.ModelPatcher(adapter, load_device, offload_device))

    @property
    def held(self) -> bool:
        """Whether ComfyUI's model management holds the adapter loaded (among current_loaded_models)."""
        return any(entry.model is self.patcher for entry in comfy.model_management.current_loaded_models)

    @contextmanager
    def on_device(self) -> Generator[SubjectAdapter, None, None]:
        """The adapter on its load device for one build (a subject's tokens, a run's K/V), then back.

        The adapter is needed only to build; holding it loaded beside the UNet while sampling would
        keep its weights (1.7 GB for SDXL in fp16) on the device for nothing. ComfyUI's model
        management loads it (and frees room for it as for any model); on leaving, only this patcher
        is unloaded to its offload device, whatever else is loaded stays. If something already held
        it loaded (a caller that loaded it on purpose), it stays loaded.
        """
        held = self.held
        comfy.model_management.load_models_gpu([self.patcher])
        try:
            yield self.adapter
        finally:
            if not held:
                release(self.patcher)


def release(patcher: comfy.model_patcher.ModelPatcher) -> None:
    """Unload `patcher` alone, as comfy.model_management.free_memory unloads a model: its weights go
    to the offload device and it leaves current_loaded_models."""
    loaded = comfy.model_management.current_loaded_models
    for index in range(len(loaded) - 1, -1, -1):
        if loaded[index].model is patcher:
            loaded.pop(index).model_unload()


def unet_compute_dtype(device: torch.device) -> torch.dtype:
    """The type ComfyUI's UNet computes in on `device` under its switches, as comfy.sd picks it.

    With fp8 storage (--fp8_e4m3fn-unet) or a type the device is slow in (bf16 on a CPU), ComfyUI
    keeps the weights in the storage type and casts them per layer to a manual-cast type; the
    adapter is small next to the UNet and has no such casting layers, so it is kept in that type.
    """
    storage = comfy.model_management.unet_dtype(device)
    return comfy.model_management.unet_manual_cast(storage, device) or storage


@dataclass(frozen=True, eq=False)
class EncodedSubject:
    """The `FLEXIP_SUBJECT` type: what the adapter keeps of the subject, rows subject (cond) then uncond.

    `tokens` are kept on the intermediate device and moved to the sampling device per run.
    """

    flexip: LoadedFlexIP
    tokens: SubjectTokens
    image_count: int
