"""Config: layer lists from the UNet constants, JSON round trip, validation messages."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flexip_model import FlexIPConfig, FlexIPError, LayerSpec, config_for, default_layers, layer_key, parse_layer_key
from flexip_model.adapter import parameter_counts
from tests.support.assertions import assert_one_sentence

pytestmark = pytest.mark.unit


def test_sd15_has_the_16_standard_cross_attention_layers():
    layers = default_layers("sd15")
    assert [spec.key for spec in layers] == (
        [f"input_{i}_0" for i in (1, 2, 4, 5, 7, 8)] + ["middle_0_0"] + [f"output_{i}_0" for i in range(3, 12)]
    )
    widths = {spec.key: spec.inner_dim for spec in layers}
    picked = ("input_1_0", "input_4_0", "middle_0_0", "output_11_0")
    assert [widths[key] for key in picked] == [320, 640, 1280, 320]
    assert all(spec.heads == 8 for spec in layers)


def test_sdxl_has_70_layers_with_64_channel_heads():
    layers = default_layers("sdxl")
    assert len(layers) == 70
    blocks = [spec.block for spec in layers]
    assert (blocks.count("input"), blocks.count("middle"), blocks.count("output")) == (24, 10, 36)
    assert layers[0] == LayerSpec("input_4_0", 640, 10)
    assert [spec.key for spec in layers if spec.block == "middle"] == [f"middle_0_{j}" for j in range(10)]
    assert layers[-1] == LayerSpec("output_5_1", 640, 10)
    assert all(spec.inner_dim == 64 * spec.heads for spec in layers)


def test_layer_keys_round_trip_and_reject_garbage():
    assert parse_layer_key(layer_key("output", 11, 0)) == ("output", 11, 0)
    for bad in ("input-1-0", "attn_1_0", "input_1", 3):
        with pytest.raises(FlexIPError):
            parse_layer_key(bad)


def test_config_json_round_trips_for_both_bases():
    for base in ("sd15", "sdxl"):
        config = dataclasses.replace(config_for(base, tiny=True), gate_mode="token")
        assert FlexIPConfig.from_json(config.to_json(), "x.safetensors") == config


def test_sdxl_config_keeps_64_wide_personalization_heads():
    config = config_for("sdxl")
    assert (config.context_dim, config.personalization_heads) == (2048, 32)
    assert config.preservation_token_count == 20


def _json_with(**changes) -> str:
    data = json.loads(config_for("sd15", tiny=True).to_json())
    data.update(changes)
    return json.dumps(data)


def _json_without(key: str) -> str:
    data = json.loads(config_for("sd15", tiny=True).to_json())
    del data[key]
    return json.dumps(data)


@pytest.mark.parametrize(
    "text,mentions",
    [
        ("{not json", ["not JSON"]),
        ("[1, 2]", ["not a JSON object"]),
        (_json_with(format_version=2), ["format version 2", "update"]),
        (_json_with(context_dim="768"), ["context_dim"]),
        (_json_with(num_queries=True), ["num_queries"]),
        (_json_with(gate_mode="mixed"), ["gate_mode"]),
        (_json_with(base="sd3"), ["base 'sd3'"]),
        (_json_with(preservation_heads=5), ["preservation_width"]),
        (_json_with(surprise=1), ["unknown key", "surprise"]),
        (_json_without("gate_mode"), ["lacks the key 'gate_mode'"]),
        (_json_with(layers="input_1_0"), ["layers is 'input_1_0', expected a list of tables"]),
        (_json_with(layers=[5]), ["[layers.0] is 5, expected a table"]),
        (_json_with(layers=[{"key": "input_1_0", "inner_dim": 320}]), ["[layers.0] lacks the key 'heads'"]),
        (_json_with(layers=[{"key": "input_1_0", "inner_dim": 320.0, "heads": 8}]), ["[layers.0] inner_dim is 320.0"]),
        (_json_with(layers=[{"key": "input_1_0", "inner_dim": 320, "heads": 8}] * 2), ["input_1_0 twice"]),
        (_json_with(layers=[{"key": "input_1_0", "inner_dim": 320, "heads": 7}]), ["input_1_0"]),
        (_json_with(layers=[{"key": "down_1_0", "inner_dim": 320, "heads": 8}]), ["down_1_0"]),
        (_json_with(layers=[]), ["no UNet layers"]),
    ],
)
def test_bad_config_json_gives_one_sentence_naming_the_file(text, mentions):
    with pytest.raises(FlexIPError) as error:
        FlexIPConfig.from_json(text, "adapter.safetensors")
    assert_one_sentence(str(error.value), "adapter.safetensors", *mentions)


def test_default_parameter_counts():
    # reported in docs/training.md; a change here changes the checkpoint size users download
    assert parameter_counts(config_for("sd15")) == {
        "preservation": 47_627_520,
        "personalization": 17_313_792,
        "layers": 38_338_560,
        "total": 103_279_872,
    }
    assert parameter_counts(config_for("sdxl"))["total"] == 840_260_352
