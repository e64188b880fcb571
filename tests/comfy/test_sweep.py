"""FlexIPGateSweep + FlexIPApply: one γ per latent batch item, on the real ComfyUI sampler (tiny models)."""

from __future__ import annotations

import copy
import functools
import types

import pytest
import torch

import flexip_model
from tests.comfy.host_sync import run_guarded
from tests.comfy.tiny_world import apply, attn2_patches, node, sd15_conds, tiny_world
from tests.comfy.tiny_world import sample as tiny_sample

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_thread")]

STEPS = 4
SWEEP = "0, 0.5, 1"
GAMMAS = (0.0, 0.5, 1.0)
# Tolerance, relative to the largest |value| of the compared latents (this random world's
# latents reach a few hundred). A sweep weighs the branches with a [B] tensor where a constant
# γ uses a Python float and skips a branch at weight 0; in token mode a γ of 0 or 1 masks the
# dead tokens with -inf instead of dropping them. Same batch size, same kernels: measured
# bit-exact in output mode and 2e-6 of the scale in token mode (at γ = 1). 1e-5 of the scale
# leaves room for other CPUs and is > 1e4 times below the effect of one γ step (asserted).
RELATIVE_TOLERANCE = 1e-5


def assert_same(actual, expected, what):
    atol = RELATIVE_TOLERANCE * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module", params=["output", "token"])
def each_mode_world(request, world, flexip_pack):
    """`world`, and the same with a token-mode adapter (where a per-item γ masks dead tokens)."""
    return world if request.param == "output" else tiny_world(flexip_pack, request.param)


def sweep(world, values=SWEEP, batch=1, same_noise=False):
    """FlexIPGateSweep outputs (gate, gammas, latent) for a latent of `batch` zeros."""
    latent = {"samples": torch.zeros(batch, 4, 16, 16)}
    return node(world["pack"], "FlexIPGateSweep").sweep(latent, "list", values, 0.0, 1.0, 5, same_noise)


sample = functools.partial(tiny_sample, steps=STEPS, batch=len(GAMMAS))


def recorded_orders(model):
    """Record cond_or_uncond of every model call of `model`'s FlexIP patch (list, filled while sampling)."""
    state = next(iter(attn2_patches(model).values())).state
    orders, prepare = [], state.call_state

    def recording(x, context, options):
        orders.append(list(options["cond_or_uncond"]))
        return prepare(x, context, options)

    state.call_state = recording
    return orders


def test_sweep_batch_gives_item_by_item_the_images_of_constant_gate_runs(each_mode_world):
    world = each_mode_world
    gate, gammas, _ = sweep(world)
    assert gammas == list(GAMMAS)
    swept = apply(world, gate=gate)
    orders = recorded_orders(swept)
    images = sample(swept)
    # ComfyUI batches uncond before cond: this run already exercises the [1, 0] chunk order
    assert orders and all(order == [1, 0] for order in orders)
    constant = [sample(apply(world, preservation=gamma)) for gamma in GAMMAS]
    for item, gamma in enumerate(GAMMAS):
        assert_same(images[item], constant[item][item], f"item {item} (γ = {gamma})")
    step_effect = (constant[1][0] - constant[0][0]).abs().max() / constant[0][0].abs().max()
    assert step_effect > 1e4 * RELATIVE_TOLERANCE  # a misaligned γ could not pass for rounding


class _NoRoomForTwoChunks(types.ModuleType):
    """comfy.model_management as comfy.samplers sees it, reporting no free memory for batching chunks."""

    def __init__(self, real):
        super().__init__(real.__name__)
        self.__dict__.update(real.__dict__)
        self.get_free_memory = lambda *args, **kwargs: 0


def test_sweep_stays_aligned_when_cond_and_uncond_run_in_separate_model_calls(world, monkeypatch):
    import comfy.samplers

    gate, _, _ = sweep(world)
    swept = apply(world, gate=gate)
    orders = recorded_orders(swept)
    # only the sampler's batching decision sees no free memory: it runs uncond and cond one at a time
    monkeypatch.setattr(comfy.samplers, "model_management", _NoRoomForTwoChunks(comfy.samplers.model_management))
    images = sample(swept)
    assert sorted(map(tuple, orders)) == [(0,)] * STEPS + [(1,)] * STEPS
    for item, gamma in enumerate(GAMMAS):
        assert_same(images[item], sample(apply(world, preservation=gamma))[item], f"item {item} (γ = {gamma})")


