"""The two-subject workflows on a real ComfyUI server: each gives a real image, and the second subject
changes it, most where its mask is.

`flexip_two_subjects_sd15` runs as shipped on the generated SD1.5 checkpoint and two IP-Adapter files
(public names mapped to generated models; 64 px, 2 steps), with two different drawn subjects.
`flexip_two_identities_flux` runs after its loaders, which the FLUX test pack stands in for as in
tests/server/test_flux_server.py; face B gets an identity of its own (FlexIPTestInfiniteYouIdentity).
Both masks come from ComfyUI's own SolidMask and MaskComposite nodes, at the shipped sizes (the
latent here is smaller: a mask of any size is resized to each block). What a mask confines, layer by
layer, is checked in-process by the comfy tests; in the image, subject B (right mask) changes the
right half most, and the left too, through the layers that mix tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.server.test_flux_server import FLUX_PACK, REPLACED, STAND_INS
from tools.fixtures.images import drawn_subject
from tools.fixtures.ip_adapter_files import build_ip_adapter_pair
from tools.harness.server import PACK_NAME, ComfyServer
from tools.harness.workflows import for_test_models, load_api, nodes_of

pytestmark = pytest.mark.server

SD15, FLUX = "flexip_two_subjects_sd15", "flexip_two_identities_flux"
SEED = 2026  # one seed for the images compared
SD15_SIZE, SD15_STEPS = 64, 2
FLUX_SIZE, FLUX_STEPS = 64, 3
TIMEOUT = 900  # seconds per SD1.5 prompt: the full-size CLIP-H encodes two subjects on a shared CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfyui_path):
    """A server with ComfyUI-FlexIP, the generated models, the IP-Adapter pair and the FLUX test pack."""
    base = tmp_path_factory.mktemp("two-subjects-server").resolve()
    build_ip_adapter_pair(base / "models" / "ipadapter")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / FLUX_PACK).symlink_to(Path(__file__).resolve().parent / "flux_test_pack")
    with ComfyServer(
        base, host_path=comfyui_path, extra_args=["--whitelist-custom-nodes", PACK_NAME, FLUX_PACK]
    ) as started:
        yield started


def assert_real_image(image: np.ndarray, size: int) -> None:
    # NaN or Inf in the latent decodes to a black or one-colour PNG: ask for spread in 8-bit levels
    assert image.shape == (size, size, 3)
    assert image.max() > 16 and image.std() > 2, f"black or flat image (max {image.max()}, std {image.std():.2f})"


def assert_second_subject_acts_mostly_on_the_right(both: np.ndarray, alone: np.ndarray) -> None:
    """Visibly different (a mean difference over 1 level of 255; here 6 to 33), and more on the right half,
    under subject B's mask, than on the left (here 1.5 to 2.4 times): attention mixes the halves, so the left
    changes too."""
    difference = np.abs(both - alone)
    half = difference.shape[1] // 2
    assert float(difference.mean()) > 1.0
    assert float(difference[:, half:].mean()) > float(difference[:, :half].mean())


def first_subject_alone(prompt: dict, input_name: str, apply_class: str) -> dict:
    """The sampler fed by subject A's Apply node; B's is left unused (ComfyUI runs only what an output needs)."""
    sampler = nodes_of(prompt, "KSampler")[0]
    second = prompt[sampler]["inputs"][input_name][0]
    assert prompt[second]["class_type"] == apply_class
    first = prompt[second]["inputs"][input_name][0]
    assert prompt[first]["class_type"] == apply_class, "the shipped workflow chains its two Apply nodes"
    prompt[sampler]["inputs"][input_name] = [first, 0]
    return prompt


@pytest.fixture(scope="module")
def subjects(server) -> tuple[str, str]:
    """Two different drawn subjects, uploaded: the drawing and the drawing turned upside down."""
    a = server.upload_image(drawn_subject(), "flexip_two_subjects_a.png")
    b = server.upload_image(drawn_subject().transpose(Image.Transpose.ROTATE_180), "flexip_two_subjects_b.png")
    return a, b


def two_subjects(subjects: tuple[str, str]) -> dict:
    """The shipped SD1.5 workflow on the generated models, subject A's image left and B's right."""
    prompt = for_test_models(load_api(SD15), SEED, subjects[0], size=SD15_SIZE, steps=SD15_STEPS)
    images = nodes_of(prompt, "LoadImage")
    assert len(images) == 2
    prompt[images[1]]["inputs"]["image"] = subjects[1]
    return prompt


def test_the_two_subject_sd15_workflow_gives_a_real_image_that_differs_from_subject_a_alone_mostly_on_the_right(
    server, subjects
):
    both = server.pixels(two_subjects(subjects), timeout=TIMEOUT)
    alone = server.pixels(first_subject_alone(two_subjects(subjects), "model", "FlexIPApply"), timeout=TIMEOUT)
    assert_real_image(both, SD15_SIZE)
    assert_real_image(alone, SD15_SIZE)
    assert_second_subject_acts_mostly_on_the_right(both, alone)


def two_identities() -> dict:
    """The shipped FLUX two-identity workflow on the test pack's models: face A the pack's identity, B its own."""
    shipped = load_api(FLUX)
    faces = nodes_of(shipped, "FlexIPInfiniteYouFace")
    assert len(faces) == 2
    own = {(faces[1], 0): ["identity_b", 0]}  # face B's stand-in, by node id
    prompt = {node_id: node for node_id, node in shipped.items() if node["class_type"] not in REPLACED}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                stand_in = STAND_INS.get((shipped[value[0]]["class_type"], value[1]), value)
                node["inputs"][name] = own.get((value[0], value[1]), stand_in)
    prompt["flux"] = {"class_type": "FlexIPTestTinyFlux", "inputs": {"seed": 0}}
    prompt["text"] = {"class_type": "FlexIPTestFluxText", "inputs": {"seed": 0}}
    prompt["infiniteyou"] = {"class_type": "FlexIPTestInfiniteYou", "inputs": {}}
    prompt["identity_b"] = {
        "class_type": "FlexIPTestInfiniteYouIdentity",
        "inputs": {"pair": ["infiniteyou", 0], "seed": 1},
    }
    links = [value for node in prompt.values() for value in node["inputs"].values() if isinstance(value, list)]
    assert all(link[0] in prompt for link in links), "a node of the shipped workflow reads a loader it lost"
    prompt[nodes_of(prompt, "EmptySD3LatentImage")[0]]["inputs"].update(width=FLUX_SIZE, height=FLUX_SIZE)
    prompt[nodes_of(prompt, "KSampler")[0]]["inputs"].update(seed=SEED, steps=FLUX_STEPS)
    return prompt


def test_the_two_identity_flux_workflow_gives_a_real_image_that_differs_from_face_a_alone_mostly_on_the_right(
    server,
):
    both = server.pixels(two_identities())
    alone = server.pixels(first_subject_alone(two_identities(), "positive", "FlexIPInfiniteYouApply"))
    # random weights give noise-like pictures (std ≈ 46 levels); a flat one (a failed decode) has std 0
    assert_real_image(both, FLUX_SIZE)
    assert_real_image(alone, FLUX_SIZE)
    assert_second_subject_acts_mostly_on_the_right(both, alone)
