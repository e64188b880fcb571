"""FlexIPGateSweep: one γ per latent batch item, so one sampler run renders the whole trade-off."""

from __future__ import annotations

from typing import Any

from flexip_model.errors import FlexIPError
from flexip_model.gate_sweep import MAX_SWEEP_GAMMAS, GateSweep, parse_gammas, range_gammas

from .inputs import boolean_input, choice_input, float_input, int_input, text_input, typed_input

MODES = ("list", "range")


class FlexIPGateSweep:
    DISPLAY_NAME = "FlexIP Gate Sweep"
    DESCRIPTION = (
        "A sweep of the gate γ over a latent batch: item i of the batch gets the i-th value, so one "
        "KSampler run renders identity (γ = 1) to editability (γ = 0) side by side."
    )
    CATEGORY = "FlexIP/sweep"
    RETURN_TYPES = ("FLEXIP_GATE", "FLOAT", "LATENT")
    RETURN_NAMES = ("gate", "gammas", "latent")
    OUTPUT_IS_LIST = (False, True, False)
    OUTPUT_TOOLTIPS = (
        "Connect to FlexIPApply's gate input (it replaces preservation).",
        "The γ values as a list, for FlexIPTradeoffPlot's x axis.",
        "The input latent repeated once per γ; connect it to the sampler so the batch matches the sweep.",
    )
    FUNCTION = "sweep"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "latent": typed_input(
                    "LATENT", "One latent (Empty Latent Image with batch_size 1, or an encoded image)."
                ),
                "mode": choice_input(
                    MODES,
                    "list: the γ values written in values; range: count values evenly from start to stop.",
                    default="list",
                ),
                "values": text_input(
                    "0, 0.25, 0.5, 0.75, 1",
                    "mode list: γ values in [0, 1], comma or newline separated (1 = identity, 0 = editability).",
                ),
                "start": float_input(0.0, 0.0, 1.0, "mode range: the first γ.", step=0.01),
                "stop": float_input(1.0, 0.0, 1.0, "mode range: the last γ (included).", step=0.01),
                "count": int_input(5, 1, MAX_SWEEP_GAMMAS, "mode range: how many γ values (and images)."),
                "same_noise": boolean_input(
                    True,
                    "On: every image starts from the same noise, so only γ differs between them. "
                    "Off: each image gets its own noise, as in a normal batch.",
                ),
            },
        }

    def sweep(
        self, latent: dict[str, Any], mode: str, values: str, start: float, stop: float, count: int, same_noise: bool
    ) -> tuple[GateSweep, list[float], dict[str, Any]]:
        if mode == "list":
            gammas = parse_gammas(values, "FlexIPGateSweep values")
        else:
            gammas = range_gammas(start, stop, count, "FlexIPGateSweep range")
        return (GateSweep(gammas), list(gammas), repeated_latent(latent, len(gammas), same_noise))


def repeated_latent(latent: dict[str, Any], count: int, same_noise: bool) -> dict[str, Any]:
    """LATENT of batch 1 -> batch `count`; with `same_noise`, every item keeps the input's noise index.

    ComfyUI draws a batch's noise per `batch_index` (comfy.sample.prepare_noise), so equal
    indices give equal noise; without them item i gets its own noise, as in a normal batch.
    """
    samples = latent["samples"]
    if samples.shape[0] != 1:
        raise FlexIPError(
            f"FlexIPGateSweep's latent has a batch of {samples.shape[0]}: give one latent (Empty Latent Image "
            "with batch_size 1); the sweep makes one image per γ."
        )
    out = dict(latent)  # a single noise_mask applies to every item as it is
    out["samples"] = samples.repeat((count,) + (1,) * (samples.ndim - 1))
    first = latent.get("batch_index", [0])[0]
    if same_noise:
        out["batch_index"] = [first] * count
    elif "batch_index" in latent:
        out["batch_index"] = [first + i for i in range(count)]
    return out
