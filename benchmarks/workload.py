"""The measured workload: ComfyUI in-process, a full-size SD1.5 UNet with seeded random weights,
FlexIP applied through the pack's own FlexIPApply node, and model calls made as the sampler makes them.

Nothing here is a mock: the UNet is `comfy.supported_models.SD15(...).get_model()` (a real
`BaseModel` in a `ModelPatcher`), the adapter is a full-size `FlexIPAdapter` in a `LoadedFlexIP`,
and a step is `BaseModel.apply_model` with the transformer_options `comfy.samplers` builds.
Only the subject is synthetic: an `EncodedSubject` with random tokens stands in for
FlexIPEncodeSubject, whose encoders (CLIP-H, DINOv2-L) are not part of a UNet step.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

import flexip_model
import flexip_model.ip_adapter
from flexip_host.bootstrap import import_comfy, load_pack
from flexip_host.comfy_models import unet_patcher
from flexip_host.loaded_pack import Pack
from flexip_host.model_options import merge_wrappers
from flexip_model.subject import SubjectTokens
from flexip_model.vocabulary import context_dim_for
from tools.fixtures.paths import INPROCESS_BASE
from tools.fixtures.weights import key_generator

# The unet_config comfy.model_detection derives from a real SD1.5 checkpoint (16 attn2 layers).
SD15_UNET = dict(
    use_checkpoint=False,
    image_size=32,
    out_channels=4,
    use_spatial_transformer=True,
    legacy=False,
    adm_in_channels=None,
    in_channels=4,
    model_channels=320,
    num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    channel_mult=[1, 2, 4, 4],
    transformer_depth_middle=1,
    use_linear_in_transformer=False,
    context_dim=768,
    num_heads=8,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_temporal_attention=False,
    use_temporal_resblock=False,
)
# SDXL's unet_config as comfy.model_detection derives it (70 attn2 layers).
SDXL_UNET = dict(
    use_checkpoint=False,
    image_size=32,
    out_channels=4,
    use_spatial_transformer=True,
    legacy=False,
    num_classes="sequential",
    adm_in_channels=2816,
    in_channels=4,
    model_channels=320,
    num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 2, 2, 10, 10],
    channel_mult=[1, 2, 4],
    transformer_depth_middle=10,
    use_linear_in_transformer=True,
    context_dim=2048,
    num_head_channels=64,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    use_temporal_attention=False,
    use_temporal_resblock=False,
)
SDXL_ADM = 2816  # pooled bigG text (1280) + 6 size/crop embeddings of 256
LATENT = 64  # 512 px
SDXL_LATENT = 128  # 1024 px
BATCH_ORDER = (1, 0)  # uncond then cond, one row each: what KSampler batches at cfg > 1
TEXT_TOKENS = 77


def import_host(device: str = "cpu") -> Pack:
    """Import ComfyUI as a library on `device` and load this pack; returns the pack.

    ComfyUI is told to use PyTorch attention (`--use-pytorch-cross-attention`), the function it
    selects by itself on NVIDIA GPUs; on a CPU it would otherwise pick sub-quadratic attention,
    a chunked fallback nobody samples with.
    """
    import_comfy(cpu=device == "cpu", base_directory=INPROCESS_BASE, use_pytorch_cross_attention=True)
    return load_pack()


def sd15_patcher(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A ModelPatcher of the full SD1.5 BaseModel (860 M parameters), weights seeded in place."""

    def fill(diffusion_model: torch.nn.Module) -> None:
        seed_module(diffusion_model, seed)
        diffusion_model.to(dtype)

    return unet_patcher("SD15", SD15_UNET, dtype, fill)


@torch.no_grad()
def seed_module(module: torch.nn.Module, seed: int) -> None:
    """Fill every float parameter and buffer in place, each from its own seeded generator.

    The variances of tools.fixtures.weights: 1/fan_in for matrices and kernels, unit norm
    weights and zero norm biases, 0.02² for other vectors; so activations stay of order 1
    through the 25 blocks and timings never meet denormals, infinities or NaNs. Uniform, not
    normal, draws: three times faster for 860 M values, and dense kernels do not care.
    """
    modules = dict(module.named_modules())
    for key, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if not tensor.dtype.is_floating_point:
            continue
        owner_name, _, local = key.rpartition(".")
        owner = modules[owner_name]
        if isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)) or "Norm" in type(owner).__name__:
            tensor.fill_(1.0 if local == "weight" else 0.0)
        else:
            std = tensor[0].numel() ** -0.5 if local == "weight" and tensor.ndim >= 2 else 0.02
            bound = std * 3.0**0.5  # U(-b, b) has variance b²/3
            tensor.uniform_(-bound, bound, generator=key_generator(seed, key))


def sdxl_patcher_unfilled():
    """A ModelPatcher of the full SDXL BaseModel (2.6 G parameters) whose weights are allocated but
    never written, so they take address space, not memory: for counting on fake tensors only."""
    return unet_patcher("SDXL", SDXL_UNET, torch.float32)


def flexip_adapter(
    pack: Pack, patcher, gate_mode: str = "output", seed: int = 0, base: str = "sd15", unfilled: bool = False
):
    """A full-size FlexIP adapter (config_for(base), random weights) for the model's layers, as FLEXIP.

    `unfilled`: weights allocated but not written, like `sdxl_patcher_unfilled`."""
    fm = flexip_model
    layers = pack.layer_specs_of(patcher.model.diffusion_model)
    config = dataclasses.replace(fm.config_for(base), layers=layers, gate_mode=gate_mode)
    torch.manual_seed(seed)
    if unfilled:
        with torch.device("meta"):
            adapter = fm.FlexIPAdapter(config)
        adapter = adapter.to_empty(device="cpu")
    else:
        adapter = fm.FlexIPAdapter(config)
    return pack.loaded_flexip.wrap(f"bench_{base}_{gate_mode}.safetensors", adapter)


