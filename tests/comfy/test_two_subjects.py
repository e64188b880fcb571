"""Several subjects on one SD1.5-shaped model: chained FlexIPApply nodes, each with its own mask and gate
(docs/gate.md, "Several subjects (regional masks)"), on a real ModelPatcher and ComfyUI's sampler.

Layer-level checks stand in front of every attn2 patch during sampling and compare the patch's output
with what the same patch code gives on the same q, k, v: only there is "to the bit" meaningful, since
a subject's effect inside its mask reaches every later layer's input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.sample
import comfy.samplers
import pytest
import torch
import torch.nn.functional as F

from flexip_model.errors import FlexIPError
from tests.comfy.tiny_world import apply, attn2_patches, node, progress_of, sample, sd15_conds
from tests.support.assertions import assert_one_sentence

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_thread")]  # tiny UNet calls on a busy 2-core host

STEPS = 4
LAYERS = 7  # the tiny UNet's cross-attention layers


@pytest.fixture(scope="module")
def second(world):
    """The world with another subject: the same adapter, another reference image."""
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    (subject,) = node(world["pack"], "FlexIPEncodeSubject").encode(
        world["flexip"], world["clip"], image, "average", dino=world["dino"]
    )
    return dict(world, subject=subject, image=image)


def columns(height: int, width: int, start: int, stop: int, value: float = 1.0, batch: int = 1) -> torch.Tensor:
    """A MASK [batch, height, width] that is `value` in columns start..stop-1 and 0 elsewhere."""
    mask = torch.zeros(batch, height, width)
    mask[:, :, start:stop] = value
    return mask


def sample_latent(model: Any, height: int, width: int, batch: int = 1, steps: int = STEPS) -> torch.Tensor:
    """ComfyUI's euler/normal sampling of `model` from a zero latent [batch, 4, height, width]."""
    latent = torch.zeros(batch, 4, height, width)
    positive, negative = sd15_conds()
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(
        model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=0
    )


class LayerCheck:
    """Stands in front of one attn2 patch: runs it, then `check(patch, q, k, v, extra_options, out)`."""

    def __init__(self, inner: Any, check: Callable[..., None]) -> None:
        self.inner, self.check = inner, check

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options)
        self.check(self.inner, q, k, v, extra_options, out)
        return out

    def models(self) -> list:
        return self.inner.models()

    def to(self, device) -> LayerCheck:
        self.inner = self.inner.to(device)
        return self


def check_every_layer(model: Any, check: Callable[..., None]) -> list[tuple]:
    """Puts `check` in front of every attn2 patch of `model`; returns the list its calls are recorded in."""
    calls: list[tuple] = []

    def recorded(patch, q, k, v, extra_options, out):
        calls.append(extra_options["block"])
        check(patch, q, k, v, extra_options, out)

    for key, patch in list(attn2_patches(model).items()):
        attn2_patches(model)[key] = LayerCheck(patch, recorded)
    return calls


