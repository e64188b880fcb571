"""The shipped workflows under ComfyUI's own precision switches, on a real server (CPU).

One server per switch set: half (bf16 or fp16) UNet, text encoder and VAE, or fp8 (e4m3fn) UNet
and text encoder. On a CPU ComfyUI stores the UNet in the switch's type and computes in float32
(its manual cast), while the VAE switches compute in the half type itself. Each workflow (basic
SD1.5, compatibility pair, basic SDXL) must give a real image, strength 0 must equal the unpatched
image bit for bit, and γ = 1 and γ = 0 must differ; a FlexIP file stored in fp16 or bf16 runs too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexip_model import checkpoint
from tools.fixtures.adapters import FLEXIP_SD15_NAME, FLEXIP_TEST_SDXL_NAME, flexip_sd15, link_adapters
from tools.fixtures.files import link_sdxl_checkpoint
from tools.fixtures.images import drawn_subject
from tools.fixtures.ip_adapter_files import build_ip_adapter_pair
from tools.harness.server import LRU_CACHE_ARGS, ComfyServer
from tools.harness.workflows import for_test_models, load_api, nodes_of, without_flexip

pytestmark = pytest.mark.server

SWITCHES = {
    "bf16": ["--bf16-unet", "--bf16-text-enc", "--bf16-vae"],
    "fp16": ["--fp16-unet", "--fp16-text-enc", "--fp16-vae"],
    "fp8": ["--fp8_e4m3fn-unet", "--fp8_e4m3fn-text-enc"],
}
HALF_FILES = {torch.float16: "flexip_test_sd15_fp16.safetensors", torch.bfloat16: "flexip_test_sd15_bf16.safetensors"}
WORKFLOWS = {  # API workflow -> (latent px, steps): small, as in the other server tests
    "flexip_basic_sd15": (64, 2),
    "flexip_compat_sd15": (64, 2),
    "flexip_basic_sdxl": (128, 2),
}
SEED = 2024
TIMEOUT = 900  # seconds per prompt: the SDXL graph on a shared 2-core machine


@pytest.fixture(scope="module", params=sorted(SWITCHES), ids=sorted(SWITCHES))
def server(request, tmp_path_factory, comfyui_path):
    """A server with the switch set, the generated models, the IP-Adapter pair and half-stored FlexIP files."""
    base = tmp_path_factory.mktemp(f"precision-{request.param}").resolve()
    models = base / "models"
    build_ip_adapter_pair(models / "ipadapter")
    link_sdxl_checkpoint(models)
    link_adapters(models, (FLEXIP_SD15_NAME, FLEXIP_TEST_SDXL_NAME))
    for dtype, name in HALF_FILES.items():
        checkpoint.save(models / "flexip" / name, checkpoint.load(flexip_sd15(), dtype=dtype))
    with ComfyServer(base, host_path=comfyui_path, extra_args=[*SWITCHES[request.param], *LRU_CACHE_ARGS]) as started:
        started.subject = started.upload_image(drawn_subject(), "flexip_precision_subject.png")
        started.rendered = {}
        yield started


def render(server, workflow: str, unpatched: bool = False, adapter_name: str | None = None, **apply_inputs):
    """The workflow's image on the server (each distinct graph rendered once per server)."""
    key = (workflow, unpatched, adapter_name, tuple(sorted(apply_inputs.items())))
    if key not in server.rendered:
        size, steps = WORKFLOWS[workflow]
        prompt = for_test_models(load_api(workflow), SEED, server.subject, size=size, steps=steps)
        prompt[nodes_of(prompt, "FlexIPApply")[0]]["inputs"].update(apply_inputs)
        if adapter_name is not None:
            prompt[nodes_of(prompt, "FlexIPLoader")[0]]["inputs"]["adapter_name"] = adapter_name
        server.rendered[key] = server.pixels(without_flexip(prompt) if unpatched else prompt, timeout=TIMEOUT)
    return server.rendered[key]


def assert_real_image(image: np.ndarray) -> None:
    # NaN or Inf in the latent decodes to a black (or one-colour) PNG: ask for spread in 8-bit levels
    assert image.max() > 16 and image.std() > 2, f"black or flat image (max {image.max()}, std {image.std():.2f})"


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_workflow_gives_a_real_image_that_flexip_changes(server, workflow):
    image, plain = render(server, workflow, preservation=1.0), render(server, workflow, unpatched=True)
    assert_real_image(image)
    assert_real_image(plain)
    assert np.abs(image - plain).max() > 0


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_strength_zero_equals_the_unpatched_image_bit_for_bit(server, workflow):
    assert np.array_equal(render(server, workflow, strength=0.0), render(server, workflow, unpatched=True))


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_preservation_one_and_zero_give_different_images(server, workflow):
    preserve, personalize = render(server, workflow, preservation=1.0), render(server, workflow, preservation=0.0)
    assert_real_image(preserve)
    assert_real_image(personalize)
    assert np.abs(preserve - personalize).max() > 0


@pytest.mark.parametrize("dtype", sorted(HALF_FILES, key=str), ids=str)
def test_flexip_file_stored_in_half_precision_loads_and_runs(server, dtype):
    image = render(server, "flexip_basic_sd15", adapter_name=HALF_FILES[dtype])
    assert_real_image(image)
    assert np.abs(image - render(server, "flexip_basic_sd15", unpatched=True)).max() > 0
