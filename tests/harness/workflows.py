"""The shipped workflows (workflows/*.json UI format, workflows/api/*.json API format), fitted to test models."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from tests.fixtures.comfy_host import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
API = WORKFLOWS / "api"

# The file names the shipped workflows use -> the generated fixtures' names in a test models/ tree.
TEST_MODEL_NAMES = {
    "v1-5-pruned-emaonly.safetensors": "flexip_test_sd15.safetensors",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": "clip_vision_h.safetensors",
    "dinov2-large.safetensors": "dinov2_large.safetensors",
    "flexip_sd15.safetensors": "flexip_test_sd15.safetensors",
    "sd_xl_base_1.0.safetensors": "flexip_test_sdxl.safetensors",
    "flexip_sdxl.safetensors": "flexip_test_sdxl.safetensors",
}


def ui_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def load_api(name: str) -> dict:
    return json.loads((API / f"{name}.json").read_text())


def for_test_models(prompt: dict, seed: int, image: str, size: int = 128, steps: int = 3) -> dict:
    """A copy of an API prompt on the generated models: small latent, few steps, the given seed and image."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in TEST_MODEL_NAMES:
                inputs[key] = TEST_MODEL_NAMES[value]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=size, height=size)
        elif node["class_type"] == "KSampler":
            inputs.update(seed=seed, steps=steps)
        elif node["class_type"] == "LoadImage":
            inputs["image"] = image
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def without_flexip(prompt: dict) -> dict:
    """The same graph with the KSampler fed by the checkpoint's own model (FlexIP nodes left unused)."""
    sampler, loader = nodes_of(prompt, "KSampler")[0], nodes_of(prompt, "CheckpointLoaderSimple")[0]
    prompt[sampler]["inputs"]["model"] = [loader, 0]
    return prompt
