"""Compatibility mode end to end: the shipped pair workflow on a real server and the generated SD1.5 checkpoint.

At γ = 1 (γ = 0) the image must be the one plain IP-Adapter gives with the preservation
(personalization) file, rendered on the same server by a test-only node that runs the
float64 reference (tests/server/compat_reference_pack). The IP-Adapter files have the real
tensor names and image projections (CLIP-H: 1024-d embeddings, 1280-d hidden states) and the
four cross-attention layers of the generated checkpoint (input 1, output 0, output 1, middle 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.fixtures.images import drawn_subject
from tools.fixtures.ip_adapter_files import build_ip_adapter
from tools.harness.server import PACK_NAME, ComfyServer, ExecutionFailed
from tools.harness.workflows import for_test_models, load_api, nodes_of, without_flexip
from tests.unit.flexip_unit_helpers import assert_one_sentence

pytestmark = pytest.mark.server

REFERENCE_PACK = "flexip_ipadapter_reference"
PRESERVATION, PERSONALIZATION = "ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors"
CHECKPOINT_WIDTHS = (320,) * 4  # the generated SD1.5 UNet: one level of 320 channels
STRENGTH = 0.8
SEED = 2024


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfyui_path):
    """A server with ComfyUI-FlexIP, the reference pack, the generated models and the two IP-Adapter files."""
    base = tmp_path_factory.mktemp("compat-server").resolve()
    ipadapter = base / "models" / "ipadapter"
    ipadapter.mkdir(parents=True)
    build_ip_adapter(ipadapter / PRESERVATION, "ip-adapter-plus_sd15", seed=1, layer_widths=CHECKPOINT_WIDTHS)
    build_ip_adapter(ipadapter / PERSONALIZATION, "ip-adapter_sd15", seed=2, layer_widths=CHECKPOINT_WIDTHS)
    build_ip_adapter(ipadapter / "ip-adapter_sdxl_vit-h.safetensors", "ip-adapter_sdxl_vit-h", seed=3,
                     layer_widths=(640, 640, 1280, 1280))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / REFERENCE_PACK).symlink_to(Path(__file__).resolve().parent / "compat_reference_pack")
    with ComfyServer(base, host_path=comfyui_path,
                     extra_args=["--whitelist-custom-nodes", PACK_NAME, REFERENCE_PACK]) as started:
        yield started


@pytest.fixture(scope="module")
def subject(server):
    """The drawn subject (tools.fixtures.images), uploaded to the server's input/."""
    return server.upload_image(drawn_subject(), "flexip_compat_subject.png")


def compat(subject, seed=SEED, **apply_inputs):
    """The shipped workflow on the test models (64 px, 2 steps), FlexIPApply inputs overridden."""
    prompt = for_test_models(load_api("flexip_compat_sd15"), seed, subject, size=64, steps=2)
    prompt[nodes_of(prompt, "FlexIPApply")[0]]["inputs"].update(apply_inputs)
    return prompt


def plain_ip_adapter(subject, ipadapter_file, weight):
    """The same graph with the reference node in place of the pair loader, encoder and FlexIPApply."""
    prompt = compat(subject)
    apply_node = nodes_of(prompt, "FlexIPApply")[0]
    for class_type in ("FlexIPAdapterPairLoader", "FlexIPEncodeSubject"):
        del prompt[nodes_of(prompt, class_type)[0]]
    prompt[apply_node] = {"class_type": "IPAdapterReferenceApply", "inputs": {
        "model": [nodes_of(prompt, "CheckpointLoaderSimple")[0], 0],
        "clip_vision": [nodes_of(prompt, "CLIPVisionLoader")[0], 0],
        "image": [nodes_of(prompt, "LoadImage")[0], 0],
        "ipadapter_file": ipadapter_file, "weight": weight}}
    return prompt


@pytest.fixture(scope="module")
def unpatched(server, subject):
    """The image of the same graph without any adapter (KSampler fed by the checkpoint's model)."""
    return server.pixels(without_flexip(compat(subject)), timeout=900)


@pytest.mark.parametrize("gate,ipadapter_file", [(1.0, PRESERVATION), (0.0, PERSONALIZATION)],
                         ids=["gate1-is-plain-plus", "gate0-is-plain-base"])
def test_gate_extreme_renders_the_plain_ip_adapter_image(server, subject, unpatched, gate, ipadapter_file):
    flexip = server.pixels(compat(subject, strength=STRENGTH, preservation=gate), timeout=900)
    expected = server.pixels(plain_ip_adapter(subject, ipadapter_file, STRENGTH), timeout=900)
    # both run in fp32 on the CPU (the reference's attention in float64); after decoding to 8 bits a
    # ~1e-6 relative difference can flip a rounding, never more than one level
    assert np.abs(flexip - expected).max() <= 1
    assert np.abs(flexip - unpatched).max() > 1  # not vacuous: the adapter visibly changes the image


def test_pair_loader_is_labelled_as_compatibility_mode(server):
    info = server.object_info("FlexIPAdapterPairLoader")
    assert info["display_name"] == "Load IP-Adapter Pair (FlexIP compatibility mode)"
    assert "not trained FlexIP" in info["description"]
    files = info["input"]["required"]["preservation"][0]
    assert {PRESERVATION, PERSONALIZATION} <= set(files)


def test_sdxl_file_on_the_sd15_checkpoint_fails_with_one_sentence(server, subject):
    prompt = compat(subject)
    prompt[nodes_of(prompt, "FlexIPAdapterPairLoader")[0]]["inputs"]["personalization"] = "ip-adapter_sdxl_vit-h.safetensors"
    with pytest.raises(ExecutionFailed) as error:
        server.run(prompt)
    message = next(data["exception_message"] for kind, data in error.value.history["status"]["messages"]
                   if kind == "execution_error")
    assert_one_sentence(message.strip(), "ip-adapter_sdxl_vit-h.safetensors", "SDXL", "SD1.5")


def test_start_here_workflow_runs_end_to_end_and_the_adapter_changes_the_image(server, subject, unpatched):
    # the README's first workflow, as shipped (public file names mapped to the generated ones)
    prompt = for_test_models(load_api("flexip_start_here_sd15"), SEED, subject, size=64, steps=2)
    image = server.pixels(prompt, timeout=900)
    assert image.shape == unpatched.shape
    assert np.abs(image - unpatched).max() > 1  # the IP-Adapter pair visibly acts (8-bit levels)
