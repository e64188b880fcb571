"""Compatibility mode on a real server: what /object_info shows of the pair loader, and the README's
first workflow end to end on the generated SD1.5 checkpoint.

The IP-Adapter files have the real tensor names and image projections (CLIP-H: 1024-d embeddings,
1280-d hidden states) and the four cross-attention layers of the generated checkpoint (input 1,
output 0, output 1, middle 0). The numbers (γ = 1 and γ = 0 equal plain IP-Adapter of one file) and
the refusals are checked in-process by tests/comfy/test_compat_pair.py, on the real ModelPatcher and
sampler; a refusal's path over HTTP by tests/server/test_input_refusals_server.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tools.fixtures.images import drawn_subject
from tools.fixtures.ip_adapter_files import PAIR_FILES, build_ip_adapter_pair
from tools.harness.server import ComfyServer
from tools.harness.workflows import for_test_models, load_api, without_flexip

pytestmark = pytest.mark.server

PRESERVATION, PERSONALIZATION = PAIR_FILES  # the names the start-here workflow loads
SEED = 2024


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfyui_path):
    """A server with ComfyUI-FlexIP, the generated models and the two IP-Adapter files."""
    base = tmp_path_factory.mktemp("compat-server").resolve()
    build_ip_adapter_pair(base / "models" / "ipadapter")
    with ComfyServer(base, host_path=comfyui_path) as started:
        yield started


@pytest.fixture(scope="module")
def subject(server):
    """The drawn subject (tools.fixtures.images), uploaded to the server's input/."""
    return server.upload_image(drawn_subject(), "flexip_compat_subject.png")


def test_pair_loader_is_labelled_as_compatibility_mode(server):
    # what the frontend shows, and the files the server lists from models/ipadapter (the comfy layer
    # checks the node's own mappings, with the folder patched)
    info = server.object_info("FlexIPAdapterPairLoader")
    assert info["display_name"] == "Load IP-Adapter Pair (FlexIP compatibility mode)"
    assert "not trained FlexIP" in info["description"]
    files = info["input"]["required"]["preservation"][0]
    assert {PRESERVATION, PERSONALIZATION} <= set(files)


def start_here(subject):
    """The README's first workflow, as shipped (public file names mapped to the generated ones), 64 px, 2 steps."""
    return for_test_models(load_api("flexip_start_here_sd15"), SEED, subject, size=64, steps=2)


def test_start_here_workflow_runs_end_to_end_and_the_adapter_changes_the_image(server, subject):
    image = server.pixels(start_here(subject), timeout=900)
    unpatched = server.pixels(without_flexip(start_here(subject)), timeout=900)
    assert image.shape == unpatched.shape
    assert np.abs(image - unpatched).max() > 1  # the IP-Adapter pair visibly acts (8-bit levels)
