"""The shipped SDXL workflow on a real ComfyUI server: the generated SDXL checkpoint (detected as
SDXL by ComfyUI, full CLIP-L + bigG text encoders, TAESD-XL), CLIP-H, DINOv2-L and an SDXL FlexIP
file made for that checkpoint. 128 px and 2 steps: each sampling run costs seconds, not minutes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors import safe_open

from tools.fixtures.adapters import FLEXIP_SD15_NAME, FLEXIP_TEST_SDXL_NAME, link_adapters
from tools.fixtures.files import link_sdxl_checkpoint, sdxl_checkpoint
from tools.fixtures.images import drawn_subject
from tools.harness.server import ExecutionFailed
from tools.harness.workflows import for_test_models, load_api, nodes_of, without_flexip

pytestmark = pytest.mark.server

SEED = 2024  # one seed for the runs that are compared pixel for pixel
SIZE, STEPS = 128, 2
_PATCHED = re.compile(rf"FlexIP \({re.escape(FLEXIP_TEST_SDXL_NAME)}\): (\d+) of (\d+)")


@pytest.fixture(scope="module")
def server(comfy_server):
    models = comfy_server.base_dir / "models"
    link_sdxl_checkpoint(models)
    link_adapters(models, (FLEXIP_TEST_SDXL_NAME, FLEXIP_SD15_NAME))  # the SD1.5 one for the mismatch
    return comfy_server


@pytest.fixture(scope="module")
def subject(server):
    """The drawn subject (tools.fixtures.images), uploaded to the server's input/."""
    return server.upload_image(drawn_subject(), "flexip_subject_sdxl_test.png")


def sdxl(subject, **apply_inputs):
    prompt = for_test_models(load_api("flexip_basic_sdxl"), SEED, subject, size=SIZE, steps=STEPS)
    prompt[nodes_of(prompt, "FlexIPApply")[0]]["inputs"].update(apply_inputs)
    return prompt


@pytest.fixture(scope="module")
def unpatched(server, subject) -> np.ndarray:
    """The workflow's image with the KSampler fed by the checkpoint's own model (same seed)."""
    return server.pixels(without_flexip(sdxl(subject)), timeout=600)


def _checkpoint_cross_attention_count() -> int:
    """attn2 layers in the generated checkpoint's UNet, counted from its tensor names."""
    with safe_open(str(sdxl_checkpoint()), framework="pt") as handle:
        return sum(
            1
            for key in handle.keys()  # noqa: SIM118 (safe_open has keys() but is not iterable)
            if key.startswith("model.diffusion_model.") and key.endswith(".attn2.to_k.weight")
        )


def test_sdxl_workflow_patches_every_cross_attention_layer_and_changes_the_image(server, subject, unpatched):
    before = len(_PATCHED.findall(server.log_text()))
    image = server.pixels(sdxl(subject), timeout=600)
    runs = _PATCHED.findall(server.log_text())
    assert len(runs) == before + 1
    patched, total = map(int, runs[-1])
    # input 4, 5, 7, 8 (2, 2, 10, 10 blocks), middle 0, output 0-5: see tools.fixtures.files.sdxl_checkpoint
    assert patched == total == _checkpoint_cross_attention_count() == 31
    assert image.shape == (SIZE, SIZE, 3)
    assert np.abs(image - unpatched).max() > 0


def test_sdxl_strength_zero_equals_the_unpatched_image_bit_for_bit(server, subject, unpatched):
    assert np.array_equal(server.pixels(sdxl(subject, strength=0.0), timeout=600), unpatched)


def test_sd15_adapter_on_the_sdxl_model_gets_one_sentence_naming_both_families(server, subject):
    prompt = sdxl(subject)
    prompt[nodes_of(prompt, "FlexIPLoader")[0]]["inputs"]["adapter_name"] = FLEXIP_SD15_NAME
    with pytest.raises(ExecutionFailed) as error:
        server.run(prompt, timeout=600)
    first_line = str(error.value).splitlines()[0]
    assert "FlexIPApply" in first_line and "FlexIPError" in first_line
    assert first_line.endswith(
        f": {FLEXIP_SD15_NAME} is an SD1.5 adapter (context 768) but the model is SDXL (context 2048): "
        "load an SDXL FlexIP file or an SD1.5 checkpoint."
    )
