"""The shared vocabulary: attn2 module names, model families and reference masks, each defined once."""

from __future__ import annotations

import random

import pytest
import torch

from flexip_model import FlexIPError
from flexip_model.config import default_layers
from flexip_model.vocabulary import (
    BASES,
    attn2_layer,
    base_of,
    comfy_order,
    context_dim_for,
    family_name,
    image_masks,
    layer_key,
    mask_batch,
    parse_layer_key,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name, layer",
    [
        ("input_blocks.1.1.transformer_blocks.0.attn2", ("input", 1, 0)),
        ("middle_block.1.transformer_blocks.9.attn2", ("middle", 0, 9)),
        ("output_blocks.11.1.transformer_blocks.2.attn2", ("output", 11, 2)),
    ],
)
def test_attn2_module_names_parse_to_their_layer(name, layer):
    assert attn2_layer(name) == layer


@pytest.mark.parametrize(
    "name",
    [
        "input_blocks.1.1.transformer_blocks.0.attn1",  # self-attention
        "input_blocks.1.transformer_blocks.0.attn2",  # an input block without its id
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k",  # a child of the layer
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2",  # prefix left on
        "input_blocks.1234567.1.transformer_blocks.0.attn2",  # an id no real UNet has
    ],
)
def test_other_module_names_are_not_attn2_layers(name):
    assert attn2_layer(name) is None


def test_comfy_order_sorts_input_then_middle_then_output_by_id():
    # the standard layer lists are built in ComfyUI's order: sorting a shuffled copy must restore it
    for base in BASES:
        keys = [spec.key for spec in default_layers(base)]
        layers = [parse_layer_key(key) for key in keys]
        random.Random(0).shuffle(layers)
        assert [layer_key(*layer) for layer in sorted(layers, key=comfy_order)] == keys


def test_families_by_context_width_round_trip_and_name_unknown_widths():
    assert [context_dim_for(base) for base in BASES] == [768, 2048]
    assert [base_of(context_dim_for(base)) for base in BASES] == list(BASES)
    assert (family_name(768), family_name(2048), family_name(1024)) == ("SD1.5", "SDXL", "context 1024")
    assert base_of(1024) == "" and base_of(None) == ""
    with pytest.raises(FlexIPError, match="base 'sd2' is unknown"):
        context_dim_for("sd2")


def test_one_mask_is_resized_to_the_images_and_kept_for_all():
    mask = torch.zeros(4, 4)
    mask[:2] = 1.0
    resized = image_masks(mask, count=3, size=(8, 8), where="FlexIPEncodeSubject")
    assert resized.shape == (1, 8, 8) and resized.dtype == torch.float32
    # bilinear: the top quarter stays 1, the bottom quarter stays 0
    assert torch.equal(resized[0, :2], torch.ones(2, 8)) and torch.equal(resized[0, 6:], torch.zeros(2, 8))


def test_a_mask_count_that_fits_neither_one_nor_one_per_image_is_one_sentence():
    with pytest.raises(FlexIPError) as error:
        image_masks(torch.ones(2, 4, 4), count=3, size=(4, 4), where="FlexIPEncodeSubject")
    assert str(error.value) == (
        "FlexIPEncodeSubject got 3 images but 2 masks: give one mask for all images or one per image."
    )


def test_mask_batch_adds_the_batch_axis_and_makes_floats():
    assert mask_batch(torch.ones(4, 5, dtype=torch.bool)).shape == (1, 4, 5)
    assert mask_batch(torch.ones(2, 4, 5, dtype=torch.float16)).dtype == torch.float32
