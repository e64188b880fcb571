"""Compatibility mode (design §6): a pair of public IP-Adapter files as FlexIP's two branches.

Not trained FlexIP: the weights are IP-Adapter's, the FlexIP gate blends them. The pair is a
`FLEXIP` for the usual FlexIPEncodeSubject / FlexIPGateSchedule / FlexIPApply nodes.
"""

from __future__ import annotations

import logging

import torch

import comfy.model_management
import folder_paths

from flexip_model.ip_adapter import IPAdapterPair, load_pair
from .bundles import EncodedSubject, LoadedFlexIP
from .encoders import check_width, clip_vision_model, encode_each
from .folders import model_file
from .layers import context_dim_of, layer_specs_of

logger = logging.getLogger(__name__)


class FlexIPAdapterPairLoader:
    DISPLAY_NAME = "Load IP-Adapter Pair (FlexIP compatibility mode)"
    DESCRIPTION = (
        "Compatibility mode over IP-Adapter weights, not trained FlexIP: loads two public IP-Adapter files "
        "from models/ipadapter as the preservation and personalization branches, and the FlexIP gate blends "
        "them. γ = 1 is plain IP-Adapter with the preservation file, γ = 0 with the personalization file. "
        "FlexIP Encode Subject needs only CLIP ViT-H/14 here (no DINOv2).")
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("FLEXIP",)
    RETURN_NAMES = ("flexip",)
    OUTPUT_TOOLTIPS = ("Both IP-Adapter files as one FLEXIP, for FlexIPEncodeSubject and FlexIPApply.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        files = folder_paths.get_filename_list("ipadapter")
        return {"required": {
            "model": ("MODEL", {"tooltip": (
                "The model to patch later: the files' layers are matched to its cross-attention layers here.")}),
            "preservation": (files, {"tooltip": (
                "IP-Adapter file for identity, weighted by γ (e.g. ip-adapter-plus_sd15 or ip-adapter-plus-face_sd15).")}),
            "personalization": (files, {"tooltip": (
                "IP-Adapter file for editability, weighted by 1 − γ (e.g. ip-adapter_sd15 or ip-adapter_sd15_light).")}),
        }}

    def load(self, model, preservation: str, personalization: str) -> tuple[LoadedFlexIP]:
        preservation_file = model_file("ipadapter", preservation, "FlexIPAdapterPairLoader's preservation")
        personalization_file = model_file("ipadapter", personalization, "FlexIPAdapterPairLoader's personalization")
        diffusion_model = model.get_model_object("diffusion_model")
        pair = load_pair(preservation_file, personalization_file,
                         layer_specs_of(diffusion_model), context_dim_of(diffusion_model))
        logger.info("FlexIP compatibility mode: preservation %s, personalization %s, %d layers.",
                    pair.preservation.spec.describe(), pair.personalization.spec.describe(), len(pair.config.layers))
        return (LoadedFlexIP.wrap(f"{preservation} + {personalization}", pair),)


def check_pair_encoder(clip_vision, pair: IPAdapterPair) -> None:
    """`clip_vision` must give each file the CLIP features it was trained on, at their width."""
    model = clip_vision_model(
        clip_vision, "FlexIPEncodeSubject's clip_vision input",
        "load CLIP ViT-H/14 (the file IP-Adapter uses) with Load CLIP Vision and connect it there")
    hidden = model.vision_model.post_layernorm.weight.shape[0]
    projection = getattr(model.visual_projection, "out_features", hidden)
    for branch in pair.branches:
        spec = branch.spec
        given = projection if spec.feature == "image_embeds" else hidden
        other = " or use the _vit-h version of this IP-Adapter" if "bigG" in spec.encoder else ""
        check_width("FlexIPEncodeSubject's clip_vision", spec.feature, given, spec.name, spec.feature_dim,
                    f"load {spec.encoder} in Load CLIP Vision{other}")


@torch.no_grad()
def neutral_hidden_states(clip_vision) -> torch.Tensor:
    """Penultimate hidden states [1, N, C] of an all-zero normalised pixel input.

    IP-Adapter-plus was trained to read this as "no image" (its image drop is zeros after CLIP's
    normalisation, a mean-grey picture), so it makes the unconditional tokens of plus files.
    """
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    size = clip_vision.image_size
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    hidden = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[1]
    return hidden.to(comfy.model_management.intermediate_device())


def _subject_rows(tokens: torch.Tensor, batch_mode: str) -> torch.Tensor:
    """[N + 1, T, d] (N references, then uncond) -> [2, T', d]: the subject row, then uncond."""
    subject, uncond = tokens[:-1], tokens[-1:]
    if batch_mode == "average":
        return torch.cat([subject.mean(dim=0, keepdim=True), uncond])
    # concat: one longer token list; the uncond row repeats so both rows stack
    return torch.cat([subject.reshape(1, -1, subject.shape[-1]), uncond.repeat(1, subject.shape[0], 1)])


def encode_pair_subject(flexip: LoadedFlexIP, clip_vision, references: torch.Tensor, batch_mode: str) -> EncodedSubject:
    """FlexIPEncodeSubject in compatibility mode: each file's own tokens from CLIP alone.

    `references` is IMAGE [N, H, W, 3] (already masked). Both token sets are text-independent,
    so the personalization tokens are stored with the subject instead of being made per run.
    """
    pair: IPAdapterPair = flexip.adapter
    check_pair_encoder(clip_vision, pair)

    def clip_features(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = clip_vision.encode_image(image, crop=True)
        return output["image_embeds"], output["penultimate_hidden_states"]

    image_embeds, hidden = encode_each(references, clip_features)
    features = {"image_embeds": image_embeds, "penultimate_hidden_states": hidden}
    neutral = {"penultimate_hidden_states": neutral_hidden_states(clip_vision)} if pair.needs_neutral_image else None
    adapter = flexip.loaded()
    param = next(adapter.parameters())

    def to_adapter(tensors):
        return None if tensors is None else {name: t.to(param) for name, t in tensors.items()}

    with torch.no_grad():
        preservation, personalization = adapter.subject_tokens(to_adapter(features), to_adapter(neutral))
    device = comfy.model_management.intermediate_device()
    embeds = image_embeds.to(device).float()
    return EncodedSubject(
        flexip,
        _subject_rows(preservation, batch_mode).to(device),
        torch.cat([embeds.mean(dim=0, keepdim=True), torch.zeros_like(embeds[:1])]),
        len(references),
        personalization_tokens=_subject_rows(personalization, batch_mode).to(device),
    )