def ip_adapter_pair(pack: Pack, patcher, seed: int = 0):
    """Compatibility mode's FLEXIP: ip-adapter-plus_sd15 (preservation) and ip-adapter_sd15 (personalization)
    branches with random weights, matched to the model's layers as from files: full size on the full SD1.5
    UNet, the layer widths of the model on another (the tiny UNet)."""
    from tools.fixtures.ip_adapter_files import ip_adapter_shapes

    compat = flexip_model.ip_adapter
    layers = pack.layer_specs_of(patcher.model.diffusion_model)
    widths = tuple(spec.inner_dim for spec in compat.ip_adapter_order(layers))

    def branch(variant: str):
        spec = compat.describe(f"{variant}.safetensors", ip_adapter_shapes(variant, layer_widths=widths))
        compat.match_layers(spec, layers, 768)
        return compat.IPAdapterBranch(spec, layers)

    torch.manual_seed(seed)
    pair = compat.IPAdapterPair(branch("ip-adapter-plus_sd15"), branch("ip-adapter_sd15"), layers)
    return pack.loaded_flexip.wrap("ip-adapter-plus_sd15 + ip-adapter_sd15", pair)


def random_subject(pack: Pack, flexip, seed: int = 0):
    """An EncodedSubject with random tokens in place of FlexIPEncodeSubject's encoder output.

    Rows: subject (cond) and black reference (uncond). For an IP-Adapter pair, both branches'
    tokens (16 and 4 per image for plus and base) are stored with the subject, as
    FlexIPEncodeSubject stores them in compatibility mode.
    """
    config = flexip.config
    generator = torch.Generator().manual_seed(seed)
    if hasattr(config, "preservation_token_count"):
        tokens = {
            "preservation": torch.randn(2, config.preservation_token_count, config.context_dim, generator=generator),
            "clip_embeds": torch.randn(2, config.clip_embed_dim, generator=generator),
        }
    else:
        tokens = {
            "preservation": torch.randn(2, config.preservation.tokens, config.context_dim, generator=generator),
            "personalization": torch.randn(2, config.personalization.tokens, config.context_dim, generator=generator),
        }
    return pack.encoded_subject(flexip, SubjectTokens(tokens), image_count=1)


def apply_flexip(pack: Pack, patcher, flexip, subject, preservation: float, strength: float = 1.0):
    """FlexIPApply.apply, the node's own code path: a patched clone of `patcher`."""
    node = pack.apply_node()
    (patched,) = node.apply(patcher, flexip, subject, strength, preservation, 0.0, 1.0)
    return patched


@dataclass
class StepInputs:
    """One sampler step's batch: latent [2, 4, h, w], sigma per chunk, text context [2, 77, d],
    and for SDXL the ADM vector y [2, 2816]."""

    x: torch.Tensor
    sigma: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor | None = None
    order: tuple[int, ...] = BATCH_ORDER
    uuids: tuple[str, ...] = ("bench-uncond", "bench-cond")

    @classmethod
    def make(
        cls,
        latent: int = LATENT,
        seed: int = 0,
        device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
        sdxl: bool = False,
    ):
        generator = torch.Generator().manual_seed(seed)
        rows = len(BATCH_ORDER)
        x = torch.randn(rows, 4, latent, latent, generator=generator)
        context = torch.randn(rows, TEXT_TOKENS, context_dim_for("sdxl" if sdxl else "sd15"), generator=generator)
        y = torch.randn(rows, SDXL_ADM, generator=generator).to(device, dtype) if sdxl else None
        return cls(x.to(device, dtype), torch.tensor([5.0], device=device), context.to(device, dtype), y)


def transformer_options(patcher, inputs: StepInputs) -> dict:
    """What comfy.samplers._calc_cond_batch hands the model: the patcher's options, its wrappers, the batch layout."""
    options = copy.copy(patcher.model_options["transformer_options"])
    options["wrappers"] = merge_wrappers(copy.copy(options.get("wrappers", {})), patcher.wrappers, copy_wrappers=False)
    options["cond_or_uncond"] = list(inputs.order)
    options["uuids"] = list(inputs.uuids)
    options["sigmas"] = inputs.sigma
    return options


def model_step(patcher, inputs: StepInputs) -> torch.Tensor:
    """One denoiser call of a sampling step (cond+uncond batched): BaseModel.apply_model."""
    sigmas = inputs.sigma.repeat(inputs.x.shape[0])
    extra = {} if inputs.y is None else {"y": inputs.y}
    return patcher.model.apply_model(
        inputs.x, sigmas, c_crossattn=inputs.context, transformer_options=transformer_options(patcher, inputs), **extra
    )


def flexip_states(patcher) -> set:
    """The FlexIPPatch objects installed on a patched model, chained ones included (several Apply FlexIP
    nodes on one model), to inspect or clear their run cache."""
    replace = patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    states = set()
    for patch in replace.values():
        while hasattr(patch, "state"):  # a layer patch chains the one it replaced
            states.add(patch.state)
            patch = patch.previous
    return states


def adapter_patchers(patched_models) -> list:
    """The ModelPatchers of the adapters FlexIP patches on `patched_models` use (once each)."""
    patchers = {
        id(state.flexip.patcher): state.flexip.patcher for patched in patched_models for state in flexip_states(patched)
    }
    return list(patchers.values())


def end_run(patcher) -> None:
    """What the end of a sampling run does to FlexIP (outer_sample_wrapper): drop the per-run K/V cache."""
    for state in flexip_states(patcher):
        state.outer_sample_wrapper(lambda: None)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
