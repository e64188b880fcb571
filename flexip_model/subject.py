"""The adapter contract: what the nodes and the trainer call, whichever adapter is loaded.

A trained `FlexIPAdapter` and a compatibility-mode `IPAdapterPair` both implement
`SubjectAdapter`, so callers never ask which kind they hold: they compute the image features
the adapter declares, let it encode the subject once, and ask it for each run's K/V.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

import torch
from torch import Tensor, nn

from .attention import LayerKV
from .config import LayerSpec

BATCH_MODES = ("average", "concat")


@dataclass(frozen=True)
class FeatureNeed:
    """One encoder output an adapter reads from every reference, at the width it was trained on."""

    feature: str  # IMAGE_EMBEDS or HIDDEN_STATES (CLIP vision), DINO_FEATURES (DINOv2): see vocabulary.py
    width: int
    file: str | None = None  # the file that needs it, when not the adapter as a whole (a pair's branch)
    hint: str = ""  # appended to the fix of a width mismatch, e.g. another version of that file


@dataclass(frozen=True)
class ImageFeatures:
    """What the encode node computes per reference image for an adapter, and for its uncond row.

    `uncond`: "black" — the same features of a black reference (the encoders never saw zeros);
    "neutral" — CLIP's penultimate hidden states of an all-zero normalised pixel input;
    None — nothing, the adapter makes its unconditional row itself.
    """

    needs: tuple[FeatureNeed, ...]
    uncond: str | None
    dino_resolution: int | None = None  # DINOv2 input size in px, when a need is dino_features

    @property
    def names(self) -> tuple[str, ...]:
        """The features to compute, each once, in the order of `needs`."""
        return tuple(dict.fromkeys(need.feature for need in self.needs))


@dataclass(frozen=True, eq=False)
class SubjectTokens:
    """What an adapter keeps of a subject: named tensors whose first axis is the subject row.

    After `encode_subject` every tensor has two rows, the subject (cond) then uncond; in a
    training call, one row per batch item.
    """

    rows: Mapping[str, Tensor]

    def __getitem__(self, name: str) -> Tensor:
        return self.rows[name]

    def to(self, *args: Any, **kwargs: Any) -> SubjectTokens:
        """Every tensor through `Tensor.to(*args, **kwargs)`."""
        return SubjectTokens({name: tensor.to(*args, **kwargs) for name, tensor in self.rows.items()})

    def pick(self, index: Tensor) -> SubjectTokens:
        """Row `index[i]` for batch item i, [B] -> tensors [B, ...]."""
        return SubjectTokens({name: tensor[index] for name, tensor in self.rows.items()})


@dataclass(frozen=True, eq=False)
class CallSubjects:
    """One model call's own references, one per batch item: features as `ImageFeatures` names them
    ([B, ...] each) and γ per item [B]. The trainer passes them; inference encodes a subject once instead."""

    features: Mapping[str, Tensor]
    gates: Tensor


def subject_rows(tokens: Tensor, batch_mode: str) -> Tensor:
    """[N + 1, ...] (N references, then uncond) -> [2, ...]: the subject row, then uncond.

    Tokens [N + 1, T, d] are averaged, or concatenated into one longer list (the uncond row then
    repeats so both rows stack). Embeddings [N + 1, C] have no token axis: always averaged.
    """
    subject, uncond = tokens[:-1], tokens[-1:]
    if batch_mode == "average" or tokens.ndim == 2:
        return torch.cat([subject.mean(dim=0, keepdim=True), uncond])
    return torch.cat([subject.reshape(1, -1, subject.shape[-1]), uncond.repeat(1, subject.shape[0], 1)])


@runtime_checkable
class AdapterConfig(Protocol):
    """What callers read from an adapter's config (FlexIPConfig, IPAdapterPairConfig)."""

    # read-only members (properties), so frozen dataclasses implement the protocol
    @property
    def layers(self) -> tuple[LayerSpec, ...]: ...

    @property
    def gate_mode(self) -> str: ...

    @property
    def context_dim(self) -> int: ...

    def layer(self, key: str) -> LayerSpec: ...


@runtime_checkable
class SubjectAdapter(Protocol):
    """The contract every adapter implements; tensors in, tensors out, on the adapter's device and dtype.

    An adapter is an `nn.Module`: ComfyUI's ModelPatcher loads and offloads it, and callers use the
    module methods declared here (its device from `parameters()`, its dtype through `to()`).
    """

    @property
    def config(self) -> AdapterConfig: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def to(self, *args: Any, **kwargs: Any) -> Self: ...

    def eval(self) -> Self: ...

    def requires_grad_(self, requires_grad: bool = True) -> Self: ...

    @property
    def image_features(self) -> ImageFeatures:
        """The encoder outputs to compute per reference, and the input of the uncond row."""
        ...

    def reference_tokens(self, features: Mapping[str, Tensor]) -> SubjectTokens:
        """The tokens of each image's features ([B, ...] each, `image_features.names`), one row per image."""
        ...

    def encode_subject(
        self, references: Mapping[str, Tensor], uncond: Mapping[str, Tensor], batch_mode: str
    ) -> SubjectTokens:
        """N references' features [N, ...] and the uncond input's [1, ...] -> the subject's two rows."""
        ...

    def run_kv(
        self, subject: SubjectTokens, context: Tensor, pick: Tensor, layers: Sequence[str]
    ) -> tuple[LayerKV, ...]:
        """Head-split K/V of `layers` for a batch whose item i reads subject row pick[i] ([B]).

        `context` [B, L, d] is the text context of the same batch (FlexIP makes its personalization
        tokens from it, the pair ignores it). Call once per run or model call, never per layer call.
        """
        ...
