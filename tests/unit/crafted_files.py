"""Hand-made safetensors files for the untrusted-file tests: any header bytes, any length field."""

from __future__ import annotations

import json
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flexip_model import FlexIPAdapter, LayerSpec, checkpoint, config_for

SMALL_LAYERS = (LayerSpec("input_1_0", 64, 2), LayerSpec("output_3_0", 128, 2))


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A file of 8 bytes of header length (`length`, default the header's true length), header, data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def valid_flexip(path: Path) -> Path:
    """A small, consistent FlexIP file (tiny SD1.5 config, two layers, seeded weights)."""
    torch.manual_seed(0)
    checkpoint.save(path, FlexIPAdapter(config_for("sd15", layers=SMALL_LAYERS, tiny=True)))
    return path


def parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


def with_config(valid: Path, target: Path, tensors: dict | None = None, **changes: object) -> Path:
    """`valid`'s tensors (or `tensors`) under its FlexIP config with `changes` applied to the JSON."""
    original, metadata = parts(valid)
    config = json.loads(metadata["flexip"])
    config.update(changes)
    save_file(original if tensors is None else tensors, str(target), metadata={"flexip": json.dumps(config)})
    return target


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """TimeoutError if the block runs longer than `seconds` (SIGALRM; without it, Windows, no limit)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(*_: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
