"""Trainer-layer fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def pack():
    """ComfyUI on the CPU in this process, and the pack imported the way the trainer imports it.

    One thread while these tests run: on a small shared CPU more threads only contend.
    """
    from tests.fixtures import import_comfy

    import_comfy()
    from flexip_train.host import import_pack

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield import_pack()
    torch.set_num_threads(threads)
