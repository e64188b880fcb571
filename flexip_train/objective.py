"""The training objective: per-sample γ, condition dropout, noise, and the base model's own loss.

The loss is the MSE of the UNet's raw prediction against its target in the model's own
parameterisation (ε for SD1.5, v for v-prediction models), computed through ComfyUI's
`model_sampling` so that whatever the checkpoint's prediction type is, it is respected.
The UNet's conditioning inputs come from the model's own `extra_conds` (SDXL: the pooled text
embedding and each target's original-size and crop embeddings as the `y` vector), as in
ComfyUI's sampler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from flexip_host.model_options import merge_wrappers
from flexip_host.sampling import stack_contexts

from .config import DataConfig
from .features import Features, NullConditions


@dataclass(frozen=True)
class ModelInputs:
    """One micro-batch ready for the model: clean latents, conditions, γ, noise and σ."""

    latents: torch.Tensor  # [B, 4, h, w]
    context: torch.Tensor  # [B, L, d]
    clip: torch.Tensor  # [B, C]
    dino: torch.Tensor  # [B, T, D]
    gates: torch.Tensor  # [B]
    noise: torch.Tensor  # [B, 4, h, w]
    sigmas: torch.Tensor  # [B]
    pooled: torch.Tensor | None = None  # [B, P] pooled text embeddings; required by SDXL
    sizes: torch.Tensor | None = None  # [B, 4] original height, width, crop top, left of each target (SDXL)

    def to(self, device: torch.device) -> ModelInputs:
        def move(name: str) -> torch.Tensor | None:
            tensor = getattr(self, name)
            if tensor is None or name == "sizes":  # sizes are plain numbers for the size embedder: stay on the CPU
                return tensor
            return tensor.to(device, non_blocking=True)

        return ModelInputs(*(move(name) for name in self.__dataclass_fields__))


def gate_ranges(data: DataConfig, kinds: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high γ per sample from its kind: invariant pairs lock identity, variant pairs allow editing."""
    ranges = [data.invariant_gate if kind == "invariant" else data.variant_gate for kind in kinds]
    return torch.tensor([r[0] for r in ranges]), torch.tensor([r[1] for r in ranges])


def training_inputs(
    features: Features, null: NullConditions, data: DataConfig, sampling, generator: torch.Generator
) -> ModelInputs:
    """Draw γ, the dropout, the timesteps and the noise of one micro-batch from `generator` (CPU)."""
    batch = len(features.indices)
    low, high = gate_ranges(data, features.kinds)
    gates = low + (high - low) * torch.rand(batch, generator=generator)
    # condition dropout: text only, image only, or both, so the model also learns each alone
    draw = torch.rand(batch, generator=generator)
    text_off = draw < data.text_dropout
    image_off = (draw >= data.text_dropout) & (draw < data.text_dropout + data.image_dropout)
    both_off = (draw >= data.text_dropout + data.image_dropout) & (
        draw < data.text_dropout + data.image_dropout + data.both_dropout
    )
    text_off, image_off = text_off | both_off, image_off | both_off
    contexts = [null.context if off else context for context, off in zip(features.contexts, text_off.tolist())]
    pooled = torch.where(text_off[:, None], null.pooled[None], features.pooled)
    clip = torch.where(image_off[:, None], null.clip[None], features.clip)
    dino = torch.where(image_off[:, None, None], null.dino[None], features.dino)
    steps = torch.randint(len(sampling.sigmas), (batch,), generator=generator)
    noise = torch.randn(features.latents.shape, generator=generator)
    return ModelInputs(
        features.latents,
        stack_contexts(contexts),
        clip,
        dino,
        gates,
        noise,
        sampling.sigmas.cpu()[steps],
        pooled,
        features.sizes,
    )


def evaluation_inputs(features: Features, data: DataConfig, sampling, seed: int, timesteps: int) -> list[ModelInputs]:
    """The fixed evaluation batches of `features`: the same noise and `timesteps` spread over the schedule
    for every pair and every evaluation, γ at the middle of the kind's range, no dropout."""
    generator = torch.Generator().manual_seed(seed)
    shape = features.latents.shape[1:]
    noises = torch.randn((timesteps, *tuple(shape)), generator=generator)
    count = len(sampling.sigmas)
    steps = torch.linspace(0, count - 1, timesteps + 2)[1:-1].round().long()  # skip the two extremes
    low, high = gate_ranges(data, features.kinds)
    context, gates = stack_contexts(list(features.contexts)), (low + high) / 2
    batch, sigmas = len(features.indices), sampling.sigmas.cpu()
    return [
        ModelInputs(
            features.latents,
            context,
            features.clip,
            features.dino,
            gates,
            noises[i].expand(batch, *shape).clone(),
            sigmas[steps[i]].repeat(batch),
            features.pooled,
            features.sizes,
        )
        for i in range(timesteps)
    ]


