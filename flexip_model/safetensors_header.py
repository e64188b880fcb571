"""The one reader of safetensors headers: bounded and checked before any tensor is read.

A file is 8 bytes of little-endian header length, a JSON header, then the tensor bytes. The
header of an untrusted file is read here with every size bounded before it is used: the
length field, the JSON's size, nesting and object count, the tensor count, each shape and
each byte range (inside the file, matching shape × dtype). Only then may safetensors read
tensors. Every refusal is one sentence naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch

from .errors import FlexIPError

# safetensors' own limit; full SD checkpoints can carry MBs of metadata (thumbnails, training notes)
MAX_HEADER_BYTES = 100_000_000
# what JSON builds from everything outside string literals (brackets, numbers): ~40 bytes per tensor
# in real files; 4 MiB fits 100,000 tensors and keeps the parsed header within tens of MB
MAX_STRUCTURE_BYTES = 4 * 1024 * 1024
# a header is {name: {dtype, shape: [...], data_offsets: [...]}}, depth 3
MAX_JSON_DEPTH = 8
# an SDXL checkpoint holds ~2,600 tensors, a FlexIP file at the layer bound ~10,000
MAX_TENSORS = 65_536
MAX_RANK = 8  # conv weights are rank 4; nothing in these files is above 5
ITEM_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_CHUNK = 1 << 22


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a header: shape and safetensors dtype name ("F32", ...)."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Header:
    """A checked header: string metadata and {name: TensorInfo}, in file order."""

    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]


def _check_structure(text: bytes, what: str, max_structure: int, max_depth: int) -> None:
    """Bound what json.loads would build: the bytes outside string literals and the bracket nesting,
    counted in one vectorised pass that stops at the first bound crossed.

    Escaped backslashes and quotes are blanked first (same length), so every quote left opens or
    closes a string; the parity of the quotes so far then tells what is inside a string.
    """
    plain = numpy.frombuffer(text.replace(b"\\\\", b"__").replace(b'\\"', b"__"), dtype=numpy.uint8)
    structure, level, quotes = 0, 0, 0
    for start in range(0, len(plain), _CHUNK):
        chunk = plain[start : start + _CHUNK]
        quote = chunk == ord('"')
        counted = numpy.cumsum(quote, dtype=numpy.int64) + quotes
        outside = ((counted & 1) == 0) & ~quote
        opens = ((chunk == ord("[")) | (chunk == ord("{"))) & outside
        closes = ((chunk == ord("]")) | (chunk == ord("}"))) & outside
        levels = numpy.cumsum(opens.astype(numpy.int8) - closes.astype(numpy.int8), dtype=numpy.int64) + level
        structure += int(numpy.count_nonzero(outside))
        level, quotes = int(levels[-1]), int(counted[-1])
        if structure > max_structure:
            raise FlexIPError(
                f"{what} holds over {max_structure:,} bytes of JSON structure (brackets, numbers) outside "
                "strings: re-export the file."
            )
        if int(levels.max()) > max_depth:
            raise FlexIPError(f"{what} nests JSON deeper than {max_depth} levels: re-export the file.")


def parse_bounded_json(text: str | bytes, what: str, max_bytes: int, max_structure: int, max_depth: int) -> object:
    """json.loads after size, structure and depth checks, so parsing is bounded in time and memory;
    `what` starts the error sentence (e.g. "evil.safetensors's FlexIP config")."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise FlexIPError(f"{what} is {len(raw):,} bytes, over the {max_bytes:,} accepted: re-export the file.")
    _check_structure(raw, what, max_structure, max_depth)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: unbalanced brackets the scan did not see as depth
        raise FlexIPError(f"{what} is unreadable (not JSON): re-export the file.") from None


def _entry(name: str, entry: object, data_bytes: int, file: str) -> TensorInfo:
    where = f"{file} tensor {name[:80]!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FlexIPError(f"{where} lacks dtype, shape or data_offsets in the header: download or export it again.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEM_SIZES:
        raise FlexIPError(f"{where} has unknown dtype {str(dtype)[:20]!r}: download or export it again.")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(size) is int and 0 <= size <= data_bytes for size in shape)
    ):
        raise FlexIPError(
            f"{where} has shape {str(shape)[:80]}, not a list of at most {MAX_RANK} sizes that fit the file: "
            "download or export it again."
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(x) is int for x in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise FlexIPError(
            f"{where} has data_offsets {str(offsets)[:80]} outside the file's {data_bytes:,} data bytes: "
            "the file is truncated or damaged, download or export it again."
        )
    if math.prod(shape) * ITEM_SIZES[dtype] != offsets[1] - offsets[0]:
        raise FlexIPError(
            f"{where} has {offsets[1] - offsets[0]:,} bytes for shape {shape} of {dtype}: "
            "the file is damaged, download or export it again."
        )
    return TensorInfo(tuple(shape), dtype)


def read_header(path: Path) -> Header:
    """The checked header of safetensors file `path`; no tensor data is read."""
    if not path.is_file():
        raise FlexIPError(f"{path.name} was not found at {path.parent}: check the file name and folder.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length_field = handle.read(8)
            length = int.from_bytes(length_field, "little") if len(length_field) == 8 else -1
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise FlexIPError(
                    f"{path.name} is truncated or not a safetensors file (its header length field says "
                    f"{length:,} bytes, the file has {size:,}, at most {MAX_HEADER_BYTES:,} accepted): "
                    "download or export it again."
                )
            raw = handle.read(length)
    except OSError as error:
        raise FlexIPError(f"{path.name} cannot be read ({error.strerror}): check the file's permissions.") from None
    data = parse_bounded_json(
        raw, f"{path.name}'s safetensors header", MAX_HEADER_BYTES, MAX_STRUCTURE_BYTES, MAX_JSON_DEPTH
    )
    if not isinstance(data, dict):
        raise FlexIPError(f"{path.name} has a safetensors header that is not a JSON object: download it again.")
    metadata = data.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FlexIPError(f"{path.name} has __metadata__ that is not a map of strings: download or export it again.")
    if len(data) > MAX_TENSORS:
        raise FlexIPError(
            f"{path.name} lists {len(data):,} tensors, over the {MAX_TENSORS:,} accepted: it is not a model file "
            "this pack reads."
        )
    data_bytes = size - 8 - length
    tensors = {name: _entry(name, entry, data_bytes, path.name) for name, entry in data.items()}
    return Header(metadata, tensors)


def refuse_non_float(header: Header, file: str, fix: str) -> None:
    """FlexIPError naming the first tensor that is not F16/BF16/F32/F64; `fix` ends the sentence."""
    for name, info in header.tensors.items():
        if info.dtype not in FLOAT_DTYPES:
            raise FlexIPError(f"{file} stores {name} as {info.dtype}, not a float type: {fix}.")


def check_finite(tensors: dict[str, torch.Tensor], file: str) -> None:
    """FlexIPError naming the first tensor holding NaN or Inf (one min/max pass per tensor, one host read)."""
    names = [name for name, tensor in tensors.items() if tensor.numel()]
    if not names:
        return
    # aminmax propagates NaN and keeps ±Inf, so two numbers per tensor tell whether it is finite
    bounds = torch.stack([torch.stack(torch.aminmax(tensors[name].detach())).float() for name in names])
    bad = (~torch.isfinite(bounds)).any(dim=1)
    if bool(bad.any()):
        name = names[int(bad.nonzero()[0, 0])]
        raise FlexIPError(
            f"{file} has NaN or infinite values in {name}: the weights are broken, use another copy or checkpoint."
        )
