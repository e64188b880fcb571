"""$FLEXIP_TEST_DEVICE: the ComfyUI switches the comfy and server layers run under (the gpu layer sets it)."""

from __future__ import annotations

import pytest

from flexip_model.errors import FlexIPError
from tools.fixtures.paths import TEST_DEVICE_VARIABLE, comfy_device_args

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "device, switches",
    [(None, ("--cpu",)), ("cpu", ("--cpu",)), ("cuda-fp16", ("--fp16-unet",)), ("cuda-bf16", ("--bf16-unet",))],
)
def test_each_test_device_names_its_comfyui_switches(monkeypatch, device, switches):
    if device is None:
        monkeypatch.delenv(TEST_DEVICE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(TEST_DEVICE_VARIABLE, device)
    assert comfy_device_args() == switches


def test_an_unknown_test_device_is_refused_in_one_sentence(monkeypatch):
    monkeypatch.setenv(TEST_DEVICE_VARIABLE, "cuda")
    with pytest.raises(
        FlexIPError, match=r"FLEXIP_TEST_DEVICE='cuda' is not a test device: use one of cpu, cuda-fp16, cuda-bf16\."
    ):
        comfy_device_args()
