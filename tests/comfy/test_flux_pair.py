"""Apply FlexIP InfiniteYou on a tiny FLUX through ComfyUI's sampler: the gate over two InfuseNets.

The DiT, the InfuseNets and the VAE are ComfyUI's own classes with seeded random weights
(tools/fixtures/flux.py); the stock comparisons use ComfyUI's own ControlNet path exactly as its
Apply ControlNet node sets it up. Residuals are read where the DiT receives them (a unet function
wrapper sees the `control` dict of every model call) and where each InfuseNet emits them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.samplers
import pytest
import torch

from flexip_model.errors import FlexIPError
from flexip_model.gate_schedule import BlockOverride, GateSchedule
from tests.comfy.tiny_world import progress_of
from tools.fixtures.flux import flux_conditioning, tiny_flux_patcher, tiny_flux_vae, tiny_infusenet

STEPS, SIZE = 3, 16  # latent 16 x 16 -> 8 x 8 tokens
DIT_GUIDANCE = 3.5


@pytest.fixture(scope="module")
def flux():
    """The tiny FLUX, its VAE, an InfiniteYou pair of tiny InfuseNets, an identity and a third controlnet."""
    return dict(
        model=tiny_flux_patcher(0),
        vae=tiny_flux_vae(),
        sim=tiny_infusenet(1),
        aes=tiny_infusenet(2),
        other=tiny_infusenet(3),
    )


def pair_and_identity(pack: Any, flux: dict, identity_seed: int = 7) -> tuple[Any, Any]:
    bundles = pack.nodes.infiniteyou_bundles
    pair = bundles.InfiniteYouPair(
        bundles.InfiniteYouStage("sim.safetensors", flux["sim"], None),
        bundles.InfiniteYouStage("aes.safetensors", flux["aes"], None),
    )
    generator = torch.Generator().manual_seed(identity_seed)
    tokens = [torch.randn(1, 8, 4096, generator=generator) for _ in range(2)]
    return pair, bundles.InfiniteYouIdentity(pair, tokens[0], tokens[1])


def apply(pack: Any, flux: dict, positive: list | None = None, identity_seed: int = 7, **inputs: Any) -> list:
    pair, identity = pair_and_identity(pack, flux, identity_seed)
    settings = dict(strength=1.0, preservation=0.5, start_at=0.0, end_at=1.0, infusenet_guidance=1.0) | inputs
    node = pack.node_classes["FlexIPInfiniteYouApply"]()
    (out,) = node.apply(
        positive or flux_conditioning(0, guidance=DIT_GUIDANCE), pair, identity, flux["vae"], **settings
    )
    return out


def stock(control: Any, flux: dict, positive: list, strength: float, tokens: torch.Tensor | None = None) -> list:
    """ComfyUI's Apply ControlNet (advanced) on the positive conditioning, black control image."""
    hint = torch.zeros(1, 3, 64, 64)
    out = []
    for context, options in positive:
        c_net = control.copy().set_cond_hint(hint, strength, (0.0, 1.0), vae=flux["vae"])
        c_net.set_previous_controlnet(options.get("control"))
        extra = {} if tokens is None else {"cross_attn_controlnet": tokens}
        out.append([context, {**options, **extra, "control": c_net, "control_apply_to_uncond": False}])
    return out


def run(flux: dict, positive: list, seed: int = 0, batch: int = 1) -> tuple[torch.Tensor, list[dict]]:
    """ComfyUI's euler/simple sampling of the tiny FLUX (cfg 1); the latent and every call's control dict."""
    import comfy.sample

    calls: list[dict] = []

    def wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        control = args["c"].get("control")
        calls.append({key: [None if r is None else r.clone() for r in value] for key, value in (control or {}).items()})
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = flux["model"].clone()
    model.set_model_unet_function_wrapper(wrapper)
    latent = torch.zeros(batch, 16, SIZE, SIZE)
    noise = comfy.sample.prepare_noise(latent, seed)
    negative = flux_conditioning(99)
    samples = comfy.sample.sample(
        model, noise, STEPS, 1.0, "euler", "simple", positive, negative, latent, disable_pbar=True, seed=seed
    )
    return samples, calls


def emitted(control: Any) -> tuple[list[dict], Callable[[], None]]:
    """Every output of an InfuseNet (cloned), and a function that stops recording."""
    outputs: list[dict] = []

    def hook(module: Any, args: Any, output: dict) -> None:
        outputs.append({key: [r.clone() for r in value] for key, value in output.items()})

    handle = control.control_model.register_forward_hook(hook)
    return outputs, handle.remove


