"""FlexIPApply: patch a clone of the MODEL with the gated FlexIP attention."""

from __future__ import annotations

import dataclasses

import torch

from flexip_model.errors import FlexIPError
from flexip_model.gate import GateSchedule, constant_schedule, gate_table, static_gate_range, validate_schedule
from flexip_model.vocabulary import mask_batch
from .bundles import EncodedSubject, LoadedFlexIP
from .layers import matching_layers
from .patch import FlexIPPatch, GatePlan, install
from .sweep import GateSweep

_PROGRESS_POINTS = 1001  # one per discrete timestep of SD-family models


class FlexIPApply:
    DISPLAY_NAME = "Apply FlexIP"
    DESCRIPTION = "Adds the subject to the model: identity (preservation) and editability (personalization), blended by the gate."
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model; the input model is left untouched.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to personalise (a patched copy is returned)."}),
                "flexip": ("FLEXIP", {"tooltip": "Adapters from FlexIPLoader (the same ones that encoded the subject)."}),
                "subject": ("FLEXIP_SUBJECT", {"tooltip": "The subject from FlexIPEncodeSubject."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01,
                                       "tooltip": "Overall strength s of the subject; 0 leaves the model unchanged."}),
                "preservation": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "Gate γ: 1 locks identity (preservation adapter), 0 favours editing (personalization "
                    "adapter). Ignored when a gate schedule or sweep is connected.")}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                       "tooltip": "Sampling progress at which the subject starts to act."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                     "tooltip": "Sampling progress after which the subject stops acting."}),
            },
            "optional": {
                "gate": ("FLEXIP_GATE", {"tooltip": (
                    "A FlexIPGateSchedule (γ per step and block) or a FlexIPGateSweep (one γ per latent batch "
                    "item); replaces preservation.")}),
                "attn_mask": ("MASK", {"tooltip": "Where in the image the subject acts (white = on)."}),
            },
        }

    def apply(self, model, flexip: LoadedFlexIP, subject: EncodedSubject, strength: float, preservation: float,
              start_at: float, end_at: float, gate: GateSchedule | GateSweep | None = None,
              attn_mask: torch.Tensor | None = None) -> tuple:
        if subject.flexip is not flexip:
            raise FlexIPError(
                f"FlexIPApply's subject was encoded with {subject.flexip.name} but the flexip input is "
                f"{flexip.name}: encode the subject with the same FlexIPLoader output.")
        layers = matching_layers(model, flexip)
        sweep = gate if isinstance(gate, GateSweep) else None
        schedule = gate if isinstance(gate, GateSchedule) else constant_schedule(preservation)
        schedule = dataclasses.replace(schedule, start_at=start_at, end_at=end_at)
        validate_schedule(schedule, "FlexIPApply")
        plan = _gate_plan(model, schedule, layers)
        if sweep is not None:  # γ per batch item; the schedule still carries start_at/end_at
            plan = dataclasses.replace(plan, sweep=torch.tensor(sweep.gammas, dtype=torch.float32))
        patched = model.clone()
        install(patched, FlexIPPatch(subject, layers, float(strength), plan, None if attn_mask is None else mask_batch(attn_mask).unsqueeze(1)))
        return (patched,)


def _gate_plan(model, schedule: GateSchedule, layers) -> GatePlan:
    """Decide on the host which layers have a constant γ; build the sigma→progress grid if needed."""
    ranges = static_gate_range(schedule, layers)
    constants = tuple(low if low == high else None for low, high in (ranges[spec.key] for spec in layers))
    windowed = schedule.start_at > 0.0 or schedule.end_at < 1.0
    progress = torch.linspace(0.0, 1.0, _PROGRESS_POINTS)
    if windowed or None in constants:
        sampling = model.get_model_object("model_sampling")
        sigmas = torch.tensor([sampling.percent_to_sigma(float(p)) for p in progress])
    else:
        sigmas = torch.zeros_like(progress)  # never read: every gate is a constant
    return GatePlan(schedule, gate_table(schedule, layers), constants, sigmas, progress, windowed)

