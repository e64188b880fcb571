"""The training side of the model patch: the pack's own patch, with K/V per model call and gradients.

Inference (`nodes.patch.FlexIPPatch`) builds the adapter K/V once per sampling run, without
gradients, from one encoded subject. Training needs them rebuilt on every model call, with
gradients, from each sample's own reference and γ: the pack's `CallSubjectsPatch` does that
through the same adapter contract and `install()`, so every attn2 call runs the pack's
`LayerPatch` and `gated_attention`, the code users sample with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.utils.checkpoint

from flexip_host.comfy_models import checkpointable_blocks, pinned_patcher
from flexip_host.loaded_pack import Pack
from flexip_model.adapter import FlexIPAdapter
from flexip_model.subject import CallSubjects
from flexip_model.vocabulary import DINO_FEATURES, IMAGE_EMBEDS

TRAINING_INPUTS = "flexip_training_inputs"  # transformer_options key of the per-call CallSubjects


def subject_inputs(clip: torch.Tensor, dino: torch.Tensor, gates: torch.Tensor) -> CallSubjects:
    """Per model call: each sample's CLIP [CLS] [B, C], DINOv2 tokens [B, T, D] and gate γ [B] in [0, 1]."""
    return CallSubjects({IMAGE_EMBEDS: clip, DINO_FEATURES: dino}, gates)


def install_training_patch(pack: Pack, unet, adapter: FlexIPAdapter, device: torch.device):
    """A clone of the UNet ModelPatcher with the training patch on every attn2 layer of the adapter."""
    # the trainer places the adapter itself; load and offload device both being the training
    # device keeps ComfyUI's model management from moving it
    patcher = pinned_patcher(adapter, device)
    flexip = pack.loaded_flexip("the trained adapter", adapter, patcher)
    model = unet.clone()
    state = pack.call_subjects_patch(flexip, pack.matching_layers(model, flexip), TRAINING_INPUTS)
    pack.install_patch(model, state)
    return model, state


def enable_gradient_checkpointing(diffusion_model: torch.nn.Module) -> int:
    """Recompute each transformer block and ResBlock in the backward pass instead of storing activations.

    Returns the number of blocks wrapped. Only the trainer's own loaded model is touched.
    """
    count = 0
    for module in checkpointable_blocks(diffusion_model):
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