@pytest.mark.parametrize("gamma, stage", [(1.0, "sim"), (0.0, "aes")])
def test_a_constant_gate_at_one_end_is_comfyuis_own_controlnet_path_with_that_stage(flexip_pack, flux, gamma, stage):
    _, identity = pair_and_identity(flexip_pack, flux)
    tokens = identity.sim_tokens if stage == "sim" else identity.aes_tokens
    # the DiT and the InfuseNet see the same guidance here, as ComfyUI's own path cannot split them
    positive = flux_conditioning(0, guidance=1.0)
    ours, _ = run(flux, apply(flexip_pack, flux, positive, preservation=gamma, strength=0.8))
    theirs, _ = run(flux, stock(flux[stage], flux, positive, 0.8, tokens))
    assert torch.equal(ours, theirs)  # same kernels on the same inputs
    assert not torch.equal(ours, run(flux, positive)[0])


@pytest.mark.parametrize("gamma, dead", [(1.0, "aes"), (0.0, "sim")])
def test_a_dead_branch_is_never_built_loaded_or_run(flexip_pack, flux, gamma, dead):
    outputs, stop = emitted(flux[dead])
    try:
        positive = apply(flexip_pack, flux, preservation=gamma)
        run(flux, positive)
    finally:
        stop()
    assert outputs == []
    models = positive[0][1]["control"].get_models()
    assert len(models) == 1 and models[0].model is flux["sim" if dead == "aes" else "aes"].control_model


def test_a_schedule_gives_each_step_the_blend_it_names_per_group(flexip_pack, flux):
    # double-stream group: γ falls linearly from 1 to 0; single-stream group: held at 0.25
    gate = GateSchedule(((0.0, 1.0), (1.0, 0.0)), overrides=(BlockOverride(((0.0, 0.25),), blocks=("output",)),))
    sim_out, stop_sim = emitted(flux["sim"])
    aes_out, stop_aes = emitted(flux["aes"])
    try:
        _, calls = run(flux, apply(flexip_pack, flux, gate=gate, strength=0.7))
    finally:
        stop_sim()
        stop_aes()
    assert len(calls) == len(sim_out) == len(aes_out) == STEPS
    schedule = comfy.samplers.calculate_sigmas(flux["model"].get_model_object("model_sampling"), "simple", STEPS)
    for step, (call, sim, aes) in enumerate(zip(calls, sim_out, aes_out)):
        gamma = 1.0 - progress_of(flux["model"], float(schedule[step]))
        for key, group_gamma in (("input", gamma), ("output", 0.25)):
            expected = 0.7 * (group_gamma * sim[key][0] + (1 - group_gamma) * aes[key][0])
            torch.testing.assert_close(call[key][0], expected, rtol=1e-5, atol=1e-6)  # lerp vs the sum: rounding only
            assert all(torch.equal(entry, call[key][0]) for entry in call[key])  # one group per run here


def test_a_gate_sweep_gives_each_latent_image_its_own_blend(flexip_pack, flux):
    from flexip_model.gate_sweep import GateSweep

    sim_out, stop_sim = emitted(flux["sim"])
    aes_out, stop_aes = emitted(flux["aes"])
    try:
        _, calls = run(flux, apply(flexip_pack, flux, gate=GateSweep((1.0, 0.25))), batch=2)
    finally:
        stop_sim()
        stop_aes()
    for call, sim, aes in zip(calls, sim_out, aes_out):
        for key in ("input", "output"):
            torch.testing.assert_close(call[key][0][0], sim[key][0][0], rtol=0, atol=1e-6)
            torch.testing.assert_close(call[key][0][1], 0.25 * sim[key][0][1] + 0.75 * aes[key][0][1])


def test_chaining_with_another_controlnet_before_or_after_adds_the_two(flexip_pack, flux):
    base = flux_conditioning(0, guidance=DIT_GUIDANCE)
    _, ours = run(flux, apply(flexip_pack, flux, base, preservation=0.4))
    _, theirs = run(flux, stock(flux["other"], flux, base, 0.6))
    after, after_calls = run(flux, apply(flexip_pack, flux, stock(flux["other"], flux, base, 0.6), preservation=0.4))
    before, before_calls = run(flux, stock(flux["other"], flux, apply(flexip_pack, flux, base, preservation=0.4), 0.6))
    assert torch.equal(after, before)
    for key in ("input", "output"):
        # the first step sees the same latent in all four runs; later ones follow each run's own path
        assert torch.equal(after_calls[0][key][0], ours[0][key][0] + theirs[0][key][0])
        for step in range(STEPS):
            assert torch.equal(before_calls[step][key][0], after_calls[step][key][0])


