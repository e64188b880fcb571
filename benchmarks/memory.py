"""Memory figures: what cloning a patched model costs, and whether ComfyUI offloads the adapter.

`clone_memory_growth`: ModelPatcher.clone() deep-copies model_options, where FlexIP's patches
live; FlexIPPatch.__deepcopy__ shares the adapter and tokens, so ten clones must not copy them.

`adapter_offload`: the adapter weights sit in their own ModelPatcher, which the patch loads through
ComfyUI's model management only to build a run's K/V (LoadedFlexIP.on_device) and unloads right
after; the sampler never holds it beside the UNet. The check samples a full SD1.5 with a full-size
adapter and watches, around every model call, what model management holds; then it asks for more
memory than the load device has (what loading the next model does under a tight budget) and reads
what is left on the load device.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from flexip_host.comfy_models import free_memory, is_loaded
from flexip_host.loaded_pack import Pack
from flexip_host.model_options import wrapper_kinds
from flexip_host.sampling import prepare_noise, sample
from flexip_model.vocabulary import context_dim_for

from . import workload


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
    adapters = {id(state.flexip.adapter) for clone in clones for state in workload.flexip_states(clone)}
    return adapters == {id(state.flexip.adapter) for state in workload.flexip_states(original)}


@dataclass
class Residency:
    """What model management held while a patched model sampled, looked at around every model call."""

    adapter_during_build: list[int] = field(default_factory=list)  # adapter bytes held while its modules run
    adapter_during_steps: list[int] = field(default_factory=list)  # at the start, around every model call
    adapter_held_during_steps: list[bool] = field(default_factory=list)  # among current_loaded_models
    unet_held_during_steps: list[bool] = field(default_factory=list)
    kv_cache_bytes: list[int] = field(default_factory=list)  # the run's K/V cache after every model call


@contextmanager
def watch_build(flexip) -> Iterator[list[int]]:
    """The adapter bytes model management holds loaded, looked at (forward pre-hooks) each time one of
    the adapter's modules runs: what it holds while the adapter builds."""
    seen: list[int] = []
    hooks = [
        module.register_forward_pre_hook(
            lambda module, args: seen.append(resident_bytes_on_load_device(flexip.patcher))
        )
        for module in flexip.adapter.modules()
        if not list(module.children())
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def watch_residency(patched, flexip) -> Iterator[Residency]:
    """Watch `patched` (a FlexIPApply clone) sample: ComfyUI wrappers look once the sampler has loaded
    its models (sampler_sample) and before and after each model call (apply_model, around FlexIP's
    diffusion-model wrapper and so around the K/V build); `watch_build` looks while the adapter builds."""
    kinds = wrapper_kinds()
    unet = patched.model

    def start(executor, *args, **kwargs):
        _look_at_step(seen, flexip, unet)
        return executor(*args, **kwargs)

    def call(executor, *args, **kwargs):
        _look_at_step(seen, flexip, unet)
        out = executor(*args, **kwargs)
        _look_at_step(seen, flexip, unet)
        seen.kv_cache_bytes.append(kv_cache_bytes(patched))
        return out

    wrappers = {kinds.SAMPLER_SAMPLE: start, kinds.APPLY_MODEL: call}
    with watch_build(flexip) as build:
        seen = Residency(adapter_during_build=build)
        for kind, wrapper in wrappers.items():
            patched.add_wrapper_with_key(kind, "bench_residency", wrapper)
        try:
            yield seen
        finally:
            for kind in wrappers:
                patched.remove_wrappers_with_key(kind, "bench_residency")


def _look_at_step(seen: Residency, flexip, unet) -> None:
    seen.adapter_during_steps.append(resident_bytes_on_load_device(flexip.patcher))
    seen.adapter_held_during_steps.append(flexip.held)
    seen.unet_held_during_steps.append(is_loaded(unet))


@dataclass(frozen=True)
class Offload:
    """Where the weights are during and after sampling under ComfyUI's model management."""

    adapter_bytes: int
    residency: Residency
    adapter_left_on_load_device: int  # bytes after free_memory: ComfyUI's accounting + tensors there
    unet_left_on_load_device: int
    run_cache_bytes: int  # per-run adapter K/V still held after the run
    load_device: torch.device
    offload_device: torch.device


def resident_bytes_on_load_device(patcher) -> int:
    """Bytes ComfyUI counts as loaded, plus bytes of tensors physically on the load device when it
    differs from the offload device (on a CPU-only machine both devices are the CPU)."""
    counted = patcher.loaded_size()
    if patcher.load_device == patcher.offload_device:
        return counted
    model = patcher.model
    physical = sum(
        t.numel() * t.element_size()
        for t in list(model.parameters()) + list(model.buffers())
        if t.device == patcher.load_device
    )
    return max(counted, physical)


def kv_cache_bytes(patched) -> int:
    """Bytes of the per-run K/V cache of every FlexIP patch on `patched`: every tensor of every
    cached LayerKV (branches, and token mode's joint K/V); fake tensors count by their shape."""
    tensors = {}

    def collect(value) -> None:
        if isinstance(value, torch.Tensor):
            tensors[id(value)] = value
        elif isinstance(value, tuple):
            for item in value:
                collect(item)
        elif dataclasses.is_dataclass(value):  # astuple would copy the tensors
            for item in dataclasses.fields(value):
                collect(getattr(value, item.name))

    for state in workload.flexip_states(patched):
        collect(tuple(state._run_cache.values()))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def kv_cache_bytes_per_run(patched, inputs: workload.StepInputs) -> int:
    """Bytes of the K/V cache a sampling run of `patched` builds for `inputs`' batch layout, built
    on fake tensors (shapes, no arithmetic, no memory: for a full-size SDXL on any machine)."""
    workload.end_run(patched)
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
        options = workload.transformer_options(patched, inputs)
        for state in workload.flexip_states(patched):
            state.call_state(inputs.x, inputs.context, options)
        size = kv_cache_bytes(patched)
    workload.end_run(patched)
    return size


def adapter_offload(pack: Pack, base, flexip, subject, latent: int = 8, steps: int = 2) -> Offload:
    """Sample `steps` steps of the patched full-size model, then free the load device."""
    patched = workload.apply_flexip(pack, base, flexip, subject, preservation=0.5)
    generator = torch.Generator().manual_seed(5)
    width = context_dim_for("sd15")
    positive = [[torch.randn(1, workload.TEXT_TOKENS, width, generator=generator), {}]]
    negative = [[torch.randn(1, workload.TEXT_TOKENS, width, generator=generator), {}]]
    latent_image = torch.zeros(1, 4, latent, latent)
    noise = prepare_noise(latent_image, 0)
    with watch_residency(patched, flexip) as residency:
        sample(patched, noise, steps, 5.0, "euler", "normal", positive, negative, latent_image, seed=0)
    # a budget that forces offload: the next model wants more than the device holds
    free_memory(1 << 60, flexip.patcher.load_device)
    return Offload(
        adapter_bytes=workload.module_bytes(flexip.adapter),
        residency=residency,
        adapter_left_on_load_device=resident_bytes_on_load_device(flexip.patcher),
        unet_left_on_load_device=resident_bytes_on_load_device(patched),
        run_cache_bytes=kv_cache_bytes(patched),
        load_device=flexip.patcher.load_device,
        offload_device=flexip.patcher.offload_device,
    )
