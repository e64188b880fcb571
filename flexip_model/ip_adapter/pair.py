"""Compatibility mode: two public IP-Adapter files as FlexIP's two branches under one gate.

Each file keeps its own image projection and its own per-layer K/V projections, so the
layer equation is FlexIP's output mode (docs/design.md §2):
    Z = Attn(Q, K_t, V_t) + s·(γ·Attn(Q, K_pres, V_pres) + (1−γ)·Attn(Q, K_pers, V_pers))
With γ = 1 this is exactly IP-Adapter's decoupled cross-attention with the preservation
file at weight s (γ = 0: the personalization file). The personalization branch reads the
reference image only (no text): its tokens come from its own image projection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from ..attention import BranchKV, LayerKV
from ..config import LayerLookup, LayerSpec
from ..errors import FlexIPError
from ..layer_projections import KVProjection
from ..subject import FeatureNeed, ImageFeatures, SubjectTokens, subject_rows
from ..vocabulary import IMAGE_EMBEDS, OUTPUT_MODE
from .variants import IPAdapterSpec


@dataclass(frozen=True)
class IPAdapterPairConfig(LayerLookup):
    """What the FlexIP nodes read from an adapter config, for a pair of IP-Adapter files.

    `layers` are the model's attn2 layers (keys, widths, heads) the files were matched to.
    """

    preservation: IPAdapterSpec
    personalization: IPAdapterSpec
    layers: tuple[LayerSpec, ...]
    gate_mode: str = OUTPUT_MODE  # each file keeps its own K/V projections: the gate blends outputs
    _what = "IP-Adapter pair"

    @property
    def context_dim(self) -> int:
        return self.preservation.context_dim

    @property
    def base(self) -> str:
        return self.preservation.base


class IPAdapterBranch(nn.Module):
    """One IP-Adapter file: its image projection and its to_k_ip/to_v_ip per model layer.

    State-dict names: `image_proj.*` as in the file, `layers.<layer key>.{to_k,to_v}.weight`.
    """

    def __init__(self, spec: IPAdapterSpec, layers: tuple[LayerSpec, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.image_proj = spec.image_projection()
        self.layers = nn.ModuleDict({layer.key: KVProjection(spec.context_dim, layer.inner_dim) for layer in layers})

    @property
    def feature(self) -> str:
        """The CLIP output this file was trained on: `image_embeds` or `penultimate_hidden_states`."""
        return self.spec.feature

    def tokens(self, features: Tensor) -> Tensor:
        """CLIP features ([B, C] embeds or [B, N, C] hidden states) -> image prompt tokens [B, T, d]."""
        return self.image_proj(features)

    def subject_tokens(self, features: Mapping[str, Tensor], neutral: Mapping[str, Tensor] | None = None) -> Tensor:
        """Tokens [N + 1, T, d] of N references plus, last, the unconditional row.

        The unconditional row follows the file's training: base/light files dropped the image
        as zeros of `image_embeds`, plus and full-face files as the hidden states of an
        all-zero (normalised) pixel input, which `neutral` must hold for them.
        """
        cond = features[self.feature]
        if self.feature == IMAGE_EMBEDS:
            uncond = torch.zeros_like(cond[:1])
        else:
            if neutral is None or self.feature not in neutral:
                raise FlexIPError(
                    f"{self.spec.name} needs the hidden states of the neutral (zero) image for its unconditional "
                    "tokens: pass them as `neutral`."
                )
            uncond = neutral[self.feature].to(cond)
        return self.tokens(torch.cat([cond, uncond]))

    def kv(self, key: str, tokens: Tensor, heads: int) -> BranchKV:
        """Head-split K/V [B, H, T, dh] of layer `key` for `tokens` [B, T, d]."""
        # torch types a ModuleDict's items as plain Modules; __init__ put a KVProjection at each key
        return cast(KVProjection, self.layers[key]).branch_kv(tokens, heads)


class IPAdapterPair(nn.Module):
    """The FLEXIP adapter of compatibility mode: preservation and personalization IP-Adapter files.

    Implements `SubjectAdapter`. Both branches read the reference image only, so the subject
    keeps both token sets and `run_kv` ignores the text context.
    """

    def __init__(
        self, preservation: IPAdapterBranch, personalization: IPAdapterBranch, layers: tuple[LayerSpec, ...]
    ) -> None:
        super().__init__()
        if preservation.spec.context_dim != personalization.spec.context_dim:
            raise FlexIPError(
                f"{preservation.spec.name} is for context {preservation.spec.context_dim} but "
                f"{personalization.spec.name} for context {personalization.spec.context_dim}: "
                "pick two IP-Adapter files of the same base model (both SD1.5 or both SDXL)."
            )
        self.preservation = preservation
        self.personalization = personalization
        self.config = IPAdapterPairConfig(preservation.spec, personalization.spec, tuple(layers))

    @property
    def branches(self) -> tuple[IPAdapterBranch, IPAdapterBranch]:
        return self.preservation, self.personalization

    @property
    def needs_neutral_image(self) -> bool:
        """Whether a branch takes its unconditional tokens from the neutral image's hidden states."""
        return any(branch.feature != IMAGE_EMBEDS for branch in self.branches)

    @property
    def image_features(self) -> ImageFeatures:
        """The CLIP output each file was trained on; no DINOv2. Base files make their own uncond (zeros)."""
        needs = tuple(
            FeatureNeed(
                branch.feature,
                branch.spec.feature_dim,
                branch.spec.name,
                " or use the _vit-h version of this IP-Adapter" if "bigG" in branch.spec.encoder else "",
            )
            for branch in self.branches
        )
        return ImageFeatures(needs, "neutral" if self.needs_neutral_image else None)

    def reference_tokens(self, features: Mapping[str, Tensor]) -> SubjectTokens:
        """Each file's tokens [B, T, d] of each image's CLIP features, in the adapter's dtype."""
        param = next(self.parameters())
        return SubjectTokens(
            {
                name: branch.tokens(features[branch.feature].to(param))
                for name, branch in zip(("preservation", "personalization"), self.branches)
            }
        )

    def encode_subject(
        self, references: Mapping[str, Tensor], uncond: Mapping[str, Tensor], batch_mode: str
    ) -> SubjectTokens:
        """Rows subject, uncond of both files' tokens; `uncond` holds the neutral hidden states if needed."""
        param = next(self.parameters())
        features = {name: tensor.to(param) for name, tensor in references.items()}
        neutral = {name: tensor.to(param) for name, tensor in uncond.items()}
        return SubjectTokens(
            {
                name: subject_rows(branch.subject_tokens(features, neutral), batch_mode)
                for name, branch in zip(("preservation", "personalization"), self.branches)
            }
        )

    def run_kv(
        self, subject: SubjectTokens, context: Tensor, pick: Tensor, layers: Sequence[str]
    ) -> tuple[LayerKV, ...]:
        """K/V of `layers` for a batch, each file through its own projections; `context` is not read."""
        param = next(self.parameters())
        rows = subject.to(param.device, param.dtype).pick(pick)
        return tuple(self.layer_kv(key, rows["preservation"], rows["personalization"]) for key in layers)

    def layer_kv(self, key: str, preservation_tokens: Tensor | None, personalization_tokens: Tensor | None) -> LayerKV:
        """Head-split K/V [B, H, T, dh] of layer `key`, each file through its own projections.

        Call once per run, never per layer call: the tokens do not depend on the step.
        """
        heads = self.config.layer(key).heads
        return LayerKV(
            preservation=None if preservation_tokens is None else self.preservation.kv(key, preservation_tokens, heads),
            personalization=None
            if personalization_tokens is None
            else self.personalization.kv(key, personalization_tokens, heads),
        )
