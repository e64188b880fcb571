"""The shipped FlexIP workflows on a real ComfyUI server (generated SD1.5, CLIP-H, DINOv2-L, FlexIP files)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from tools.fixtures.adapters import FLEXIP_SD15_NAME, FLEXIP_SD15_STANDARD_NAME, FLEXIP_TEST_SDXL_NAME, link_adapters
from tools.fixtures.files import CLIP_VISION_H_NAME, DINOV2_LARGE_NAME
from tools.fixtures.images import drawn_subject
from tools.harness.server import ExecutionFailed, PromptRejected
from tools.harness.workflows import for_test_models, load_api, nodes_of, without_flexip

pytestmark = pytest.mark.server

_seeds = itertools.count(1000)  # identical prompts are served from cache: every run gets a new seed


@pytest.fixture(scope="module")
def server(comfy_server):
    # the SDXL file (made for the generated SDXL checkpoint) only for the family-mismatch case
    link_adapters(
        comfy_server.base_dir / "models", (FLEXIP_SD15_NAME, FLEXIP_SD15_STANDARD_NAME, FLEXIP_TEST_SDXL_NAME)
    )
    return comfy_server


@pytest.fixture(scope="module")
def subject(server):
    """The drawn subject (tools.fixtures.images), uploaded to the server's input/."""
    return server.upload_image(drawn_subject(), "flexip_subject_test.png")


def basic(subject, seed=None, **apply_inputs):
    prompt = for_test_models(load_api("flexip_basic_sd15"), seed if seed is not None else next(_seeds), subject)
    apply_node = nodes_of(prompt, "FlexIPApply")[0]
    prompt[apply_node]["inputs"].update(apply_inputs)
    return prompt


def test_basic_workflow_patches_every_layer_and_changes_the_image(server, subject):
    seed = next(_seeds)
    before = len(re.findall(r"FlexIP \(flexip_test_sd15.safetensors\): (\d+) of (\d+)", server.log_text()))
    with_flexip = server.pixels(basic(subject, seed))
    runs = re.findall(r"FlexIP \(flexip_test_sd15.safetensors\): (\d+) of (\d+)", server.log_text())
    assert len(runs) == before + 1
    patched, total = map(int, runs[-1])
    assert patched == total == 4  # the generated checkpoint's UNet: input 1, middle 0, output 0 and 1
    plain = server.pixels(without_flexip(basic(subject, seed)))
    assert np.abs(with_flexip - plain).max() > 0


def test_preservation_one_and_zero_give_different_images(server, subject):
    seed = next(_seeds)
    preserve = server.pixels(basic(subject, seed, preservation=1.0))
    personalize = server.pixels(basic(subject, seed, preservation=0.0))
    assert np.abs(preserve - personalize).max() > 0


def test_strength_zero_equals_the_unpatched_image_bit_for_bit(server, subject):
    seed = next(_seeds)
    assert np.array_equal(
        server.pixels(basic(subject, seed, strength=0.0)), server.pixels(without_flexip(basic(subject, seed)))
    )


def test_changing_only_the_gate_does_not_re_run_the_encoder(server, subject):
    seed = next(_seeds)
    first = basic(subject, seed, preservation=0.3)
    server.run(first)
    second_id = server.queue(basic(subject, seed, preservation=0.7))
    history = server.wait(second_id)
    cached = set()
    for kind, data in history["status"]["messages"]:
        if kind == "execution_cached":
            cached.update(data["nodes"])
    encode = nodes_of(first, "FlexIPEncodeSubject")[0]
    apply_node = nodes_of(first, "FlexIPApply")[0]
    assert encode in cached and apply_node not in cached


def _family_mismatch(prompt):
    prompt[nodes_of(prompt, "FlexIPLoader")[0]]["inputs"]["adapter_name"] = FLEXIP_TEST_SDXL_NAME
    return prompt


def _layer_mismatch(prompt):
    prompt[nodes_of(prompt, "FlexIPLoader")[0]]["inputs"]["adapter_name"] = FLEXIP_SD15_STANDARD_NAME
    return prompt


def _dino_in_clip_slot(prompt):
    prompt[nodes_of(prompt, "CLIPVisionLoader")[0]]["inputs"]["clip_name"] = DINOV2_LARGE_NAME
    return prompt


def _clip_in_dino_slot(prompt):
    prompt[nodes_of(prompt, "CLIPVisionLoader")[1]]["inputs"]["clip_name"] = CLIP_VISION_H_NAME
    return prompt


def _dino_missing(prompt):
    del prompt[nodes_of(prompt, "FlexIPEncodeSubject")[0]]["inputs"]["dino"]
    return prompt


def _mask_batch_mismatch(prompt):
    """Two reference images but three masks."""
    encode = nodes_of(prompt, "FlexIPEncodeSubject")[0]
    image = prompt[encode]["inputs"]["image"]
    prompt["90"] = {"class_type": "RepeatImageBatch", "inputs": {"image": image, "amount": 2}}
    prompt["91"] = {"class_type": "RepeatImageBatch", "inputs": {"image": image, "amount": 3}}
    prompt["92"] = {"class_type": "ImageToMask", "inputs": {"image": ["91", 0], "channel": "red"}}
    prompt[encode]["inputs"].update(image=["90", 0], mask=["92", 0])
    return prompt


def _malformed_schedule(prompt):
    prompt["93"] = {
        "class_type": "FlexIPGateSchedule",
        "inputs": {"keyframes": "0:1, half:0.2", "interpolation": "linear"},
    }
    prompt[nodes_of(prompt, "FlexIPApply")[0]]["inputs"]["gate"] = ["93", 0]
    return prompt


BAD_INPUTS = {
    "adapter for SDXL on an SD1.5 model": (
        _family_mismatch,
        "flexip_test_sdxl.safetensors is an SDXL adapter (context 2048) but the model is SD1.5 (context 768)",
    ),
    "adapter for other layers": (_layer_mismatch, "has 16 cross-attention layers but the model has 4"),
    "DINOv2 in the clip_vision input": (_dino_in_clip_slot, "clip_vision input got a DINOv2 encoder"),
    "CLIP in the dino input": (_clip_in_dino_slot, "dino input is not a DINOv2 encoder"),
    "no DINOv2 connected": (_dino_missing, "dino input is empty"),
    "mask batch does not match the images": (_mask_batch_mismatch, "got 2 images but 3 masks"),
    "malformed gate schedule": (_malformed_schedule, "'half:0.2', which is not 'progress:gamma'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_readable_error_and_the_next_prompt_runs(server, subject, case):
    break_prompt, message = BAD_INPUTS[case]
    with pytest.raises((ExecutionFailed, PromptRejected)) as error:
        server.run(break_prompt(basic(subject)))
    assert message in str(error.value)
    assert "Traceback" not in str(error.value).splitlines()[0]
    assert server.pixels(basic(subject)).shape == (128, 128, 3)
