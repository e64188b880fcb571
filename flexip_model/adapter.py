"""FlexIPAdapter: both adapters plus the per-layer projections, the unit a checkpoint holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .attention import BranchKV, LayerKV, join_branches
from .blocks import PerceiverBlock, PersonalizationBlock
from .config import FlexIPConfig, LayerSpec
from .layer_projections import LayerProjections
from .personalization import PersonalizationAdapter
from .preservation import PreservationAdapter
from .subject import FeatureNeed, ImageFeatures, SubjectTokens, subject_rows
from .vocabulary import DINO_FEATURES, IMAGE_EMBEDS, TOKEN_MODE


class FlexIPAdapter(nn.Module):
    """Everything FlexIP trains; the UNet, VAE, text and image encoders stay frozen outside it.

    Implements `SubjectAdapter`: the subject keeps its preservation tokens and CLIP [CLS]; the
    personalization tokens read the text, so `run_kv` makes them per run from the context.
    """

    def __init__(self, config: FlexIPConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.preservation = PreservationAdapter(config)
        self.personalization = PersonalizationAdapter(config)
        self.layers = LayerProjections(config)

    @classmethod
    def from_config(cls, config: FlexIPConfig) -> FlexIPAdapter:
        """A randomly initialised adapter of the sizes in `config`."""
        return cls(config)

    def preservation_tokens(self, clip_embeds: Tensor, dino_tokens: Tensor) -> Tensor:
        """CLIP [CLS] [B, C] and DINOv2 tokens [B, T, Dd] -> T_pres [B, Tp, d]."""
        return self.preservation(clip_embeds, dino_tokens)

    def personalization_tokens(self, context: Tensor, clip_embeds: Tensor) -> Tensor:
        """Text context [B, L, d] and CLIP [CLS] [B, C] -> Y [B, L, d]."""
        return self.personalization(context, clip_embeds)

    @property
    def image_features(self) -> ImageFeatures:
        """CLIP [CLS] and DINOv2 tokens of each reference; uncond is a black reference through both."""
        config = self.config
        return ImageFeatures(
            (FeatureNeed(IMAGE_EMBEDS, config.clip_embed_dim), FeatureNeed(DINO_FEATURES, config.dino_dim)),
            "black",
            config.dino_resolution,
        )

    def reference_tokens(self, features: Mapping[str, Tensor]) -> SubjectTokens:
        """Preservation tokens [B, Tp, d] and the CLIP [CLS] [B, C] of each image, in the adapter's dtype."""
        param = next(self.parameters())
        clip = features[IMAGE_EMBEDS].to(param)
        return SubjectTokens(
            {"preservation": self.preservation_tokens(clip, features[DINO_FEATURES].to(param)), "clip_embeds": clip}
        )

    def encode_subject(
        self, references: Mapping[str, Tensor], uncond: Mapping[str, Tensor], batch_mode: str
    ) -> SubjectTokens:
        """Rows subject, uncond: preservation tokens [2, Tp', d] and the CLIP [CLS] [2, C] in float32."""
        features = {name: torch.cat([references[name], uncond[name]]) for name in self.image_features.names}
        tokens = self.reference_tokens(features)
        # the CLIP [CLS] is averaged in float32, before any cast to the adapter's dtype
        return SubjectTokens(
            {
                "preservation": subject_rows(tokens["preservation"], batch_mode),
                "clip_embeds": subject_rows(features[IMAGE_EMBEDS].float(), batch_mode),
            }
        )

    def run_kv(
        self, subject: SubjectTokens, context: Tensor, pick: Tensor, layers: Sequence[str]
    ) -> tuple[LayerKV, ...]:
        """K/V of `layers` for a batch; personalization tokens from the text `context` [B, L, d]."""
        param = next(self.parameters())
        rows = subject.to(param.device, param.dtype).pick(pick)
        personalization = self.personalization_tokens(context.to(param.device, param.dtype), rows["clip_embeds"])
        return tuple(self.layer_kv(key, rows["preservation"], personalization) for key in layers)

    def layer_kv(self, key: str, preservation_tokens: Tensor | None, personalization_tokens: Tensor | None) -> LayerKV:
        """Head-split K/V [B, H, T, dh] of layer `key` for both branches (None where tokens are None).

        Call once per run or model call, never per layer call: the tokens do not depend on the step.
        """
        heads = self.config.layer(key).heads
        token_mode = self.config.gate_mode == TOKEN_MODE

        def project(branch: str, tokens: Tensor | None) -> BranchKV | None:
            return None if tokens is None else self.layers.projection(key, branch).branch_kv(tokens, heads)

        kv = LayerKV(
            preservation=project("joint" if token_mode else "pres", preservation_tokens),
            personalization=project("joint" if token_mode else "pers", personalization_tokens),
        )
        return join_branches(kv) if token_mode else kv


def parameter_counts(config: FlexIPConfig) -> dict[str, int]:
    """Parameters per part (preservation, personalization, layers) and in total, counted without allocating."""
    with torch.device("meta"):
        adapter = FlexIPAdapter(config)
    counts = {
        name: sum(p.numel() for p in getattr(adapter, name).parameters())
        for name in ("preservation", "personalization", "layers")
    }
    counts["total"] = sum(counts.values())
    return counts


def tensor_count(config: FlexIPConfig) -> int:
    """How many tensors a checkpoint of `config` holds, from modules of width 1: the count of an
    untrusted file's config is checked against its header before anything of its sizes is built."""
    unit = dataclasses.replace(
        config,
        context_dim=1,
        clip_embed_dim=1,
        dino_dim=1,
        preservation_width=1,
        preservation_heads=1,
        personalization_heads=1,
        num_queries=1,
        cls_tokens=1,
        personalization_kv_tokens=1,
        ffn_mult=1,
    )
    shell = dataclasses.replace(unit, query_depth=0, cls_depth=0, personalization_depth=0, layers=())
    with torch.device("meta"):
        fixed = len(PreservationAdapter(shell).state_dict()) + len(PersonalizationAdapter(shell).state_dict())
        perceiver = len(PerceiverBlock(1, 1, 1).state_dict())
        personalization = len(PersonalizationBlock(1, 1, 1).state_dict())
        layer = len(LayerProjections(dataclasses.replace(shell, layers=(LayerSpec("input_1_0", 1, 1),))).state_dict())
    return (
        fixed
        + perceiver * (config.query_depth + config.cls_depth)
        + personalization * config.personalization_depth
        + layer * len(config.layers)
    )