def test_a_mask_confines_the_residuals_to_its_region(flexip_pack, flux):
    mask = torch.zeros(1, 40, 80)  # another aspect ratio than the latent: resized to the 8 x 8 token grid
    mask[:, :, :40] = 1.0
    _, full = run(flux, apply(flexip_pack, flux))
    _, masked = run(flux, apply(flexip_pack, flux, mask=mask))
    for key in ("input", "output"):
        for step in range(STEPS):
            assert torch.count_nonzero(masked[step][key][0].reshape(1, 8, 8, -1)[:, :, 4:]) == 0
        # inside the mask the first step (the same latent in both runs) gets the unmasked residual
        inside = masked[0][key][0].reshape(1, 8, 8, -1)[:, :, :4]
        assert torch.equal(inside, full[0][key][0].reshape(1, 8, 8, -1)[:, :, :4])


def test_two_identities_with_left_and_right_masks_each_confined_to_their_region(flexip_pack, flux):
    """Issue 26's FLUX rule: outside A's mask the residuals are B's alone, to the bit, and the other way round."""
    left, right = torch.zeros(1, 32, 32), torch.zeros(1, 32, 32)
    left[:, :, :16], right[:, :, 16:] = 1.0, 1.0
    base = flux_conditioning(0, guidance=DIT_GUIDANCE)
    a = {"preservation": 0.8, "mask": left, "identity_seed": 11}
    b = {"preservation": 0.2, "mask": right, "identity_seed": 12}
    both = apply(flexip_pack, flux, apply(flexip_pack, flux, base, **a), **b)
    _, two = run(flux, both)
    _, only_a = run(flux, apply(flexip_pack, flux, base, **a))
    _, only_b = run(flux, apply(flexip_pack, flux, base, **b))
    for key in ("input", "output"):  # the first step: the same latent in all three runs
        grid = two[0][key][0].reshape(1, 8, 8, -1)
        assert torch.equal(grid[:, :, 4:], only_b[0][key][0].reshape(1, 8, 8, -1)[:, :, 4:])
        assert torch.equal(grid[:, :, :4], only_a[0][key][0].reshape(1, 8, 8, -1)[:, :, :4])


def test_the_infusenet_gets_its_own_guidance_while_the_dit_keeps_fluxguidance(flexip_pack, flux):
    seen: list[torch.Tensor] = []
    handle = flux["sim"].control_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["guidance"].clone()), with_kwargs=True
    )
    try:
        run(flux, apply(flexip_pack, flux, preservation=1.0, infusenet_guidance=1.25))
    finally:
        handle.remove()
    assert len(seen) == STEPS and all(torch.equal(g, torch.full_like(g, 1.25)) for g in seen)


def test_a_window_skips_both_infusenets_outside_it(flexip_pack, flux):
    outputs, stop = emitted(flux["sim"])
    try:
        _, calls = run(flux, apply(flexip_pack, flux, start_at=0.5))
    finally:
        stop()
    assert len(calls) == STEPS and calls[0] == {} and len(outputs) == sum(1 for call in calls if call)


def test_strength_zero_leaves_the_conditioning_as_it_was(flexip_pack, flux):
    positive = flux_conditioning(0)
    assert apply(flexip_pack, flux, positive, strength=0.0) is positive


def test_an_identity_of_another_pair_and_a_middle_block_override_are_one_sentence(flexip_pack, flux):
    pair, _ = pair_and_identity(flexip_pack, flux)
    _, identity = pair_and_identity(flexip_pack, flux)
    node = flexip_pack.node_classes["FlexIPInfiniteYouApply"]()
    with pytest.raises(FlexIPError, match="another InfiniteYou pair"):
        node.apply(flux_conditioning(0), pair, identity, flux["vae"], 1.0, 0.5, 0.0, 1.0, 1.0)
    middle = GateSchedule(((0.0, 0.5),), overrides=(BlockOverride(((0.0, 1.0),), blocks=("middle",)),))
    with pytest.raises(FlexIPError, match="overrides the middle blocks but this model has only input and output"):
        apply(flexip_pack, flux, gate=middle)
    with pytest.raises(FlexIPError, match="FlexIPInfiniteYouApply mask holds NaN"):
        apply(flexip_pack, flux, mask=torch.full((1, 8, 8), float("nan")))
