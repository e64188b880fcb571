"""The server harness itself: a real ComfyUI with the pack runs prompts, and reports failures readably."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from tools.fixtures import SD15_CHECKPOINT_NAME
from tools.harness.server import ExecutionFailed, PackImportError, PromptRejected

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def text_to_image_prompt(checkpoint: str, size: int = 64, steps: int = 2) -> dict:
    """Stock nodes only: checkpoint -> two prompts -> empty latent -> KSampler -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a corgi", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 0,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "harness_t2i"}},
    }


def test_server_starts_with_the_pack_and_lists_the_generated_models(comfy_server):
    assert comfy_server.pack_installed, "the pack has no __init__.py, so the server runs without it"
    checkpoints = comfy_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert SD15_CHECKPOINT_NAME in checkpoints
    assert comfy_server.object_info("NoSuchNode") == {}


def test_stock_text_to_image_prompt_returns_a_png_through_view(comfy_server):
    history = comfy_server.run(text_to_image_prompt(SD15_CHECKPOINT_NAME), timeout=300)
    refs = comfy_server.image_refs(history)
    assert len(refs) == 1
    assert comfy_server.view(refs[0]).startswith(PNG_SIGNATURE)
    (image,) = comfy_server.images(history)
    assert image.format == "PNG" and image.size == (64, 64)
    extrema = image.convert("RGB").getextrema()
    assert any(low < high for low, high in extrema), "a constant image means the decode path is broken"


def test_uploaded_image_comes_back_unchanged_through_load_and_save(comfy_server):
    sent = Image.frombytes(
        "RGB", (32, 24), bytes((x * 8 + c * y * 10) % 256 for y in range(24) for x in range(32) for c in range(3))
    )
    name = comfy_server.upload_image(sent, "harness_roundtrip.png")
    history = comfy_server.run(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness_roundtrip"}},
        }
    )
    (received,) = comfy_server.images(history)
    assert received.convert("RGB").tobytes() == sent.tobytes()


def test_rejected_prompt_names_the_node_and_the_reason(comfy_server):
    prompt = text_to_image_prompt("no_such_checkpoint.safetensors")
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue(prompt)
    message = str(rejected.value)
    assert "node 1 (CheckpointLoaderSimple)" in message and "no_such_checkpoint.safetensors" in message


def test_execution_error_carries_the_node_and_the_exception_message(comfy_server, tmp_path):
    junk = tmp_path / "harness_not_an_image.png"
    junk.write_bytes(b"this is not a PNG")
    name = comfy_server.upload_image(junk)
    with pytest.raises(ExecutionFailed) as failed:
        comfy_server.run(
            {
                "1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            }
        )
    message = str(failed.value)
    assert "LoadImage (node 1)" in message and "UnidentifiedImageError" in message


def test_broken_pack_import_fails_startup_with_the_quoted_error(start_comfy_server, repo_root, tmp_path):
    pack = tmp_path / "ComfyUI-FlexIP"
    for package in ("nodes", "flexip_model"):
        if (repo_root / package).is_dir():
            shutil.copytree(repo_root / package, pack / package, ignore=shutil.ignore_patterns("__pycache__"))
    pack.mkdir(exist_ok=True)
    (pack / "__init__.py").write_text('raise ImportError("flexip deliberately broken")\n')

    with pytest.raises(PackImportError) as failed:
        start_comfy_server(pack_dir=pack, models=False)
    message = str(failed.value)
    assert "flexip deliberately broken" in message
    assert "Traceback (most recent call last):" in message and "__init__.py" in message