def layer_mask(mask: torch.Tensor, q: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """A MASK [M, H, W] on this layer's token grid, one row per row of q: [B, N, 1].

    The grid is ComfyUI's own record of the transformer's input (`activations_shape`), independent of how
    the patch finds it; M masks repeat once per cond/uncond chunk.
    """
    grid = extra_options["activations_shape"][-2:]
    tokens = F.interpolate(mask.unsqueeze(1).float(), size=grid, mode="bilinear").flatten(1)
    assert tokens.shape[1] == q.shape[1]
    return tokens.repeat(q.shape[0] // tokens.shape[0], 1).unsqueeze(-1)


def text_only(q, k, v, extra_options) -> torch.Tensor:
    """The base model's cross-attention, as the patch computes it."""
    return comfy_attention.optimized_attention(
        q,
        k,
        v,
        extra_options["n_heads"],
        attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options,
    )


def unmasked(pack: Any, patch: Any, q, k, v, extra_options) -> torch.Tensor:
    """The same layer patch on the same call with its subject's mask removed (the full term everywhere)."""
    call = extra_options[patch.state.options_key]
    options = dict(extra_options)
    options[patch.state.options_key] = dataclasses.replace(call, mask=None, masks_by_tokens={}, layers_run=set())
    return pack.nodes.patch.LayerPatch(patch.state, patch.index, patch.previous)(q, k, v, options)


def assert_weighted(out: torch.Tensor, text: torch.Tensor, full: torch.Tensor, weight: torch.Tensor) -> None:
    """out = text + m·(full − text) per token: bit for bit where m is 0 or 1 (x + 0·t == x, x + 1·t == x + t),
    within rounding where m lies between."""
    weight = weight.expand_as(out)
    assert torch.equal(out[weight == 0], text[weight == 0])
    assert torch.equal(out[weight == 1], full[weight == 1])
    # out rounds text + m·term once; the reference rounds full − text, then the product and the sum:
    # a few float32 ulps of the largest value; 1e-6 of the scale is ~8 ulps
    atol = 1e-6 * float(full.abs().max())
    torch.testing.assert_close(out, torch.addcmul(text, full - text, weight), rtol=0, atol=atol)


# --- two subjects -----------------------------------------------------------------------------


def test_outside_each_mask_every_layer_equals_the_other_subject_alone_to_the_bit(world, second, flexip_pack):
    left, right = columns(16, 16, 0, 8), columns(16, 16, 8, 16)
    chained = apply(second, attn_mask=right, model=apply(world, attn_mask=left))
    LayerPatch = flexip_pack.nodes.patch.LayerPatch
    acted = {"A": 0, "B": 0}

    def check(patch, q, k, v, extra_options, out):
        # the top patch is B's, chaining A's: A alone is A's patch, B alone is B's patch chaining nothing
        a_only = patch.previous(q, k, v, extra_options)
        b_only = LayerPatch(patch.state, patch.index, None)(q, k, v, extra_options)
        outside_a = (layer_mask(left, q, extra_options) == 0).expand_as(out)
        outside_b = (layer_mask(right, q, extra_options) == 0).expand_as(out)
        assert outside_a.any() and outside_b.any()
        assert torch.equal(out[outside_a], b_only[outside_a])
        assert torch.equal(out[outside_b], a_only[outside_b])
        acted["A"] += not torch.equal(out[~outside_a], b_only[~outside_a])
        acted["B"] += not torch.equal(out[~outside_b], a_only[~outside_b])

    calls = check_every_layer(chained, check)
    sample(chained, STEPS)
    assert len(calls) == LAYERS * STEPS  # cond and uncond batched: one call per layer per step
    assert acted == {"A": LAYERS * STEPS, "B": LAYERS * STEPS}  # each subject acts inside its own mask


def test_both_masks_full_equal_the_two_subjects_chained_without_masks_bit_for_bit(world, second):
    full = torch.ones(1, 40, 40)  # another size than the latent: bilinear keeps a constant 1 exact
    masked = apply(second, attn_mask=full, model=apply(world, attn_mask=full))
    plain = sample(apply(second, model=apply(world)), STEPS)
    # addcmul(x, t, 1) and x + t round the same sum once
    assert torch.equal(sample(masked, STEPS), plain)
    assert not torch.equal(plain, sample(apply(world), STEPS))  # the second subject acts


def test_where_two_masks_overlap_the_two_terms_add(world, second, flexip_pack):
    first, other = columns(16, 16, 0, 10), columns(16, 16, 6, 16)  # overlap: columns 6..9
    chained = apply(second, attn_mask=other, model=apply(world, attn_mask=first))
    LayerPatch = flexip_pack.nodes.patch.LayerPatch
    overlaps = []

    def check(patch, q, k, v, extra_options, out):
        text = text_only(q, k, v, extra_options)
        a_only = patch.previous(q, k, v, extra_options)
        b_only = LayerPatch(patch.state, patch.index, None)(q, k, v, extra_options)
        both = ((layer_mask(first, q, extra_options) > 0) & (layer_mask(other, q, extra_options) > 0)).expand_as(out)
        overlaps.append(int(both.sum()))
        assert not torch.equal(out[both], a_only[both]) and not torch.equal(out[both], b_only[both])
        # out = (text + A) + B against (text + A) + (text + B) - text: a few ulps of the scale (1e-6 ~ 8 ulps)
        atol = 1e-6 * float(out.abs().max())
        torch.testing.assert_close(out[both], (a_only + b_only - text)[both], rtol=0, atol=atol)

    check_every_layer(chained, check)
    sample(chained, STEPS)
    assert min(overlaps) > 0


def test_each_subject_reads_its_own_gate_schedule_at_every_layer_and_step(world, second, flexip_pack):
    schedule = node(flexip_pack, "FlexIPGateSchedule")
    falling = schedule.build("0:1, 1:0", "linear")[0]  # subject A: γ from 1 to 0 over sampling
    held = schedule.build("0.3", "linear", output_blocks="0.8")[0]  # subject B: 0.3, 0.8 in the output blocks
    chained = apply(second, gate=held, model=apply(world, gate=falling))
    read: list[tuple[str, float, float, float]] = []

    def check(patch, q, k, v, extra_options, out):
        first, other = patch.previous, patch
        gamma_a = extra_options[first.state.options_key].gates[first.index]
        gamma_b = extra_options[other.state.options_key].gates[other.index]
        read.append((extra_options["block"][0], float(extra_options["sigmas"][0]), float(gamma_a), float(gamma_b)))

    check_every_layer(chained, check)
    sample(chained, STEPS)
    sigmas = comfy.samplers.calculate_sigmas(world["model"].get_model_object("model_sampling"), "normal", STEPS)
    assert len(read) == LAYERS * STEPS
    for step in range(STEPS):
        at_step = [entry for entry in read if entry[1] == pytest.approx(float(sigmas[step]), rel=1e-6)]
        assert len(at_step) == LAYERS
        expected_a = 1.0 - progress_of(world["model"], float(sigmas[step]))
        for block, _, gamma_a, gamma_b in at_step:
            # γ from sigma: linear interpolation on a 1001-point progress grid (design.md §3.4)
            assert gamma_a == pytest.approx(expected_a, abs=1e-3)
            assert gamma_b == (0.8 if block == "output" else 0.3)  # held: exactly the value named


# --- one mask: grid, weights, batches -----------------------------------------------------------


@pytest.mark.parametrize(
    "height, width",
    [
        (8, 12),  # 2:3, as a 64x96 latent
        (7, 16),  # odd side: the half-size grid is 4x8 (a square-root estimate gave 4x9)
    ],
)
def test_a_mask_of_another_aspect_ratio_is_stretched_over_every_layer_grid(world, flexip_pack, height, width):
    mask = columns(40, 40, 0, 20)  # square, the left half
    patched = apply(world, attn_mask=mask)
    grids = set()

    def check(patch, q, k, v, extra_options, out):
        grids.add(tuple(extra_options["activations_shape"][-2:]))
        weight = layer_mask(mask, q, extra_options)
        assert (weight == 0).any() and (weight == 1).any()
        assert_weighted(
            out, text_only(q, k, v, extra_options), unmasked(flexip_pack, patch, q, k, v, extra_options), weight
        )

    check_every_layer(patched, check)
    sample_latent(patched, height, width, steps=2)
    assert grids == {(height, width), (-(-height // 2), -(-width // 2))}


def test_a_soft_mask_weights_the_subjects_term(world, flexip_pack):
    mask = torch.linspace(0.0, 1.0, 16).expand(1, 16, 16).clone()  # 0 at the left edge, 1 at the right
    patched = apply(world, attn_mask=mask)
    soft = []

    def check(patch, q, k, v, extra_options, out):
        weight = layer_mask(mask, q, extra_options)
        soft.append(int(((weight > 0) & (weight < 1)).sum()))
        assert_weighted(
            out, text_only(q, k, v, extra_options), unmasked(flexip_pack, patch, q, k, v, extra_options), weight
        )

    check_every_layer(patched, check)
    sample(patched, 2)
    assert min(soft) > 0


def test_mask_values_outside_zero_to_one_are_clamped(world):
    raw = torch.linspace(-0.5, 1.5, 16).expand(1, 16, 16).clone()
    assert torch.equal(sample(apply(world, attn_mask=raw), 2), sample(apply(world, attn_mask=raw.clamp(0, 1)), 2))


def test_a_mask_batch_gives_each_latent_image_its_own_mask(world, flexip_pack):
    masks = torch.cat([columns(16, 16, 0, 8), columns(16, 16, 8, 16)])  # image 0: left, image 1: right
    patched = apply(world, attn_mask=masks)

    def check(patch, q, k, v, extra_options, out):
        assert q.shape[0] == 4  # two chunks (cond, uncond) of two images
        weight = layer_mask(masks, q, extra_options)
        assert_weighted(
            out, text_only(q, k, v, extra_options), unmasked(flexip_pack, patch, q, k, v, extra_options), weight
        )

    calls = check_every_layer(patched, check)
    sample(patched, 2, batch=2)
    assert len(calls) == LAYERS * 2


def test_a_mask_count_that_fits_neither_one_nor_one_per_image_is_refused_in_one_sentence(world):
    patched = apply(world, attn_mask=torch.ones(3, 16, 16))
    with pytest.raises(FlexIPError) as error:
        sample(patched, 2, batch=2)
    assert_one_sentence(str(error.value), "FlexIPApply attn_mask", "3 masks", "2 images")


def test_an_empty_mask_changes_nothing_and_runs_no_adapter_work(world, second):
    empty = torch.zeros(1, 16, 16)
    alone = apply(world, attn_mask=empty)
    prepared = []

    def check(patch, q, k, v, extra_options, out):
        prepared.append(patch.state.options_key in extra_options)

    check_every_layer(alone, check)
    assert torch.equal(sample(alone, STEPS), sample(world["model"], STEPS))
    assert prepared and not any(prepared)  # the wrapper built no K/V and no call state
    # chained: the other subject alone, to the bit
    assert torch.equal(sample(apply(second, model=apply(world, attn_mask=empty)), STEPS), sample(apply(second), STEPS))


@pytest.mark.parametrize(
    "mask, mention",
    [
        ([[1.0, 0.0]], "is a list, not a MASK"),
        (torch.ones(1, 16, 16, 3), "has shape [1, 16, 16, 3]"),  # an IMAGE
        (torch.ones(0, 16, 16), "has shape [0, 16, 16]"),
        (torch.ones(16, 16, dtype=torch.int64), "torch.int64"),
        (torch.full((16, 16), float("nan")), "NaN"),
    ],
)
def test_a_mask_of_the_wrong_type_shape_or_values_is_refused_in_one_sentence(world, mask, mention):
    with pytest.raises(FlexIPError) as error:
        apply(world, attn_mask=mask)
    assert_one_sentence(str(error.value), "FlexIPApply attn_mask", mention)


# --- the token grid -------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(65, 96), (97, 128), (7, 16), (64, 96)])
def test_the_token_grid_is_the_latent_as_comfyuis_unet_downsamples_it(flexip_pack, height, width):
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample

    token_grid = flexip_pack.nodes.patch.token_grid
    downsample = Downsample(1, use_conv=True)  # the UNet's: a 3x3 stride-2 convolution, padding 1
    x = torch.zeros(1, 1, height, width)
    for _ in range(4):  # SD1.5's four levels
        grid = tuple(x.shape[-2:])
        assert token_grid(grid[0] * grid[1], height, width) == grid
        with torch.no_grad():
            x = downsample(x)


def test_a_layer_whose_tokens_fit_no_level_of_the_latent_is_refused_in_one_sentence(flexip_pack):
    with pytest.raises(FlexIPError) as error:
        flexip_pack.nodes.patch.token_grid(7, 16, 16)
    assert_one_sentence(str(error.value), "FlexIPApply attn_mask", "7 tokens", "16x16 latent")
