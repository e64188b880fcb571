"""Hand-made safetensors files for the untrusted-file tests: any header bytes, any length field."""

from __future__ import annotations

import json
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flexip_model import FlexIPAdapter, FlexIPError, LayerSpec, checkpoint, config_for

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


# Each refusal reads a header of a few KB and a config: well under a second on the 2-core CI
# machine; 5 s leaves room for a loaded machine and still fails the minutes an unbounded read takes.
REFUSAL_SECONDS = 5.0
# Peak memory growth allowed while refusing one file: the valid files are a few MB to ~200 MB on
# disk, read lazily; 200 MB more would be a sign that something the file chose was allocated.
REFUSAL_GROWTH_BYTES = 200 * 1024 * 1024


def bounded_refusal(action: Callable[[], object]) -> str:
    """The FlexIPError message of `action()`, which must refuse within REFUSAL_SECONDS and REFUSAL_GROWTH_BYTES."""
    from tests.unit.peak_memory import peak_meter

    with peak_meter() as meter:
        before = meter.reset()
        with time_limit(REFUSAL_SECONDS), pytest.raises(FlexIPError) as error:
            action()
        growth = meter.peak() - before
    assert growth < REFUSAL_GROWTH_BYTES, f"{meter.name} grew by {growth / 2**20:.0f} MiB"
    return str(error.value)


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
