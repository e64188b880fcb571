"""The FLUX nodes on a real ComfyUI server: listed in /object_info, and the shipped FLUX workflow run over HTTP.

The workflow's file loaders (FLUX, T5 + CLIP-L, VAE, the InfiniteYou files, the face nodes) are
swapped for a test-only pack (tests/server/flux_test_pack) whose nodes emit what they would, at
a size a CPU runs in seconds: a FLUX file needs hidden 3072 and ComfyUI builds T5-XXL at full
size. Everything after them is the real graph: FluxGuidance, ConditioningZeroOut, Apply FlexIP
InfiniteYou with the shipped gate schedule, EmptySD3LatentImage, KSampler, VAEDecode, SaveImage.
64 px and 3 steps: each prompt costs about a second.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.support.assertions import assert_one_sentence
from tools.harness.server import PACK_NAME, ComfyServer, ExecutionFailed
from tools.harness.workflows import load_api, nodes_of

pytestmark = pytest.mark.server

WORKFLOW = "flexip_infiniteyou_flux"
FLUX_PACK = "flexip_flux_test_pack"
FLUX_NODES = ("FlexIPInfiniteYouLoader", "FlexIPInfiniteYouFace", "FlexIPInfiniteYouApply")
SEED = 2025  # one seed for the images compared pixel for pixel
SIZE, STEPS = 64, 3
_seeds = itertools.count(5000)  # an identical prompt is served from cache: runs that must sample get a new seed

# (class of a shipped node, output slot) -> the test node output that stands in for it
STAND_INS = {
    ("UNETLoader", 0): ["flux", 0],
    ("VAELoader", 0): ["flux", 1],
    ("CLIPTextEncode", 0): ["text", 0],
    ("FlexIPInfiniteYouLoader", 0): ["infiniteyou", 0],
    ("FlexIPInfiniteYouFace", 0): ["infiniteyou", 1],
}
# the loaders and the face preview: the face nodes need an InsightFace pack and IR-SE50 weights
REPLACED = {
    "UNETLoader",
    "DualCLIPLoader",
    "VAELoader",
    "CLIPTextEncode",
    "FlexIPInfiniteYouLoader",
    "FlexIPInsightFaceLoader",
    "LoadImage",
    "FlexIPInfiniteYouFace",
    "PreviewImage",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfyui_path):
    """A server with ComfyUI-FlexIP and the FLUX test pack; no model files (the test pack builds its models)."""
    base = tmp_path_factory.mktemp("flux-server").resolve()
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / FLUX_PACK).symlink_to(Path(__file__).resolve().parent / "flux_test_pack")
    with ComfyServer(
        base, host_path=comfyui_path, models=False, extra_args=["--whitelist-custom-nodes", PACK_NAME, FLUX_PACK]
    ) as started:
        yield started


def flux(seed: int, gate: bool = True, **apply_inputs) -> dict:
    """The shipped FLUX workflow on the test pack's models, 64 px, 3 steps; `gate=False` unlinks the schedule."""
    shipped = load_api(WORKFLOW)
    prompt = {node_id: node for node_id, node in shipped.items() if node["class_type"] not in REPLACED}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = STAND_INS.get((shipped[value[0]]["class_type"], value[1]), value)
    prompt["flux"] = {"class_type": "FlexIPTestTinyFlux", "inputs": {"seed": 0}}
    prompt["text"] = {"class_type": "FlexIPTestFluxText", "inputs": {"seed": 0}}
    prompt["infiniteyou"] = {"class_type": "FlexIPTestInfiniteYou", "inputs": {}}
    links = [value for node in prompt.values() for value in node["inputs"].values() if isinstance(value, list)]
    assert all(link[0] in prompt for link in links), "a node of the shipped workflow reads a loader it lost"
    prompt[nodes_of(prompt, "EmptySD3LatentImage")[0]]["inputs"].update(width=SIZE, height=SIZE)
    prompt[nodes_of(prompt, "KSampler")[0]]["inputs"].update(seed=seed, steps=STEPS)
    apply = prompt[nodes_of(prompt, "FlexIPInfiniteYouApply")[0]]["inputs"]
    apply.update(apply_inputs)
    if not gate:
        del prompt[apply.pop("gate")[0]]
    return prompt


def without_apply(prompt: dict) -> dict:
    """The same graph with the sampler's positive straight from FluxGuidance (apply and schedule left out)."""
    sampler, apply = nodes_of(prompt, "KSampler")[0], nodes_of(prompt, "FlexIPInfiniteYouApply")[0]
    prompt[sampler]["inputs"]["positive"] = prompt[apply]["inputs"]["positive"]
    for node_id in (apply, *nodes_of(prompt, "FlexIPGateSchedule")):
        del prompt[node_id]
    return prompt


def differ(one: np.ndarray, other: np.ndarray) -> bool:
    """Visibly different: a mean difference over 1 level of 255 (the InfuseNets here move it by 9 to 13)."""
    return float(np.abs(one - other).mean()) > 1.0


@pytest.fixture(scope="module")
def unpatched(server) -> np.ndarray:
    return server.pixels(without_apply(flux(SEED)))


def test_the_three_flux_nodes_are_listed_by_the_server(server):
    listed = server.pack_nodes()
    assert set(FLUX_NODES) <= set(listed), listed
    apply = server.object_info("FlexIPInfiniteYouApply")
    assert apply["input"]["optional"]["gate"][0] == "FLEXIP_GATE"
    assert apply["output"] == ["CONDITIONING"]


def test_the_shipped_flux_graph_with_its_gate_schedule_gives_a_real_image(server, unpatched):
    image = server.pixels(flux(SEED))
    assert image.shape == (SIZE, SIZE, 3)
    # random weights give noise-like pictures (std ≈ 46 levels); a flat one (a failed decode, NaN -> 0) has std 0
    assert image.std() > 5 and unpatched.std() > 5
    assert differ(image, unpatched)


def test_strength_zero_equals_the_graph_without_the_apply_node_bit_for_bit(server, unpatched):
    assert np.array_equal(server.pixels(flux(SEED, strength=0.0)), unpatched)


def test_preservation_one_and_zero_give_different_images(server, unpatched):
    # γ = 1 runs sim_stage1 alone, γ = 0 aes_stage2 alone: two InfuseNets with different weights
    sim = server.pixels(flux(SEED, gate=False, preservation=1.0))
    aes = server.pixels(flux(SEED, gate=False, preservation=0.0))
    assert differ(sim, aes)
    assert differ(sim, unpatched) and differ(aes, unpatched)


def test_a_middle_block_override_fails_the_prompt_in_one_sentence_and_the_server_keeps_serving(server):
    prompt = flux(next(_seeds))
    prompt[nodes_of(prompt, "FlexIPGateSchedule")[0]]["inputs"]["middle_block"] = "0.5"  # FLUX has no middle block
    with pytest.raises(ExecutionFailed) as failure:
        server.run(prompt)
    errors = [data for event, data in failure.value.history["status"]["messages"] if event == "execution_error"]
    assert len(errors) == 1, failure.value.history["status"]
    assert errors[0]["node_type"] == "FlexIPInfiniteYouApply"
    assert errors[0]["exception_type"].endswith("FlexIPError")
    assert_one_sentence(errors[0]["exception_message"].strip(), "middle", "FlexIPGateSchedule")
    assert server.pixels(without_apply(flux(next(_seeds)))).shape == (SIZE, SIZE, 3)
