"""`encode_cache_rerun`: a real ComfyUI server runs the shipped basic workflow, then the same graph
with only the gate (preservation) changed; ComfyUI's cache must serve the encoders.

Uses the test harness (tools/harness/server.py) and the generated, cached fixture models: the
small generated SD1.5 checkpoint with its FlexIP file, and full-size CLIP-H and DINOv2-L files.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENCODER_NODES = ("CLIPVisionLoader", "FlexIPEncodeSubject")


@dataclass(frozen=True)
class Rerun:
    first_seconds: float
    second_seconds: float
    cached: frozenset[str]  # class types served from the cache in the second run
    encoders_cached: bool
    apply_ran: bool

    @property
    def ratio(self) -> float:
        return self.second_seconds / self.first_seconds


def _subject_image():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 96), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 60, 60), fill=(220, 30, 30))
    draw.rectangle((50, 50, 86, 86), fill=(30, 30, 220))
    return image


def encode_cache_rerun(seed: int = 4242) -> Rerun:
    from tools.fixtures.adapters import link_adapters
    from tools.harness.server import ComfyServer
    from tools.harness.workflows import for_test_models, load_api, nodes_of

    base = Path(tempfile.mkdtemp(prefix="flexip-bench-server-"))
    try:
        with ComfyServer(base) as server:
            link_adapters(server.base_dir / "models")
            image = server.upload_image(_subject_image(), "flexip_bench_subject.png")

            def prompt(preservation: float) -> dict:
                graph = for_test_models(load_api("flexip_basic_sd15"), seed, image)
                graph[nodes_of(graph, "FlexIPApply")[0]]["inputs"]["preservation"] = preservation
                return graph

            first_prompt = prompt(0.3)
            started = time.perf_counter()
            server.run(first_prompt)
            first = time.perf_counter() - started
            started = time.perf_counter()
            history = server.run(prompt(0.7))
            second = time.perf_counter() - started
    finally:
        shutil.rmtree(base, ignore_errors=True)
    cached_ids = set()
    for kind, data in history["status"]["messages"]:
        if kind == "execution_cached":
            cached_ids.update(data["nodes"])
    cached = frozenset(first_prompt[node]["class_type"] for node in cached_ids)
    encoders = [node for kind in ENCODER_NODES for node in nodes_of(first_prompt, kind)]
    return Rerun(
        first,
        second,
        cached,
        encoders_cached=all(node in cached_ids for node in encoders),
        apply_ran=not any(node in cached_ids for node in nodes_of(first_prompt, "FlexIPApply")),
    )
