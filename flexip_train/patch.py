"""The training side of the model patch: same layer patches as inference, K/V with gradients.

Inference (`nodes.patch.FlexIPPatch`) builds the adapter K/V once per sampling run, without
gradients, from one encoded subject. Training needs them rebuilt on every model call, with
gradients, from each sample's own reference and γ. `TrainingPatch` does exactly that and
nothing else: it is installed with the pack's own `install()`, so every attn2 call runs the
pack's `LayerPatch` and `gated_attention`, the code users sample with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.utils.checkpoint

from flexip_model.adapter import FlexIPAdapter
from flexip_model.attention import BranchKV, LayerKV, join_branches
from flexip_model.config import LayerSpec

from .host import Pack

TRAINING_INPUTS = "flexip_training_inputs"  # transformer_options key of the per-call SubjectInputs


@dataclass(frozen=True)
class SubjectInputs:
    """Per model call: each sample's reference features and gate γ (paper symbol) in [0, 1]."""

    clip_embeds: torch.Tensor  # [B, C]
    dino_tokens: torch.Tensor  # [B, T, D]
    gates: torch.Tensor  # [B]


class TrainingPatch:
    """The state object `LayerPatch` reads (options_key, flexip, models, to), built per call with grad.

    Strength s is 1; γ is a [B] tensor, so both branches run for every sample (a per-item
    gate is never read on the host). A model call without SubjectInputs runs the base model.
    """

    def __init__(self, pack: Pack, flexip, layers: tuple[LayerSpec, ...]) -> None:
        self.flexip = flexip  # a LoadedFlexIP around the trained adapter
        self.adapter: FlexIPAdapter = flexip.adapter
        self.layers = layers
        self.options_key = f"flexip_train_{id(self)}"
        self._call_state = pack.nodes.patch.CallState

    def models(self) -> list:
        return []

    def to(self, device_or_dtype: Any) -> TrainingPatch:
        return self

    def __deepcopy__(self, memo: dict) -> TrainingPatch:
        return self

    def outer_sample_wrapper(self, executor: Callable, *args, **kwargs):
        return executor(*args, **kwargs)

    def diffusion_model_wrapper(self, executor: Callable, x: torch.Tensor, timesteps, context: torch.Tensor,
                                y=None, control=None, transformer_options: dict = {}, **kwargs):
        inputs: Optional[SubjectInputs] = transformer_options.get(TRAINING_INPUTS)
        options = dict(transformer_options)
        if inputs is not None:
            options[self.options_key] = self.call_state(inputs, context)
        return executor(x, timesteps, context, y, control, options, **kwargs)

    def call_state(self, inputs: SubjectInputs, context: torch.Tensor):
        """Preservation tokens, personalization tokens and every layer's K/V, with gradients."""
        adapter = self.adapter
        dtype = next(adapter.parameters()).dtype
        clip = inputs.clip_embeds.to(context.device, dtype)
        preservation = adapter.preservation_tokens(clip, inputs.dino_tokens.to(context.device, dtype))
        personalization = adapter.personalization_tokens(context.to(dtype), clip)
        token_mode = adapter.config.gate_mode == "token"
        kv = []
        for spec in self.layers:
            layer = adapter.layer_kv(spec.key, preservation, personalization)
            # K/V in the UNet's compute dtype, as inference does
            layer = LayerKV(_cast(layer.preservation, context.dtype), _cast(layer.personalization, context.dtype))
            kv.append(join_branches(layer) if token_mode else layer)
        gates = inputs.gates.to(context.device, context.dtype)
        return self._call_state(kv=tuple(kv), gates=(gates,) * len(self.layers), strength=1.0, mask=None)


def _cast(branch: Optional[BranchKV], dtype: torch.dtype) -> Optional[BranchKV]:
    return None if branch is None else BranchKV(branch.key.to(dtype), branch.value.to(dtype))


def install_training_patch(pack: Pack, unet, adapter: FlexIPAdapter, device: torch.device):
    """A clone of the UNet ModelPatcher with the training patch on every attn2 layer of the adapter."""
    import comfy.model_patcher

    # the trainer places the adapter itself; load and offload device both being the training
    # device keeps ComfyUI's model management from moving it
    patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=device, offload_device=device)
    flexip = pack.nodes.bundles.LoadedFlexIP("the trained adapter", adapter, patcher)
    model = unet.clone()
    state = TrainingPatch(pack, flexip, pack.nodes.apply._matching_layers(model, flexip))
    pack.nodes.patch.install(model, state)
    return model, state


def enable_gradient_checkpointing(diffusion_model: torch.nn.Module) -> int:
    """Recompute each transformer block and ResBlock in the backward pass instead of storing activations.

    Returns the number of blocks wrapped. Only the trainer's own loaded model is touched.
    """
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock, TimestepEmbedSequential

    count = 0
    for module in diffusion_model.modules():
        if isinstance(module, BasicTransformerBlock) or (
                isinstance(module, TimestepBlock) and not isinstance(module, TimestepEmbedSequential)):
            module.forward = _checkpointed(module.forward)
            count += 1
    return count


def _checkpointed(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if "transformer_options" in kwargs:
            # the UNet rewrites this dict (block, block_index) as it walks its blocks; the
            # recomputation must see this block's view, or it would patch the wrong layer
            kwargs["transformer_options"] = dict(kwargs["transformer_options"])
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run
