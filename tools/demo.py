"""`make demo`: start the pinned ComfyUI headless with this pack and run the basic FlexIP workflow.

Without real weights it uses the generated test models (random weights: the PNG is noise).
With real weights in a models folder (`FLEXIP_MODELS=/path/to/models`, or `COMFYUI_PATH`'s
models/), it runs the real job on them.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

from tools.fixtures.adapters import link_adapters
from tools.fixtures.images import drawn_subject
from tools.harness.server import ComfyServer
from tools.harness.workflows import for_test_models, load_api

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "output"
NEEDED = ("checkpoints", "clip_vision", "flexip")


def real_models() -> Path | None:
    """The user's models folder if it holds an SD1.5 checkpoint, CLIP-H, DINOv2-L and a FlexIP file."""
    candidates = [os.environ.get("FLEXIP_MODELS")]
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(str(Path(os.environ["COMFYUI_PATH"]) / "models"))
    for candidate in filter(None, candidates):
        models = Path(candidate).expanduser()
        if all(any((models / folder).glob("*.safetensors")) for folder in NEEDED) and _pick(
            models, "clip_vision", "dino"
        ):
            return models
    return None


def _pick(models: Path, folder: str, contains: str = "") -> str | None:
    names = sorted(p.name for p in (models / folder).glob("*.safetensors") if contains.lower() in p.name.lower())
    return names[0] if names else None


def subject_image() -> Image.Image:
    """FLEXIP_SUBJECT (a path) or a drawn subject: a red disc and a blue square on grey."""
    if os.environ.get("FLEXIP_SUBJECT"):
        return Image.open(os.environ["FLEXIP_SUBJECT"]).convert("RGB")
    return drawn_subject(256)


def real_prompt(models: Path, image: str) -> dict:
    prompt = load_api("flexip_basic_sd15")
    choice = {
        "CheckpointLoaderSimple": ("ckpt_name", _pick(models, "checkpoints", "v1-5") or _pick(models, "checkpoints")),
        "FlexIPLoader": ("adapter_name", _pick(models, "flexip")),
    }
    encoders = iter(
        [
            _pick(models, "clip_vision", "h-14") or _pick(models, "clip_vision", "vit-h"),
            _pick(models, "clip_vision", "dino"),
        ]
    )
    for node in prompt.values():
        if node["class_type"] in choice:
            key, name = choice[node["class_type"]]
            node["inputs"][key] = name
        elif node["class_type"] == "CLIPVisionLoader":
            node["inputs"]["clip_name"] = next(encoders)
        elif node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
        elif node["class_type"] == "KSampler":
            node["inputs"]["seed"] = int(time.time())
    return prompt


def main() -> int:
    models = real_models()
    base = REPO / ".cache" / "demo-server"
    base.mkdir(parents=True, exist_ok=True)
    link = base / "models"
    if link.is_symlink():  # a previous real-weights run: never generate files into the user's folder
        link.unlink()
    if models is None:
        print(
            "demo: no real weights found (set FLEXIP_MODELS=/path/to/models with checkpoints/, clip_vision/ "
            "and flexip/ inside, or COMFYUI_PATH); using the generated test models."
        )
        print("demo: these have RANDOM weights, so the image is noise; it shows the pipeline runs end to end.")
    else:
        print(f"demo: using real weights from {models}")
        shutil.rmtree(link, ignore_errors=True)
        link.symlink_to(models, target_is_directory=True)
    with ComfyServer(base, models=models is None) as server:
        image = server.upload_image(subject_image(), "flexip_demo_subject.png")
        if models is None:
            link_adapters(base / "models")
            prompt = for_test_models(
                load_api("flexip_basic_sd15"), seed=int(time.time()), image=image, size=256, steps=8
            )
        else:
            prompt = real_prompt(models, image)
        started = time.monotonic()
        history = server.run(prompt, timeout=3600)
        print(f"demo: the basic FlexIP workflow ran in {time.monotonic() - started:.1f} s")
        OUTPUT.mkdir(exist_ok=True)
        for index, picture in enumerate(server.images(history)):
            path = OUTPUT / f"flexip_demo_{index:02d}.png"
            picture.save(path)
            print(f"demo: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
