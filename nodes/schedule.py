"""FlexIPGateSchedule: γ (the preservation share) over sampling progress, per block if wanted."""

from __future__ import annotations

from typing import Any

from flexip_model.gate_schedule import (
    INTERPOLATIONS,
    BlockOverride,
    GateSchedule,
    parse_keyframes,
    parse_layer_indices,
    validate_schedule,
)
from flexip_model.vocabulary import INPUT_BLOCK, MIDDLE_BLOCK, OUTPUT_BLOCK

from .inputs import InputSpec, choice_input, text_input

_KEYFRAMES_HELP = "'progress:gamma' pairs, e.g. '0:1.0, 0.6:0.2' (progress 0 = first step, 1 = last), or one number."


def _override(blocks: str) -> InputSpec:
    return text_input("", f"Optional override for {blocks}: {_KEYFRAMES_HELP} Empty = use keyframes.")


class FlexIPGateSchedule:
    DISPLAY_NAME = "FlexIP Gate Schedule"
    DESCRIPTION = (
        "How much identity (γ = 1, preservation) versus editability (γ = 0, personalization) "
        "at each point of sampling, optionally different per UNet block (on FLUX: per residual group)."
    )
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("FLEXIP_GATE",)
    RETURN_NAMES = ("gate",)
    OUTPUT_TOOLTIPS = ("The gate schedule; connect it to FlexIPApply's gate input (it replaces preservation).",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "keyframes": text_input(
                    "0:1.0, 0.5:0.5, 1:0.2", f"γ over sampling progress: {_KEYFRAMES_HELP}", multiline=True
                ),
                "interpolation": choice_input(
                    INTERPOLATIONS, "Between keyframes: linear, cosine ease, or step (hold).", default="linear"
                ),
            },
            "optional": {
                "input_blocks": _override("the UNet's input blocks, or FLUX's double-stream residual groups"),
                "middle_block": _override("the UNet's middle block (FLUX has none)"),
                "output_blocks": _override("the UNet's output blocks, or FLUX's single-stream residual groups"),
                "layer_indices": text_input(
                    "",
                    "Optional comma-separated cross-attention layer indices (0 = first input layer; on FLUX residual "
                    "groups 0..13, double-stream first) that get layer_keyframes instead.",
                ),
                "layer_keyframes": text_input("", f"Keyframes for layer_indices: {_KEYFRAMES_HELP}"),
            },
        }

    def build(
        self,
        keyframes: str,
        interpolation: str,
        input_blocks: str = "",
        middle_block: str = "",
        output_blocks: str = "",
        layer_indices: str = "",
        layer_keyframes: str = "",
    ) -> tuple[GateSchedule]:
        overrides = []
        by_block = {
            INPUT_BLOCK: ("input_blocks", input_blocks),
            MIDDLE_BLOCK: ("middle_block", middle_block),
            OUTPUT_BLOCK: ("output_blocks", output_blocks),
        }
        for block, (name, text) in by_block.items():
            if text.strip():
                overrides.append(BlockOverride(parse_keyframes(text, f"FlexIPGateSchedule {name}"), blocks=(block,)))
        if layer_indices.strip():
            overrides.append(
                BlockOverride(
                    parse_keyframes(layer_keyframes, "FlexIPGateSchedule layer_keyframes"),
                    layer_indices=parse_layer_indices(layer_indices, "FlexIPGateSchedule layer_indices"),
                )
            )
        schedule = GateSchedule(
            parse_keyframes(keyframes, "FlexIPGateSchedule keyframes"), interpolation, overrides=tuple(overrides)
        )
        validate_schedule(schedule, "FlexIPGateSchedule")
        return (schedule,)