def _unet_call(model, x, context, order):
    """One diffusion-model call with the transformer_options a sampler passes for these chunks."""
    options = copy.copy(model.model_options["transformer_options"])
    options.update(
        cond_or_uncond=order,
        uuids=[f"chunk{i}" for i in range(len(order))],
        sigmas=torch.full((x.shape[0] // len(order),), 5.0),
        wrappers=model.wrappers,
    )
    timestep = torch.full((x.shape[0],), 500.0)
    return model.model.diffusion_model(x, timestep, context, transformer_options=options)


@pytest.mark.parametrize("order", [[0, 1], [1, 0], [1, 0, 0], [0]], ids=str)
def test_every_chunk_row_gets_its_latent_items_gate(each_mode_world, order):
    """Row (chunk c, item i) of a call gets γ_i whatever the chunk order (a third chunk: a regional cond)."""
    world = each_mode_world
    gate, _, _ = sweep(world)
    items = len(GAMMAS)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(len(order) * items, 4, 16, 16, generator=generator)
    positive, negative = sd15_conds()
    context = torch.cat([(negative if chunk else positive)[0][0].expand(items, -1, -1) for chunk in order])
    with torch.no_grad():
        swept = _unet_call(apply(world, gate=gate), x, context, order)
        constant = [_unet_call(apply(world, preservation=gamma), x, context, order) for gamma in GAMMAS]
    for chunk in range(len(order)):
        for item, gamma in enumerate(GAMMAS):
            row = chunk * items + item
            assert_same(swept[row], constant[item][row], f"chunk {chunk}, item {item} (γ = {gamma})")


def test_sweep_latent_gives_every_item_the_same_noise(world):
    import comfy.sample

    _, _, same = sweep(world, "0.5, 0.5, 0.5", same_noise=True)
    _, _, own = sweep(world, "0.5, 0.5, 0.5", same_noise=False)
    assert same["samples"].shape == (3, 4, 16, 16) and same["batch_index"] == [0, 0, 0]
    noise = comfy.sample.prepare_noise(same["samples"], 0, same["batch_index"])
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[2])
    assert "batch_index" not in own  # a normal batch: ComfyUI draws one noise per item
    # the same noise and the same γ give the same image for every item
    images = sample(apply(world, gate=sweep(world, "0.5, 0.5, 0.5")[0]), batch_index=same["batch_index"])
    assert_same(images[1], images[0], "item 1 against item 0")
    assert_same(images[2], images[0], "item 2 against item 0")


def test_sweep_longer_than_the_latent_batch_is_a_readable_error(world):
    gate, _, _ = sweep(world, "0, 0.25, 0.5, 0.75, 1")
    with pytest.raises(flexip_model.FlexIPError, match="has 5 gate values but the latent batch has 3 images"):
        sample(apply(world, gate=gate))


def test_sweep_inside_a_start_end_window_runs(world):
    gate, _, _ = sweep(world)
    windowed = sample(apply(world, gate=gate, start_at=0.5))
    full = sample(apply(world, gate=gate))
    assert windowed.shape == full.shape
    assert (windowed - full).abs().max() > 1e4 * RELATIVE_TOLERANCE * full.abs().max()


def test_sweep_layer_patches_and_per_call_gates_do_no_host_sync(world):
    gate, _, _ = sweep(world)
    patched = apply(world, gate=gate, start_at=0.1)
    preparations, layer_calls = run_guarded(patched, lambda: sample(patched))
    assert preparations == STEPS and layer_calls > 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0, 0.25, 0.5, 0.75, 1", (0.0, 0.25, 0.5, 0.75, 1.0)),
        ("1\n0.3\n\n0,", (1.0, 0.3, 0.0)),
        ("0.7", (0.7,)),
    ],
)
def test_sweep_values_text_is_parsed_in_order(flexip_pack, text, expected):
    assert flexip_model.parse_gammas(text, "FlexIPGateSweep values") == expected


def test_sweep_range_mode_spaces_count_values_from_start_to_stop(flexip_pack):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    gate, gammas, out = node(flexip_pack, "FlexIPGateSweep").sweep(latent, "range", "", 1.0, 0.0, 5, True)
    assert gammas == [1.0, 0.75, 0.5, 0.25, 0.0] and gate.gammas == tuple(gammas)
    assert out["samples"].shape[0] == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("0, half, 1", "has 'half', which is not a γ in [0, 1]"),
        ("0, 1.5", "has '1.5', which is not a γ in [0, 1]"),
        (" , ", "values is empty"),
    ],
)
def test_bad_sweep_values_are_readable_errors(flexip_pack, text, message):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(flexip_model.FlexIPError, match=message.replace("[", r"\[").replace("]", r"\]")):
        node(flexip_pack, "FlexIPGateSweep").sweep(latent, "list", text, 0.0, 1.0, 5, True)


def test_sweep_of_a_latent_batch_is_a_readable_error(flexip_pack):
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with pytest.raises(flexip_model.FlexIPError, match="latent has a batch of 2"):
        node(flexip_pack, "FlexIPGateSweep").sweep(latent, "list", "0, 1", 0.0, 1.0, 5, True)
