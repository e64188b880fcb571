"""The shipped workflows (workflows/*.json UI format, workflows/api/*.json API format), fitted to test models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tools.fixtures.paths import REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"
API = WORKFLOWS / "api"

# The file names the shipped workflows use -> the generated fixtures' names in a test models/ tree.
TEST_MODEL_NAMES = {
    "v1-5-pruned-emaonly-fp16.safetensors": "flexip_test_sd15.safetensors",
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": "clip_vision_h.safetensors",
    "dinov2-large.safetensors": "dinov2_large.safetensors",
    "flexip_sd15.safetensors": "flexip_test_sd15.safetensors",
    "sd_xl_base_1.0.safetensors": "flexip_test_sdxl.safetensors",
    "flexip_sdxl.safetensors": "flexip_test_sdxl.safetensors",
}

# The public files the shipped workflows load: name -> (models/ folder, direct download URL). The UI
# files carry them as the frontend's `properties.models` of each loader node (its missing-models dialog).
PUBLIC_MODELS = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        "checkpoints",
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
    ),
    "sd_xl_base_1.0.safetensors": (
        "checkpoints",
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    ),
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": (
        "clip_vision",
        "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
    ),
    "dinov2-large.safetensors": (
        "clip_vision",
        "https://huggingface.co/facebook/dinov2-large/resolve/main/model.safetensors",
    ),
    "ip-adapter-plus_sd15.safetensors": (
        "ipadapter",
        "https://huggingface.co/h94/IP-Adapter/resolve/main/models/ip-adapter-plus_sd15.safetensors",
    ),
    "ip-adapter_sd15.safetensors": (
        "ipadapter",
        "https://huggingface.co/h94/IP-Adapter/resolve/main/models/ip-adapter_sd15.safetensors",
    ),
    # FLUX (flexip_infiniteyou_flux): the DiT, its text encoders and VAE, InfiniteYou v1.0's two stages, and
    # the face recognition network InfiniteYou embeds faces with
    "flux1-dev-fp8.safetensors": (
        "diffusion_models",
        "https://huggingface.co/Kijai/flux-fp8/resolve/main/flux1-dev-fp8.safetensors",
    ),
    "t5xxl_fp8_e4m3fn.safetensors": (
        "text_encoders",
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn.safetensors",
    ),
    "clip_l.safetensors": (
        "text_encoders",
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    ),
    "ae.safetensors": (
        "vae",
        "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
    ),
    "infusenet_sim_fp8e4m3fn.safetensors": (
        "controlnet",
        "https://huggingface.co/ByteDance/InfiniteYou/resolve/main/infu_flux_v1.0/sim_stage1/infusenet_sim_fp8e4m3fn.safetensors",
    ),
    "infusenet_aes_fp8e4m3fn.safetensors": (
        "controlnet",
        "https://huggingface.co/ByteDance/InfiniteYou/resolve/main/infu_flux_v1.0/aes_stage2/infusenet_aes_fp8e4m3fn.safetensors",
    ),
    # both stages name their projection image_proj_model.bin: saved under these two names
    "infiniteyou_sim_image_proj.bin": (
        "infiniteyou",
        "https://huggingface.co/ByteDance/InfiniteYou/resolve/main/infu_flux_v1.0/sim_stage1/image_proj_model.bin",
    ),
    "infiniteyou_aes_image_proj.bin": (
        "infiniteyou",
        "https://huggingface.co/ByteDance/InfiniteYou/resolve/main/infu_flux_v1.0/aes_stage2/image_proj_model.bin",
    ),
    "recognition_arcface_ir_se50.pth": (
        "infiniteyou",
        "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",
    ),
}

# FlexIP files have no public source; each workflow that loads one says so in a Note.
NO_PUBLIC_FLEXIP_NOTE = (
    "No FlexIP weights are public yet: train one with python -m flexip_train (README: Training FlexIP) "
    "or use the start-here compatibility workflow (flexip_start_here_sd15)."
)
# No download link can fetch an InsightFace pack (a zip under a non-commercial licence); the folder is
# the one nodes/faces_packs.py reads.
INSIGHTFACE_PACK_NOTE = (
    "InsightFace pack (antelopev2 or buffalo_l): download its zip from the InsightFace model zoo, "
    "https://github.com/deepinsight/insightface/tree/master/python-package#model-zoo (non-commercial research "
    "use only), and unzip it so that its .onnx files sit directly in models/insightface/models/<pack>/, e.g. "
    "models/insightface/models/antelopev2/scrfd_10g_bnkps.onnx. The face nodes also need "
    'python -m pip install "insightface>=1.0" onnxruntime in ComfyUI\'s Python.'
)
# The frontend downloads .safetensors files only: the .bin and .pth files are fetched by hand, and the two
# projections, both named image_proj_model.bin, need the names the loader's widgets hold.
INFINITEYOU_FILES_NOTE = (
    "InfiniteYou files (docs/flux.md). InfuseNets: the missing-models dialog downloads them into "
    "models/controlnet. Projections: both stages name theirs image_proj_model.bin, so download "
    "infu_flux_v1.0/sim_stage1/image_proj_model.bin from huggingface.co/ByteDance/InfiniteYou and save it as "
    "models/infiniteyou/infiniteyou_sim_image_proj.bin, and aes_stage2/image_proj_model.bin as "
    "models/infiniteyou/infiniteyou_aes_image_proj.bin. ArcFace: recognition_arcface_ir_se50.pth from "
    "github.com/xinntao/facexlib/releases (v0.1.0) into models/infiniteyou/."
)
INFINITEYOU_DIAL_NOTE = (
    "The dial: preservation γ = 1 runs InfiniteYou's sim_stage1 alone (likeness), 0 its aes_stage2 alone "
    "(prompt and aesthetics); between, both run and blend. The Gate Schedule sets γ per step: identity "
    "early, editability late. Licences: InfiniteYou weights CC BY-NC 4.0, FLUX.1-dev non-commercial licence, "
    "InsightFace packs non-commercial research only. This pack ships no weights."
)
# The workflows with several subjects build their masks with ComfyUI's MaskComposite; the rules are the
# patch's and the InfiniteYou pair's (docs/gate.md)
REGIONAL_MASKS_NOTE = (
    "Each Apply node adds its subject only where its mask is white; the next Apply takes the previous one's "
    "output. A mask of any size is stretched over the image and resized to every block's token grid; grey "
    "weights the subject; where masks overlap, the subjects add; outside its mask a subject changes nothing in "
    "the layers it patches (the rest of the image follows through the layers that mix tokens). Name both "
    "subjects, left and right, in the prompt. To move the split, change the white half's width and the right "
    "mask's x. docs/gate.md, Several subjects"
)
# The Notes of the UI files: a workflow with a node of the class gets the Note (title, text).
NOTES = {
    "FlexIPLoader": ("FlexIP weights", NO_PUBLIC_FLEXIP_NOTE),
    "FlexIPInsightFaceLoader": ("InsightFace pack", INSIGHTFACE_PACK_NOTE),
    "FlexIPInfiniteYouLoader": ("InfiniteYou files", INFINITEYOU_FILES_NOTE),
    "FlexIPInfiniteYouApply": ("The dial and the licences", INFINITEYOU_DIAL_NOTE),
    "MaskComposite": ("Several subjects: masks", REGIONAL_MASKS_NOTE),
}

# The nodes that draw a sampling run's noise from a seed -> that seed's input (SamplerCustomAdvanced takes
# its noise from RandomNoise). Images a workflow compares side by side come from one seed: in the UI files
# one Primitive feeds every such node's seed.
SEED_INPUTS = {
    "KSampler": "seed",
    "KSamplerAdvanced": "noise_seed",
    "SamplerCustom": "noise_seed",
    "RandomNoise": "noise_seed",
}


def models_property(name: str) -> dict:
    """The frontend's model metadata for one public file: {name, url, directory}."""
    directory, url = PUBLIC_MODELS[name]
    return {"name": name, "url": url, "directory": directory}


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


def notes_for(prompt: dict) -> list[tuple[str, str]]:
    """The Notes (title, text) the UI file of an API prompt carries, in NOTES order."""
    classes = {node["class_type"] for node in prompt.values()}
    return [note for class_type, note in NOTES.items() if class_type in classes]


def without_flexip(prompt: dict) -> dict:
    """The same graph with the KSampler fed by the checkpoint's own model (FlexIP nodes left unused)."""
    sampler, loader = nodes_of(prompt, "KSampler")[0], nodes_of(prompt, "CheckpointLoaderSimple")[0]
    prompt[sampler]["inputs"]["model"] = [loader, 0]
    return prompt