def prediction_error(sampling, sigmas: torch.Tensor, denoised: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE [B] of the raw model output against its target, from ComfyUI's denoised estimate.

    `calculate_denoised` is affine in the model output, denoised = a + b·output, and the target
    output is the one whose denoised estimate is the clean latent; so output − target =
    (denoised − latent) / b, with b read off the model's own parameterisation (−σ for ε).
    """
    ones = torch.ones((latents.shape[0],) + (1,) * (latents.ndim - 1), device=latents.device)
    zeros = torch.zeros_like(ones)
    slope = sampling.calculate_denoised(sigmas, ones, zeros) - sampling.calculate_denoised(sigmas, zeros, zeros)
    return ((denoised.float() - latents.float()) / slope).pow(2).mean(dim=tuple(range(1, latents.ndim)))


def model_conditions(model, inputs: ModelInputs) -> dict[str, torch.Tensor]:
    """The UNet's condition inputs (c_crossattn; for SDXL also y), made by the model's own `extra_conds`.

    SDXL's size conditioning, as SDXL itself was trained: each target's original size and crop
    offset (`inputs.sizes`), the target size its pixel size. Without sizes, an uncropped image of
    the training size, which is what ComfyUI's sampler passes when it generates.
    """
    height, width = (8 * side for side in inputs.latents.shape[-2:])  # the VAE's factor

    def build(rows: slice, original_height: float, original_width: float, top: float, left: float) -> dict:
        conds = model.extra_conds(
            cross_attn=inputs.context[rows],
            pooled_output=None if inputs.pooled is None else inputs.pooled[rows],
            device=inputs.latents.device,
            width=original_width,
            height=original_height,
            crop_w=left,
            crop_h=top,
            target_width=width,
            target_height=height,
        )
        return {name: cond.cond for name, cond in conds.items()}

    conditions = build(slice(None), height, width, 0, 0)
    if inputs.sizes is None or "y" not in conditions:
        return conditions
    # y is the only size-dependent input; the model's embedder takes one size per call
    conditions["y"] = torch.cat([build(slice(i, i + 1), *row)["y"] for i, row in enumerate(inputs.sizes.tolist())])
    return conditions


def sampler_transformer_options(model) -> dict:
    """The transformer options ComfyUI's sampler hands a ModelPatcher's model: its own, with the
    patcher's wrappers merged in (as comfy.sampler_helpers.prepare_model_patcher does)."""
    options = dict(model.model_options["transformer_options"])
    options["wrappers"] = merge_wrappers(options.get("wrappers", {}), model.wrappers)
    return options


class DenoisingLoss(torch.nn.Module):
    """The training forward: noise the latents, run the patched UNet, return the mean prediction error.

    The adapter is the only submodule (what DDP synchronises); the frozen UNet is held outside
    the module tree.
    """

    def __init__(self, adapter: torch.nn.Module, model, inputs_key: str, autocast_dtype) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = model  # a ModelPatcher (not a Module): the frozen, patched UNet
        self.inputs_key = inputs_key
        self.autocast_dtype = autocast_dtype
        self.transformer_options = sampler_transformer_options(model)

    def per_sample(self, inputs: ModelInputs) -> torch.Tensor:
        from .training_patch import subject_inputs

        base = self.model.model
        sampling = base.model_sampling
        noisy = sampling.noise_scaling(inputs.sigmas, inputs.noise, inputs.latents)
        options = dict(self.transformer_options)
        options.update(
            sigmas=inputs.sigmas,
            cond_or_uncond=[0],
            **{self.inputs_key: subject_inputs(inputs.clip, inputs.dino, inputs.gates)},
        )
        conditions = model_conditions(base, inputs)
        autocast = (
            contextlib.nullcontext()
            if self.autocast_dtype is None
            else torch.autocast(inputs.latents.device.type, dtype=self.autocast_dtype)
        )
        with autocast:
            denoised = base.apply_model(noisy, inputs.sigmas, transformer_options=options, **conditions)
        return prediction_error(sampling, inputs.sigmas, denoised, inputs.latents)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        return self.per_sample(inputs).mean()
