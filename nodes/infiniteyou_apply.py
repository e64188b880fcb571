"""FlexIPInfiniteYouApply: InfiniteYou's two stages on FLUX conditioning, blended by the FlexIP gate."""

from __future__ import annotations

from typing import Any

import torch

from flexip_model.errors import FlexIPError
from flexip_model.flux.residuals import residual_groups
from flexip_model.gate import Gate, check_window
from flexip_model.gate_schedule import constant_schedule
from flexip_model.vocabulary import attention_masks

from .infiniteyou_bundles import IDENTITY_TYPE, PAIR_TYPE, InfiniteYouIdentity, InfiniteYouPair, pair_group_counts
from .infuse_control import AES, SIM, GatedInfusePair, InfuseNetStage
from .inputs import float_input, typed_input

NODE = "FlexIPInfiniteYouApply"
# the reference pipeline's InfuseNet guidance, whatever the DiT gets (FluxGuidance, usually 3.5)
REFERENCE_GUIDANCE = 1.0


class FlexIPInfiniteYouApply:
    DISPLAY_NAME = "Apply FlexIP InfiniteYou"
    DESCRIPTION = (
        "Adds a face to FLUX conditioning with InfiniteYou's two InfuseNets, blended per step and per block by "
        "the FlexIP gate: γ = 1 is sim_stage1 (identity), γ = 0 is aes_stage2 (prompt following)."
    )
    CATEGORY = "FlexIP/flux"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("positive",)
    OUTPUT_TOOLTIPS = (
        "The positive conditioning with the pair attached as a controlnet (the negative gets none, as in "
        "InfiniteYou); chains with other controlnets.",
    )
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": typed_input("CONDITIONING", "The FLUX positive conditioning (after FluxGuidance)."),
                "pair": typed_input(PAIR_TYPE, "Both InfuseNets from FlexIP InfiniteYou Loader."),
                "identity": typed_input(IDENTITY_TYPE, "The face from FlexIP InfiniteYou Face (the same pair)."),
                "vae": typed_input("VAE", "The FLUX VAE: it encodes the control image (black, or keypoints)."),
                "strength": float_input(
                    1.0, 0.0, 2.0, "Overall strength s of the residuals; 0 leaves the image unchanged.", step=0.01
                ),
                "preservation": float_input(
                    0.5,
                    0.0,
                    1.0,
                    "Gate γ: 1 runs sim_stage1 alone (likeness), 0 aes_stage2 alone (prompt and aesthetics); "
                    "between, both run and blend. Ignored when a gate schedule is connected.",
                    step=0.01,
                ),
                "start_at": float_input(
                    0.0,
                    0.0,
                    1.0,
                    "Sampling progress at which the InfuseNets start (InfiniteYou suggests about 0.1 for more "
                    "editability); outside the window neither runs.",
                    step=0.001,
                ),
                "end_at": float_input(1.0, 0.0, 1.0, "Sampling progress after which the InfuseNets stop.", step=0.001),
                "infusenet_guidance": float_input(
                    REFERENCE_GUIDANCE,
                    0.0,
                    100.0,
                    "The guidance value the InfuseNets see (InfiniteYou's pipeline: 1.0); the DiT keeps its own "
                    "from FluxGuidance.",
                    step=0.1,
                ),
            },
            "optional": {
                "gate": typed_input(
                    "FLEXIP_GATE",
                    "A FlexIP Gate Schedule (γ per step and per residual group: input_blocks = FLUX's double-stream "
                    "groups, output_blocks = single-stream groups, layer_indices 0..13 in that order) or a FlexIP "
                    "Gate Sweep (one γ per latent image); replaces preservation.",
                ),
                "keypoints": typed_input(
                    "IMAGE",
                    "Optional 5-keypoint drawing (InfiniteYou's control image) for the face's pose; "
                    "without it the control image is black.",
                ),
                "mask": typed_input("MASK", "Where in the image the identity acts (white = on); any size."),
            },
        }

    def apply(
        self,
        positive: list[Any],
        pair: InfiniteYouPair,
        identity: InfiniteYouIdentity,
        vae: Any,
        strength: float,
        preservation: float,
        start_at: float,
        end_at: float,
        infusenet_guidance: float,
        gate: Gate | None = None,
        keypoints: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[list[Any]]:
        if identity.pair is not pair:
            raise FlexIPError(
                f"{NODE}'s identity was encoded with another InfiniteYou pair than its pair input: connect the "
                "same FlexIP InfiniteYou Loader output to both the face node and this node."
            )
        if strength == 0.0:
            return (positive,)  # nothing to add: the InfuseNets need not even load
        gate = gate if gate is not None else constant_schedule(preservation)
        masks = None if mask is None else attention_masks(mask, f"{NODE} mask")  # the SD rules: clamped, checked
        check_window(start_at, end_at, NODE)  # the pair skips steps outside it; its gate itself is windowless
        gate = gate.with_window(0.0, 1.0, NODE)
        groups = residual_groups(*pair_group_counts(pair.sim))
        # checks the gate against the groups here (a bad override is this node's error) and finds dead
        # branches; the plan that runs is built again in pre_run, on the model's sigmas
        try:
            constants = gate.plan(groups, lambda progress: 1.0 - progress).constants
        except FlexIPError as error:
            raise FlexIPError(f"{NODE}: {error}") from None
        hint = _control_image(keypoints)
        stages = {}
        if any(gamma != 0.0 for gamma in constants):
            stages[SIM] = (InfuseNetStage.of(pair.sim.control, hint, vae), identity.sim_tokens)
        if any(gamma != 1.0 for gamma in constants):
            stages[AES] = (InfuseNetStage.of(pair.aes.control, hint, vae), identity.aes_tokens)
        out, made = [], {}
        for tokens, options in positive:
            previous = options.get("control")
            if previous not in made:  # one pair per distinct previous controlnet, as ComfyUI's Apply ControlNet
                made[previous] = GatedInfusePair(
                    stages, gate, groups, strength, (start_at, end_at), masks, infusenet_guidance
                ).set_previous_controlnet(previous)
            out.append([tokens, {**options, "control": made[previous], "control_apply_to_uncond": False}])
        return (out,)


def _control_image(keypoints: torch.Tensor | None) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> the hint [1, 3, H, W]; black when none (ComfyUI resizes it to the latent per run)."""
    if keypoints is None:
        return torch.zeros(1, 3, 64, 64)
    return keypoints[:1, ..., :3].movedim(-1, 1).float()
