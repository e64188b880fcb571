"""The gpu layer: the comfy and server layers again, on CUDA in fp16 and in bf16, in subprocesses.

ComfyUI picks its device once per process (comfy.model_management reads its switches at import),
and the comfy layer's process has it on the CPU, so each run is a `pytest` subprocess with
$FLEXIP_TEST_DEVICE set (tools/fixtures/paths.py). Without a visible CUDA device every test of the
layer is collected and reported skipped, with the one reason below.
"""

from __future__ import annotations

import pytest
import torch

NO_GPU = (
    "gpu layer: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
    "run `make test-gpu` or tools/gpu_check.sh on a machine with an NVIDIA GPU"
)


@pytest.fixture(autouse=True)
def cuda_visible() -> None:
    if not torch.cuda.is_available():
        pytest.skip(NO_GPU)
