"""The comfy and server tests that run FlexIP's device code, on CUDA in fp16 and in bf16.

Each case is one `pytest` subprocess with $FLEXIP_TEST_DEVICE set, so ComfyUI (in-process for
the comfy layer, the server for the server layer) loads the UNet and the adapter on the GPU in that
type. The files are those that sample through the patch, build and hand back the adapter, compare
against the reference attention or run the shipped workflows; tools/gpu_check.sh runs this layer
and the CUDA benchmark in a few minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tools.fixtures import REPO_ROOT
from tools.fixtures.paths import TEST_DEVICE_VARIABLE

FILES = {
    "comfy": (
        "test_flexip_apply.py",
        "test_adapter_residency.py",
        "test_precision.py",
        "test_compat_pair.py",
        "test_performance_host_sync.py",
        "test_sdxl_models.py",
    ),
    "server": ("test_flexip_server.py", "test_precision_server.py"),
}
TIMEOUT_S = 600  # stops a hang; tools/gpu_check.sh bounds the whole layer


@pytest.mark.parametrize("device", ["cuda-fp16", "cuda-bf16"])
@pytest.mark.parametrize("layer", sorted(FILES))
def test_layer_passes_on_cuda(layer: str, device: str) -> None:
    paths = [str(REPO_ROOT / "tests" / layer / name) for name in FILES[layer]]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *paths, "-m", layer, "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env=dict(os.environ, **{TEST_DEVICE_VARIABLE: device}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, f"{layer} layer on {device}:\n{(run.stdout + run.stderr)[-6000:]}"
