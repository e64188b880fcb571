"""Trainer-layer fixtures."""

from __future__ import annotations

import pytest
import torch

from flexip_host.bootstrap import load_pack
from flexip_host.loaded_pack import Pack


@pytest.fixture(scope="module")
def pack() -> Pack:
    """ComfyUI on the CPU in this process, and the pack loaded the way the trainer loads it.

    One thread while these tests run: on a small shared CPU more threads only contend.
    """
    from tools.fixtures import import_inprocess_comfy

    import_inprocess_comfy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_pack()
    torch.set_num_threads(threads)
