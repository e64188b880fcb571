"""Compatibility mode, file side: real IP-Adapter layouts are parsed, detected and matched to UNet layers.

Files are built with the exact tensor names and shapes of the h94/IP-Adapter releases
(tools/fixtures/ip_adapter_files.py; at full size they have the releases' byte sizes:
ip-adapter_sd15 44.6 MB, ip-adapter-plus_sd15 98.2 MB, ip-adapter_sdxl_vit-h 698 MB).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from flexip_model.config import LayerSpec, default_layers
from flexip_model.errors import FlexIPError
from flexip_model.ip_adapter import describe, ip_adapter_order, load_pair, open_file
from tests.support.assertions import assert_one_sentence
from tests.unit.flexip_unit_helpers import load_one_file
from tools.fixtures.ip_adapter_files import (
    build_ip_adapter,
    ip_adapter_file,
    ip_adapter_shapes,
    random_weights,
)

pytestmark = pytest.mark.unit

# Cross-attention layers in the files' numbering (ip_adapter.<2n+1> is layer n), written out from
# diffusers' UNet2DConditionModel, which registers down_blocks, up_blocks, then mid_block:
# SD1.5 down_blocks 0-2 hold 2 attentions each (input blocks 1, 2, 4, 5, 7, 8), up_blocks 1-3 hold 3
# (output blocks 3-11), the mid block 1. SDXL: down_blocks 1 and 2 (input 4, 5 with 2 transformer
# layers, input 7, 8 with 10), up_blocks 0 and 1 (output 0-2 with 10, output 3-5 with 2), mid with 10.
SD15_IP_ORDER = [
    "input_1_0",
    "input_2_0",
    "input_4_0",
    "input_5_0",
    "input_7_0",
    "input_8_0",
    "output_3_0",
    "output_4_0",
    "output_5_0",
    "output_6_0",
    "output_7_0",
    "output_8_0",
    "output_9_0",
    "output_10_0",
    "output_11_0",
    "middle_0_0",
]
SDXL_IP_ORDER = (
    [f"input_{b}_{i}" for b in (4, 5) for i in range(2)]
    + [f"input_{b}_{i}" for b in (7, 8) for i in range(10)]
    + [f"output_{b}_{i}" for b in (0, 1, 2) for i in range(10)]
    + [f"output_{b}_{i}" for b in (3, 4, 5) for i in range(2)]
    + [f"middle_0_{i}" for i in range(10)]
)
IP_ORDER = {"sd15": SD15_IP_ORDER, "sdxl": SDXL_IP_ORDER}
CONTEXT = {"sd15": 768, "sdxl": 2048}

# name -> (variant, base, CLIP feature, feature width, tokens per image)
RELEASED = {
    "ip-adapter_sd15": ("base", "sd15", "image_embeds", 1024, 4),
    "ip-adapter_sd15_light": ("light", "sd15", "image_embeds", 1024, 4),
    "ip-adapter-plus_sd15": ("plus", "sd15", "penultimate_hidden_states", 1280, 16),
    "ip-adapter-plus-face_sd15": ("plus-face", "sd15", "penultimate_hidden_states", 1280, 16),
    "ip-adapter_sdxl_vit-h": ("base", "sdxl", "image_embeds", 1024, 4),
    "ip-adapter-plus_sdxl_vit-h": ("plus", "sdxl", "penultimate_hidden_states", 1280, 16),
    "ip-adapter-plus-face_sdxl_vit-h": ("plus-face", "sdxl", "penultimate_hidden_states", 1280, 16),
}
FOUR_LAYERS = (
    LayerSpec("input_1_0", 320, 8),
    LayerSpec("middle_0_0", 320, 8),
    LayerSpec("output_0_0", 320, 8),
    LayerSpec("output_1_0", 320, 8),
)  # the generated SD1.5 test checkpoint


def test_layer_order_is_diffusers_down_up_mid():
    assert [spec.key for spec in ip_adapter_order(default_layers("sd15"))] == SD15_IP_ORDER
    assert [spec.key for spec in ip_adapter_order(default_layers("sdxl"))] == SDXL_IP_ORDER
    assert [spec.key for spec in ip_adapter_order(FOUR_LAYERS)] == [
        "input_1_0",
        "output_0_0",
        "output_1_0",
        "middle_0_0",
    ]


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_files_are_detected_and_every_layer_lands_on_its_unet_layer(name):
    variant, base, feature, width, tokens = RELEASED[name]
    path = ip_adapter_file(name)
    branch = load_one_file(path, default_layers(base), CONTEXT[base])
    spec = branch.spec
    assert (spec.variant, spec.base, spec.feature, spec.feature_dim, spec.tokens) == (
        variant,
        base,
        feature,
        width,
        tokens,
    )
    assert spec.encoder == "CLIP ViT-H/14"
    tensors = load_file(str(path))
    assert len(spec.layer_widths) == len(IP_ORDER[base])
    for number, key in enumerate(IP_ORDER[base]):
        assert torch.equal(branch.layers[key].to_k.weight, tensors[f"ip_adapter.{2 * number + 1}.to_k_ip.weight"]), key
        assert torch.equal(branch.layers[key].to_v.weight, tensors[f"ip_adapter.{2 * number + 1}.to_v_ip.weight"]), key
    for name_, tensor in branch.image_proj.state_dict().items():
        assert torch.equal(tensor, tensors[f"image_proj.{name_}"]), name_
    features = torch.randn(1, width) if feature == "image_embeds" else torch.randn(1, 257, width)
    with torch.no_grad():
        assert branch.image_proj.float()(features).shape == (1, tokens, CONTEXT[base])


@pytest.mark.parametrize("name", ["ip-adapter_sd15", "ip-adapter-plus_sd15"])
def test_original_bin_layout_loads_the_same_weights_as_safetensors(name):
    from_bin = load_one_file(ip_adapter_file(name, ".bin"), default_layers("sd15"), 768)
    from_safetensors = load_one_file(ip_adapter_file(name), default_layers("sd15"), 768)
    assert from_bin.spec.describe().replace(".bin", "") == from_safetensors.spec.describe().replace(".safetensors", "")
    bin_state, safetensors_state = from_bin.state_dict(), from_safetensors.state_dict()
    assert bin_state.keys() == safetensors_state.keys()
    assert all(torch.equal(bin_state[key], safetensors_state[key]) for key in bin_state)


def test_full_face_and_clip_bigg_files_are_told_apart_by_shape():
    full_face = describe("ip-adapter-full-face_sd15.safetensors", ip_adapter_shapes("ip-adapter-full-face_sd15"))
    assert (full_face.variant, full_face.feature, full_face.feature_dim, full_face.tokens) == (
        "full-face",
        "penultimate_hidden_states",
        1280,
        0,
    )
    big_g = describe("ip-adapter_sdxl.safetensors", ip_adapter_shapes("ip-adapter_sdxl"))
    assert (big_g.variant, big_g.base, big_g.feature_dim, big_g.encoder) == ("base", "sdxl", 1280, "CLIP ViT-bigG/14")


def test_pair_is_an_output_mode_flexip_over_the_model_layers():
    layers = default_layers("sd15")
    pair = load_pair(ip_adapter_file("ip-adapter-plus_sd15"), ip_adapter_file("ip-adapter_sd15"), layers, 768)
    assert pair.config.gate_mode == "output" and pair.config.layers == layers and pair.config.context_dim == 768
    assert pair.preservation.spec.variant == "plus" and pair.personalization.spec.variant == "base"
    assert pair.needs_neutral_image
    assert {branch.feature for branch in pair.branches} == {"image_embeds", "penultimate_hidden_states"}


def _error(call) -> str:
    with pytest.raises(FlexIPError) as error:
        call()
    return str(error.value)


def test_sdxl_file_for_an_sd15_model_is_refused_from_the_header():
    message = _error(lambda: load_one_file(ip_adapter_file("ip-adapter_sdxl_vit-h"), default_layers("sd15"), 768))
    assert_one_sentence(message, "ip-adapter_sdxl_vit-h.safetensors", "SDXL", "SD1.5", "context 768")


def test_file_for_another_layer_count_is_refused():
    message = _error(lambda: load_one_file(ip_adapter_file("ip-adapter_sd15"), FOUR_LAYERS, 768))
    assert_one_sentence(message, "ip-adapter_sd15.safetensors", "16 cross-attention layers", "the model has 4")


def test_file_whose_layer_widths_do_not_fit_the_model_is_refused(tmp_path):
    path = build_ip_adapter(
        tmp_path / "ip-adapter_sd15.safetensors", "ip-adapter_sd15", layer_widths=(320, 320, 640, 320)
    )
    message = _error(lambda: load_one_file(path, FOUR_LAYERS, 768))
    assert_one_sentence(message, "ip-adapter_sd15.safetensors", "layer 5", "640", "output_1_0", "320")


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_face_id_files_are_refused(tmp_path, suffix):
    path = build_ip_adapter(
        tmp_path / f"ip-adapter-faceid_sd15{suffix}", "ip-adapter-faceid_sd15", layer_widths=(320,) * 4
    )
    assert_one_sentence(
        _error(lambda: load_one_file(path, FOUR_LAYERS, 768)),
        f"ip-adapter-faceid_sd15{suffix}",
        "FaceID",
        "InsightFace",
    )


def test_face_id_plus_files_are_refused():
    shapes = ip_adapter_shapes("ip-adapter_sd15")
    shapes["image_proj.perceiver_resampler.proj_in.weight"] = (768, 1280)
    assert_one_sentence(_error(lambda: describe("ip-adapter-faceid-plusv2_sd15.bin", shapes)), "FaceID")


class _RunsCode:
    """Unpickling it would flip `ran`; weights_only loading must refuse first."""

    ran = False

    def __setstate__(self, state):
        type(self).ran = True


def test_bin_that_needs_full_unpickling_is_refused_without_running_it(tmp_path):
    path = build_ip_adapter(tmp_path / "ip-adapter_sd15.bin", "ip-adapter_sd15", layer_widths=(320,) * 4)
    nested = torch.load(str(path), weights_only=True)
    nested["image_proj"]["note"] = _RunsCode()
    torch.save(nested, str(path))
    message = _error(lambda: load_one_file(path, FOUR_LAYERS, 768))
    assert_one_sentence(message, "ip-adapter_sd15.bin", "unpickling", ".safetensors")
    assert not _RunsCode.ran


@pytest.mark.parametrize(
    "damage,mentions",
    [
        ("missing", ["lacks", "image_proj.norm.bias"]),
        ("shape", ["image_proj.norm.bias", "[700]", "[768]"]),
        ("layer_shape", ["ip_adapter.3.to_v_ip.weight", "[320, 700]", "[320, 768]"]),
        ("extra", ["unexpected", "image_proj.extra"]),
        ("numbering", ["numbers its layers", "1, 3, 5"]),
        ("unknown_layer_tensor", ["ip_adapter.1.to_out_ip.weight"]),
        ("not_ip_adapter", ["not an IP-Adapter file"]),
    ],
)
def test_damaged_or_foreign_files_are_refused_with_the_tensor_named(tmp_path, damage, mentions):
    tensors = random_weights(ip_adapter_shapes("ip-adapter_sd15", layer_widths=(320,) * 4))
    if damage == "missing":
        del tensors["image_proj.norm.bias"]
    elif damage == "shape":
        tensors["image_proj.norm.bias"] = torch.zeros(700, dtype=torch.float16)
    elif damage == "layer_shape":
        tensors["ip_adapter.3.to_v_ip.weight"] = torch.zeros(320, 700, dtype=torch.float16)
    elif damage == "extra":
        tensors["image_proj.extra"] = torch.zeros(3)
    elif damage == "numbering":
        tensors = {name.replace("ip_adapter.1.", "ip_adapter.0."): t for name, t in tensors.items()}
    elif damage == "unknown_layer_tensor":
        tensors["ip_adapter.1.to_out_ip.weight"] = torch.zeros(320, 320)
    else:
        tensors = {"preservation.proj_in.weight": torch.zeros(4, 4)}
    path = tmp_path / "ip-adapter_sd15.safetensors"
    save_file(tensors, str(path))
    assert_one_sentence(_error(lambda: load_one_file(path, FOUR_LAYERS, 768)), "ip-adapter_sd15.safetensors", *mentions)


def test_unreadable_files_are_refused(tmp_path):
    truncated = tmp_path / "ip-adapter_sd15.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert_one_sentence(_error(lambda: open_file(truncated)), "ip-adapter_sd15.safetensors", "download")
    not_torch = tmp_path / "ip-adapter_sd15.bin"
    not_torch.write_bytes(b"plain text")
    assert_one_sentence(_error(lambda: open_file(not_torch)), "ip-adapter_sd15.bin", "download")
    other = tmp_path / "ip-adapter_sd15.onnx"
    other.write_bytes(b"")
    assert_one_sentence(_error(lambda: open_file(other)), "ip-adapter_sd15.onnx", ".safetensors")
    assert_one_sentence(_error(lambda: open_file(tmp_path / "missing.safetensors")), "missing.safetensors", "not found")


def test_bin_with_other_top_level_keys_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, str(path))
    assert_one_sentence(_error(lambda: open_file(path)), "model.bin", "image_proj", "ip_adapter")


def test_pair_of_different_base_families_is_refused_before_layers_are_matched():
    message = _error(
        lambda: load_pair(
            ip_adapter_file("ip-adapter_sd15"), ip_adapter_file("ip-adapter_sdxl_vit-h"), default_layers("sd15")
        )
    )
    assert_one_sentence(message, "ip-adapter_sd15.safetensors", "ip-adapter_sdxl_vit-h.safetensors", "same base model")
