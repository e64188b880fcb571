"""The pack as ComfyUI's loader loaded it, with typed accessors to the parts of its node layer that
the trainer, the evaluation, the benchmarks and the tools use.

The node layer cannot be imported by name outside ComfyUI: there, `nodes` is ComfyUI's own
`nodes.py`, and the pack is a module whose name the loader chose (see `bootstrap.load_pack`). So
callers go through `Pack`, and this module is the one place that knows where a class or function
lives inside `nodes/`: a file renamed there is one edit here. The node-layer names below are
imported for the type checker only (run from the repository root, where `nodes` is this pack's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from flexip_model.config import LayerSpec
    from nodes.apply import FlexIPApply
    from nodes.bundles import EncodedSubject, LoadedFlexIP
    from nodes.encode import FlexIPEncodeSubject
    from nodes.loader import FlexIPLoader
    from nodes.pair_loader import FlexIPAdapterPairLoader
    from nodes.patch import CallSubjectsPatch
    from nodes.schedule import FlexIPGateSchedule


@dataclass(frozen=True)
class Pack:
    """The pack's package (NODE_CLASS_MAPPINGS ...) and typed ways into its node layer."""

    package: ModuleType

    @property
    def nodes(self) -> ModuleType:
        """The `nodes/` package itself, for tests that check its internals; production code uses the
        accessors below."""
        return self.package.nodes

    @property
    def node_classes(self) -> dict[str, type]:
        """Node id -> node class, as registered with ComfyUI."""
        return self.package.NODE_CLASS_MAPPINGS

    def node(self, name: str) -> Any:
        """A fresh instance of node class `name`, as the executor makes one per prompt."""
        return self.node_classes[name]()

    # The nodes the callers run, one fresh instance per call (as the executor makes them).

    def apply_node(self) -> FlexIPApply:
        return self.node("FlexIPApply")

    def encode_subject_node(self) -> FlexIPEncodeSubject:
        return self.node("FlexIPEncodeSubject")

    def loader_node(self) -> FlexIPLoader:
        return self.node("FlexIPLoader")

    def pair_loader_node(self) -> FlexIPAdapterPairLoader:
        return self.node("FlexIPAdapterPairLoader")

    def gate_schedule_node(self) -> FlexIPGateSchedule:
        return self.node("FlexIPGateSchedule")

    # What flows between the nodes (nodes/bundles.py).

    @property
    def loaded_flexip(self) -> type[LoadedFlexIP]:
        """The `FLEXIP` type: `wrap(name, adapter)` puts an adapter in a ModelPatcher."""
        return self.package.nodes.bundles.LoadedFlexIP

    @property
    def encoded_subject(self) -> type[EncodedSubject]:
        """The `FLEXIP_SUBJECT` type."""
        return self.package.nodes.bundles.EncodedSubject

    # The model's cross-attention layers (nodes/layers.py).

    def cross_attention_modules(self, diffusion_model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
        """(layer key, attn2 module) of every cross-attention layer, in ComfyUI's patch order."""
        return self.package.nodes.layers.cross_attention_modules(diffusion_model)

    def layer_specs_of(self, diffusion_model: torch.nn.Module) -> tuple[LayerSpec, ...]:
        """Every attn2 layer of a UNet, in ComfyUI's patch order."""
        return self.package.nodes.layers.layer_specs_of(diffusion_model)

    def context_dim_of(self, diffusion_model: torch.nn.Module) -> int | None:
        """The text context width the model's cross-attention expects (768 SD1.5, 2048 SDXL)."""
        return self.package.nodes.layers.context_dim_of(diffusion_model)

    def matching_layers(self, model: Any, flexip: LoadedFlexIP) -> tuple[LayerSpec, ...]:
        """The adapter's layers in the ModelPatcher's patch order; FlexIPError if they are not its layers."""
        return self.package.nodes.layers.matching_layers(model, flexip)

    # The model patch (nodes/patch.py), as the trainer installs it.

    def call_subjects_patch(
        self, flexip: LoadedFlexIP, layers: tuple[LayerSpec, ...], inputs_key: str
    ) -> CallSubjectsPatch:
        """The patch that reads each model call's subjects from transformer_options[`inputs_key`]."""
        return self.package.nodes.patch.CallSubjectsPatch(flexip, layers, inputs_key)

    def install_patch(self, model: Any, state: CallSubjectsPatch) -> None:
        """Put `state`'s layer patch on every attn2 layer of the ModelPatcher `model` (a clone)."""
        self.package.nodes.patch.install(model, state)

    # The image encoders (nodes/encoders.py): checks and features, as FlexIPEncodeSubject runs them.

    def clip_vision_model(self, encoder: Any, where: str, fix: str) -> Any:
        """`encoder`'s CLIP vision model; FlexIPError naming `where` and how to `fix` it if it is not one."""
        return self.package.nodes.encoders.clip_vision_model(encoder, where, fix)

    def dino_model(self, encoder: Any, where: str, fix: str) -> Any:
        """`encoder`'s DINOv2 model; FlexIPError naming `where` and how to `fix` it if it is not one."""
        return self.package.nodes.encoders.dino_model(encoder, where, fix)

    def clip_image_embeds(self, clip_vision: Any, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [N, H, W, 3] -> projected CLIP [CLS] image_embeds [N, C]."""
        return self.package.nodes.encoders.clip_image_embeds(clip_vision, images)

    def dino_tokens(self, dino: Any, images: torch.Tensor, resolution: int) -> torch.Tensor:
        """IMAGE [N, H, W, 3] -> DINOv2 tokens [N, T, D] at `resolution` px."""
        return self.package.nodes.encoders.dino_tokens(dino, images, resolution)
