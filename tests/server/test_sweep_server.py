"""The gate-sweep workflow on a real ComfyUI server (generated SD1.5, CLIP-H, DINOv2-L and FlexIP files)."""

from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pytest
from PIL import Image

from tools.fixtures.adapters import link_adapters
from tools.fixtures.images import drawn_subject
from tools.harness.workflows import TEST_MODEL_NAMES, for_test_models, load_api, nodes_of

pytestmark = pytest.mark.server

_seeds = itertools.count(3000)  # identical prompts are served from cache: every run gets a new seed
SIZE = 128


@pytest.fixture(scope="module")
def server(comfy_server):
    link_adapters(comfy_server.base_dir / "models")
    return comfy_server


@pytest.fixture(scope="module")
def subject(server):
    """The drawn subject (tools.fixtures.images), uploaded to the server's input/."""
    return server.upload_image(drawn_subject(), "flexip_sweep_subject_test.png")


def output_images(server, history, node_id) -> list[Image.Image]:
    images = []
    for ref in history["outputs"][node_id]["images"]:
        image = Image.open(io.BytesIO(server.view(ref)))
        image.load()
        images.append(image)
    return images


def table_rows(text: str) -> list[tuple[float, float]]:
    """`image  CLIP-I  DINO-I` rows of FlexIPSubjectSimilarity's table (the mean line excluded)."""
    lines = text.splitlines()
    assert lines[0] == "image  CLIP-I  DINO-I" and lines[-1].startswith("mean"), text
    return [tuple(float(value) for value in line.split()[1:]) for line in lines[1:-1]]


def test_sweep_workflow_renders_five_gates_scores_them_and_plots_the_trade_off(server, subject, cache_dir):
    prompt = for_test_models(load_api("flexip_gate_sweep_sd15"), next(_seeds), subject, size=SIZE)
    runs_before = len(re.findall(r"FlexIP \(flexip_test_sd15.safetensors\): 4 of 4", server.log_text()))
    history = server.run(prompt, timeout=900)
    gammas = prompt[nodes_of(prompt, "FlexIPGateSweep")[0]]["inputs"]["values"]
    assert gammas == "0, 0.25, 0.5, 0.75, 1"
    # one sampling run (one KSampler) rendered all five, every layer patched
    runs = re.findall(r"FlexIP \(flexip_test_sd15.safetensors\): 4 of 4", server.log_text())
    assert len(runs) == runs_before + 1

    sweep = output_images(server, history, nodes_of(prompt, "PreviewImage")[0])
    assert [image.size for image in sweep] == [(SIZE, SIZE)] * 5
    pixels = [np.asarray(image, dtype=np.int16) for image in sweep]
    # same noise for every item, so only γ separates them: the extremes must differ
    assert np.abs(pixels[0] - pixels[4]).max() > 0

    (table,) = history["outputs"][nodes_of(prompt, "PreviewAny")[0]]["text"]
    rows = table_rows(table)
    assert len(rows) == 5 and all(-1.0 <= value <= 1.0 for row in rows for value in row)

    chart_node, sheet_node = nodes_of(prompt, "SaveImage")
    (chart,) = output_images(server, history, chart_node)
    (sheet,) = output_images(server, history, sheet_node)
    assert chart.size == (768, 512)
    assert (np.asarray(chart.convert("RGB")) != 255).any(axis=-1).mean() > 0.02
    assert sheet.width >= 5 * 256 and sheet.height > 256  # five 256 px thumbnails in a row, captions below
    screenshots = cache_dir / "screenshots"
    screenshots.mkdir(exist_ok=True)
    chart.save(screenshots / "gate_sweep_workflow_chart.png")
    sheet.save(screenshots / "gate_sweep_workflow_contact_sheet.png")


def test_similarity_of_the_reference_to_itself_is_one_with_the_full_size_encoders(server, subject):
    """Random-weight CLIP-H and DINOv2-L: identical inputs give identical embeddings, cosine 1."""
    prompt = {
        "1": {
            "class_type": "CLIPVisionLoader",
            "inputs": {"clip_name": TEST_MODEL_NAMES["CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"]},
        },
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": TEST_MODEL_NAMES["dinov2-large.safetensors"]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": subject}},
        "4": {
            "class_type": "FlexIPSubjectSimilarity",
            "inputs": {"clip_vision": ["1", 0], "dino": ["2", 0], "reference": ["3", 0], "images": ["3", 0]},
        },
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}},
    }
    history = server.run(prompt, timeout=600)
    (table,) = history["outputs"]["5"]["text"]
    assert table_rows(table) == [(1.0, 1.0)]  # printed to 4 decimals
