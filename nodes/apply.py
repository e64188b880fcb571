"""FlexIPApply: patch a clone of the MODEL with the gated FlexIP attention."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from flexip_model.errors import FlexIPError
from flexip_model.gate import Gate
from flexip_model.gate_schedule import constant_schedule
from flexip_model.vocabulary import attention_masks

from .bundles import EncodedSubject, LoadedFlexIP
from .inputs import float_input, typed_input
from .layers import matching_layers
from .patch import FlexIPPatch, install

if TYPE_CHECKING:
    from comfy.model_patcher import ModelPatcher


class FlexIPApply:
    DISPLAY_NAME = "Apply FlexIP"
    DESCRIPTION = (
        "Adds the subject to the model: identity (preservation) and editability (personalization), blended by the gate."
    )
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input model is left untouched.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": typed_input("MODEL", "The diffusion model to personalise (a patched copy is returned)."),
                "flexip": typed_input("FLEXIP", "Adapters from FlexIPLoader (the same ones that encoded the subject)."),
                "subject": typed_input("FLEXIP_SUBJECT", "The subject from FlexIPEncodeSubject."),
                "strength": float_input(
                    1.0, 0.0, 2.0, "Overall strength s of the subject; 0 leaves the model unchanged.", step=0.01
                ),
                "preservation": float_input(
                    0.5,
                    0.0,
                    1.0,
                    "Gate γ: 1 locks identity (preservation adapter), 0 favours editing (personalization adapter). "
                    "Ignored when a gate schedule or sweep is connected.",
                    step=0.01,
                ),
                "start_at": float_input(
                    0.0, 0.0, 1.0, "Sampling progress at which the subject starts to act.", step=0.001
                ),
                "end_at": float_input(
                    1.0, 0.0, 1.0, "Sampling progress after which the subject stops acting.", step=0.001
                ),
            },
            "optional": {
                "gate": typed_input(
                    "FLEXIP_GATE",
                    "A FlexIPGateSchedule (γ per step and block) or a FlexIPGateSweep (one γ per latent batch item); "
                    "replaces preservation.",
                ),
                "attn_mask": typed_input(
                    "MASK",
                    "Where in the image the subject acts: white = its full term, black = none, grey weights it. "
                    "Any size (stretched to the image); one mask, or one per latent image. Where the masks of "
                    "chained Apply FlexIP nodes overlap, their subjects add.",
                ),
            },
        }

    def apply(
        self,
        model: ModelPatcher,
        flexip: LoadedFlexIP,
        subject: EncodedSubject,
        strength: float,
        preservation: float,
        start_at: float,
        end_at: float,
        gate: Gate | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[ModelPatcher]:
        if subject.flexip is not flexip:
            raise FlexIPError(
                f"FlexIPApply's subject was encoded with {subject.flexip.name} but the flexip input is "
                f"{flexip.name}: encode the subject with the same FlexIPLoader output."
            )
        masks = None if attn_mask is None else attention_masks(attn_mask, "FlexIPApply attn_mask")
        layers = matching_layers(model, flexip)
        gate = gate if gate is not None else constant_schedule(preservation)
        gate = gate.with_window(start_at, end_at, "FlexIPApply")
        # ComfyUI's boundary: model_sampling is an untyped nn.Module; its percent_to_sigma maps float to float
        sampling = model.get_model_object("model_sampling")
        plan = gate.plan(layers, cast("Callable[[float], float]", sampling.percent_to_sigma))
        patched = model.clone()
        install(
            patched,
            FlexIPPatch(
                subject,
                layers,
                float(strength),
                plan,
                masks,
            ),
        )
        return (patched,)
