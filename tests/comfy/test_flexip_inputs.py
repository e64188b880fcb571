"""FlexIPEncodeSubject, FlexIPGateSchedule and FlexIPApply input handling on real ComfyUI objects."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import flexip_model
from tools.fixtures.tiny import tiny_clip_vision, tiny_dino, tiny_unet_patcher

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def parts(flexip_pack):
    model = tiny_unet_patcher()
    fm = flexip_model
    layers = flexip_pack.nodes.layers.layer_specs_of(model.model.diffusion_model)
    config = dataclasses.replace(fm.config_for("sd15", tiny=True), layers=layers, clip_embed_dim=64, dino_dim=64)
    torch.manual_seed(0)
    flexip = flexip_pack.nodes.bundles.LoadedFlexIP.wrap("tiny_flexip.safetensors", fm.FlexIPAdapter(config))
    return dict(
        pack=flexip_pack, fm=fm, model=model, config=config, flexip=flexip, clip=tiny_clip_vision(), dino=tiny_dino()
    )


def encode(parts, image, batch_mode="average", mask=None, clip=None, dino="default", flexip=None):
    dino = parts["dino"] if dino == "default" else dino
    (subject,) = (
        parts["pack"]
        .node_classes["FlexIPEncodeSubject"]()
        .encode(flexip or parts["flexip"], clip or parts["clip"], image, batch_mode, dino=dino, mask=mask)
    )
    return subject


def images(count, seed=1):
    return torch.rand(count, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


def test_uncond_tokens_come_from_a_black_reference_image(parts, flexip_pack):
    clip_image_embeds, dino_tokens = (
        flexip_pack.nodes.encoders.clip_image_embeds,
        flexip_pack.nodes.encoders.dino_tokens,
    )

    subject = encode(parts, images(1))
    black = torch.zeros(1, 48, 64, 3)
    with torch.no_grad():
        expected = parts["flexip"].adapter.preservation_tokens(
            clip_image_embeds(parts["clip"], black), dino_tokens(parts["dino"], black, parts["config"].dino_resolution)
        )
    # same inputs through the same modules; 1e-5 covers batch-size-dependent matmul blocking
    torch.testing.assert_close(subject.tokens["preservation"][1:], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        subject.tokens["clip_embeds"][1:], clip_image_embeds(parts["clip"], black), atol=1e-5, rtol=1e-5
    )


def test_dino_features_are_read_at_the_configured_resolution(parts, flexip_pack):
    tokens = flexip_pack.nodes.encoders.dino_tokens(parts["dino"], images(2), 224)
    assert tokens.shape == (2, 1 + 16 * 16, 64)  # 224 px / 14 px patches, not ComfyUI's 518 px (1370 tokens)


def test_average_keeps_the_token_count_and_concat_multiplies_it(parts):
    count = parts["config"].preservation_token_count
    averaged = encode(parts, images(3), "average")
    concatenated = encode(parts, images(3), "concat")
    assert averaged.tokens["preservation"].shape == (2, count, 768)
    assert concatenated.tokens["preservation"].shape == (2, 3 * count, 768)
    assert averaged.image_count == concatenated.image_count == 3


def test_subject_mask_blacks_out_the_background(parts):
    image = images(1)
    mask = torch.zeros(1, 48, 64)
    masked = encode(parts, image, mask=mask)
    black = encode(parts, torch.zeros_like(image))
    torch.testing.assert_close(masked.tokens["preservation"][0], black.tokens["preservation"][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty batch", "image batch is empty"),
        ("mask batch", "got 2 images but 3 masks"),
        ("dino in clip_vision", "clip_vision input got a DINOv2 encoder"),
        ("clip in dino", "dino input is not a DINOv2 encoder"),
        ("no dino", "dino input is empty"),
        ("clip width", "expects 1024-d (CLIP ViT-H/14)"),
    ],
)
def test_encode_rejects_bad_inputs_with_one_clear_sentence(parts, case, message):
    fm = parts["fm"]
    arguments = dict(image=images(2))
    if case == "empty batch":
        arguments["image"] = torch.zeros(0, 48, 64, 3)
    elif case == "mask batch":
        arguments["mask"] = torch.ones(3, 48, 64)
    elif case == "dino in clip_vision":
        arguments["clip"] = parts["dino"]
    elif case == "clip in dino":
        arguments["dino"] = parts["clip"]
    elif case == "no dino":
        arguments["dino"] = None
    elif case == "clip width":
        config = dataclasses.replace(parts["config"], clip_embed_dim=1024)
        arguments["flexip"] = parts["pack"].nodes.bundles.LoadedFlexIP.wrap(
            "wide.safetensors", fm.FlexIPAdapter(config)
        )
    with pytest.raises(fm.FlexIPError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        encode(parts, **arguments)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")  # one sentence


def _apply(parts, subject, flexip=None, model=None, gate=None, start_at=0.0, end_at=1.0):
    return (
        parts["pack"]
        .node_classes["FlexIPApply"]()
        .apply(model or parts["model"], flexip or parts["flexip"], subject, 1.0, 0.5, start_at, end_at, gate=gate)
    )


def test_apply_names_both_families_when_the_adapter_is_for_sdxl(parts):
    fm = parts["fm"]
    config = dataclasses.replace(parts["config"], base="sdxl", context_dim=2048)
    sdxl = parts["pack"].nodes.bundles.LoadedFlexIP.wrap("flexip_sdxl.safetensors", fm.FlexIPAdapter(config))
    subject = encode(parts, images(1), flexip=sdxl)
    with pytest.raises(
        fm.FlexIPError, match=r"flexip_sdxl.safetensors is an SDXL adapter \(context 2048\) but the model is SD1.5"
    ):
        _apply(parts, subject, flexip=sdxl)


def test_apply_rejects_an_adapter_made_for_other_layers(parts):
    fm = parts["fm"]
    config = dataclasses.replace(parts["config"], layers=parts["config"].layers[:-1])
    short = parts["pack"].nodes.bundles.LoadedFlexIP.wrap("short.safetensors", fm.FlexIPAdapter(config))
    with pytest.raises(fm.FlexIPError, match="has 6 cross-attention layers but the model has 7"):
        _apply(parts, encode(parts, images(1), flexip=short), flexip=short)


def test_apply_rejects_a_subject_encoded_with_another_adapter(parts):
    fm = parts["fm"]
    other = parts["pack"].nodes.bundles.LoadedFlexIP.wrap("other.safetensors", fm.FlexIPAdapter(parts["config"]))
    with pytest.raises(fm.FlexIPError, match=r"encoded with other\.safetensors"):
        _apply(parts, encode(parts, images(1), flexip=other))


def test_apply_rejects_start_after_end(parts):
    with pytest.raises(parts["fm"].FlexIPError, match=r"start_at 0\.8 and end_at 0\.2"):
        _apply(parts, encode(parts, images(1)), start_at=0.8, end_at=0.2)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(keyframes="0:1, oops"), "'oops', which is not 'progress:gamma'"),
        (dict(keyframes="0:1.5"), "outside \\[0, 1\\]"),
        (dict(keyframes="0.5:1, 0.5:0"), "repeats a progress value"),
        (dict(keyframes="0:1", output_blocks="x"), "output_blocks"),
        (
            dict(keyframes="0:1", layer_indices="1,a", layer_keyframes="0.3"),
            "layer_indices '1,a' is not a list of integers",
        ),
        (
            dict(keyframes="0:1", layer_indices="0," * 1025, layer_keyframes="0.3"),
            "layer_indices has 1025 items, more than the 1024 accepted",
        ),
    ],
)
def test_malformed_schedule_gets_a_clear_error(parts, inputs, message):
    schedule = parts["pack"].node_classes["FlexIPGateSchedule"]()
    with pytest.raises(parts["fm"].FlexIPError, match=message):
        schedule.build(interpolation="linear", **inputs)


def test_dino_preprocessing_uses_the_hosts_current_clip_preprocess(flexip_pack):
    """Newer ComfyUI keeps comfy.clip_vision.clip_preprocess only as an alias marked for removal."""
    import comfy.clip_model
    import comfy.clip_vision

    current = getattr(comfy.clip_model, "clip_preprocess", None) or comfy.clip_vision.clip_preprocess
    assert flexip_pack.nodes.encoders.clip_preprocess is current
