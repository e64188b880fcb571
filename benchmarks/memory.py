"""Memory figures: what cloning a patched model costs, and whether ComfyUI offloads the adapter.

`clone_memory_growth`: ModelPatcher.clone() deep-copies model_options, where FlexIP's patches
live; FlexIPPatch.__deepcopy__ shares the adapter and tokens, so ten clones must not copy them.

`adapter_offload`: the adapter weights sit in their own ModelPatcher, returned by the patches'
`models()`, so comfy.sample loads them with the UNet and comfy.model_management.free_memory
offloads them with the UNet. The check samples a full SD1.5 with a full-size adapter, then asks
model management for more memory than the load device has (what loading the next model does
under a tight budget) and reads what is left on the load device.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch

from flexip_model.vocabulary import context_dim_for

from . import host


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def clone_growth(patched, clones: int = 10) -> tuple[int, list]:
    """Resident bytes added by `clones` clones of a patched ModelPatcher (the clones are returned, alive)."""
    gc.collect()
    before = resident_bytes()
    made = [patched.clone() for _ in range(clones)]
    gc.collect()
    return resident_bytes() - before, made


def shared_adapter(original, clones: list) -> bool:
    """Whether every clone's FlexIP patches hold the very same adapter module as the original."""
    adapters = {id(state.flexip.adapter) for clone in clones for state in host.flexip_states(clone)}
    return adapters == {id(state.flexip.adapter) for state in host.flexip_states(original)}


@dataclass(frozen=True)
class Offload:
    """Where the weights are during and after sampling under ComfyUI's model management."""

    adapter_bytes: int
    adapter_loaded_while_sampling: bool  # in current_loaded_models beside the UNet
    adapter_loaded_bytes_while_sampling: int
    adapter_left_on_load_device: int  # bytes after free_memory: ComfyUI's accounting + tensors there
    unet_left_on_load_device: int
    run_cache_bytes: int  # per-run adapter K/V still held after the run
    load_device: torch.device
    offload_device: torch.device


def _left_on_load_device(patcher) -> int:
    """Bytes ComfyUI counts as loaded, plus bytes of tensors physically on the load device when it
    differs from the offload device (on a CPU-only machine both devices are the CPU)."""
    counted = patcher.loaded_size()
    if patcher.load_device == patcher.offload_device:
        return counted
    model = patcher.model
    physical = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
                   if t.device == patcher.load_device)
    return max(counted, physical)


def _run_cache_bytes(patched) -> int:
    total = 0
    for state in host.flexip_states(patched):
        for layer_kvs in state._run_cache.values():  # noqa: SLF001 (inspecting, not using)
            for kv in layer_kvs:
                for branch in (kv.preservation, kv.personalization, kv.joint):
                    if branch is not None:
                        total += branch.key.numel() * branch.key.element_size() * 2
    return total


def adapter_offload(pack: host.Pack, base, flexip, subject, latent: int = 8, steps: int = 2) -> Offload:
    """Sample `steps` steps of the patched full-size model, then free the load device."""
    import comfy.model_management as mm
    import comfy.sample

    patched = host.apply_flexip(pack, base, flexip, subject, preservation=0.5)
    adapter_patcher = flexip.patcher
    seen = {}

    def callback(step, x0, x, total_steps):
        loaded = [entry.model for entry in mm.current_loaded_models]
        seen["adapter"] = any(model is adapter_patcher for model in loaded)
        seen["adapter_bytes"] = adapter_patcher.loaded_size()

    generator = torch.Generator().manual_seed(5)
    width = context_dim_for("sd15")
    positive = [[torch.randn(1, host.TEXT_TOKENS, width, generator=generator), {}]]
    negative = [[torch.randn(1, host.TEXT_TOKENS, width, generator=generator), {}]]
    latent_image = torch.zeros(1, 4, latent, latent)
    noise = comfy.sample.prepare_noise(latent_image, 0)
    comfy.sample.sample(patched, noise, steps, 5.0, "euler", "normal", positive, negative, latent_image,
                        disable_pbar=True, seed=0, callback=callback)
    # a budget that forces offload: the next model wants more than the device holds
    mm.free_memory(1 << 60, adapter_patcher.load_device)
    return Offload(
        adapter_bytes=host.module_bytes(flexip.adapter),
        adapter_loaded_while_sampling=seen.get("adapter", False),
        adapter_loaded_bytes_while_sampling=seen.get("adapter_bytes", 0),
        adapter_left_on_load_device=_left_on_load_device(adapter_patcher),
        unet_left_on_load_device=_left_on_load_device(patched),
        run_cache_bytes=_run_cache_bytes(patched),
        load_device=adapter_patcher.load_device,
        offload_device=adapter_patcher.offload_device,
    )
