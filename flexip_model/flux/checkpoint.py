"""Reading InfiniteYou's weight files, the only module of `flexip_model.flux` that touches files.

Two kinds are read: each stage's `image_proj_model.bin` (a torch pickle {"image_proj": state dict})
and facexlib's `recognition_arcface_ir_se50.pth` (a pickled state dict in torch's pre-1.6 format,
which is not a zip archive); the same names in a `.safetensors` file are read too. A pickle is
read twice: first by a shape-only unpickler that knows tensors, storages and dicts and nothing
else, which gives every tensor's dtype and shape and every storage's size without allocating any
of them; the caller's expected names and shapes are checked against that; only then does
`torch.load(weights_only=True)` read the tensors, into no more memory than the file's own size.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import torch
from safetensors.torch import load_file

from ..errors import FlexIPError
from ..ip_adapter.checkpoint import TORCH_SUFFIXES, check_torch_archive, load_weights_only
from ..safetensors_header import MAX_RANK, MAX_TENSORS, check_finite, read_header

Shape = tuple[int, ...]
Reader = Callable[[], dict[str, torch.Tensor]]
# torch.serialization's pre-1.6 format: these two pickled numbers open the file
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
# every pickle of a file (the legacy format's five, a zip's data.pkl) lies within this many bytes;
# a state dict of a few hundred tensors pickles to ~100 KB
MAX_PICKLE_BYTES = 16 * 1024 * 1024
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


@dataclass(frozen=True)
class FileWords:
    """How refusals name a kind of file: `what` it should be, the `fix` that ends each sentence, its size bound."""

    what: str
    fix: str
    max_bytes: int


class TensorRecord(NamedTuple):
    """What a file says one tensor is, before any of it is read."""

    dtype: torch.dtype
    shape: Shape


class _StorageType(NamedTuple):
    dtype: torch.dtype


class _Storage(NamedTuple):
    key: str
    dtype: torch.dtype
    numel: int


class _Tensor(NamedTuple):
    storage: _Storage
    shape: Shape


class _Damaged(Exception):
    """The pickle is not the torch file it claims to be."""


class _Unsafe(Exception):
    """The pickle names a global beyond tensors, storages and dicts."""


def _ints(values: object) -> bool:
    return isinstance(values, tuple) and len(values) <= MAX_RANK and all(type(v) is int and v >= 0 for v in values)


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, *_: object) -> _Tensor:
    """torch._utils._rebuild_tensor(_v2)'s arguments, kept as a record."""
    if not isinstance(storage, _Storage) or type(offset) is not int or not _ints(size) or not _ints(stride):
        raise _Damaged
    return _Tensor(storage, cast(Shape, size))


def _rebuild_parameter(data: object, *_: object) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise _Damaged
    return data


_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles a torch file's object with records in place of tensors; refuses every other global.

    The records are NamedTuples: no instance dict, so a BUILD opcode cannot change them.
    """

    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise _Unsafe

    def persistent_load(self, pid: object) -> _Storage:
        # ("storage", type, key, location, numel) in a zip, plus view metadata in the legacy format
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise _Damaged
        kind, key, _location, numel = pid[1:5]
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise _Damaged
        storage = self.storages.setdefault(key, _Storage(key, kind.dtype, numel))
        if storage != (key, kind.dtype, numel) or len(self.storages) > MAX_TENSORS:
            raise _Damaged
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        # a view of the storage: (view key, offset, size), in elements
        if not (isinstance(view, tuple) and len(view) == 3 and _ints(view[1:]) and view[1] + view[2] <= numel):
            raise _Damaged
        return _Storage(str(view[0]), kind.dtype, view[2])


def _unpickle(stream: io.BytesIO) -> tuple[object, dict[str, _Storage]]:
    unpickler = _ShapeUnpickler(stream)
    return unpickler.load(), unpickler.storages


def _scan_zip(path: Path) -> tuple[object, dict[str, _Storage]]:
    with zipfile.ZipFile(path) as archive:
        records = {record.filename: record for record in archive.infolist()}
        pickles = [name for name in records if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1 or records[pickles[0]].file_size > MAX_PICKLE_BYTES:
            raise _Damaged
        obj, storages = _unpickle(io.BytesIO(archive.read(pickles[0])))
    prefix = pickles[0][: -len("data.pkl")]
    for key, storage in storages.items():
        record = records.get(f"{prefix}data/{key}")
        if record is None or record.file_size != storage.numel * storage.dtype.itemsize:
            raise _Damaged
    return obj, storages


def _scan_legacy(path: Path) -> tuple[object, dict[str, _Storage]]:
    """Torch's pre-1.6 layout: five pickles (magic, protocol, system info, the object, the storage keys),
    then each storage as an 8-byte element count and its bytes, in the order of the keys."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        stream = io.BytesIO(handle.read(MAX_PICKLE_BYTES))
        for expected in (_LEGACY_MAGIC, _LEGACY_PROTOCOL):
            if _unpickle(stream)[0] != expected:
                raise _Damaged
        if not isinstance(_unpickle(stream)[0], dict):
            raise _Damaged
        obj, storages = _unpickle(stream)
        keys = _unpickle(stream)[0]
        if not isinstance(keys, list) or len(keys) != len(storages) or set(keys) != set(storages):
            raise _Damaged
        offset = stream.tell()
        for key in keys:
            storage = storages[key]
            handle.seek(offset)
            if int.from_bytes(handle.read(8), "little") != storage.numel:
                raise _Damaged
            offset += 8 + storage.numel * storage.dtype.itemsize
            if offset > size:
                raise _Damaged
    if offset != size:
        raise _Damaged
    return obj, storages


def _flat_records(obj: object, part: str | None, name: str, words: FileWords) -> dict[str, TensorRecord]:
    """{tensor name: record} of a scanned pickle: the state dict itself, or the one under key `part`."""
    state = obj
    if part is not None:
        state = obj.get(part) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or len(state) > MAX_TENSORS:
        found = f"a dict with keys {sorted(str(key)[:40] for key in obj)[:4]}" if isinstance(obj, dict) else "no dict"
        wanted = f"a state dict under '{part}'" if part else "a state dict"
        raise FlexIPError(f"{name} holds {found}, not {wanted}, so it is not {words.what}: {words.fix}.")
    records = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, _Tensor):
            raise FlexIPError(
                f"{name} has {str(key)[:80]} that is not a tensor, so it is not {words.what}: {words.fix}."
            )
        records[key] = TensorRecord(value.storage.dtype, value.shape)
    return records


def _select(loaded: object, part: str | None) -> dict[str, torch.Tensor]:
    state = loaded[part] if part is not None and isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise _Damaged  # the scan saw tensors here; torch.load must agree
    return dict(state)


def _open_pickle(path: Path, words: FileWords, part: str | None) -> tuple[dict[str, TensorRecord], Reader]:
    size = path.stat().st_size
    if size > words.max_bytes:
        raise FlexIPError(
            f"{path.name} is {size:,} bytes, over the {words.max_bytes:,} accepted for {words.what}: {words.fix}."
        )
    damaged = f"download {words.what} again"
    with open(path, "rb") as handle:
        # torch.load's own test: a zip archive starts with a local file header, anything else is read as
        # the pre-1.6 layout (so a legacy file with a zip appended is scanned as torch will read it)
        is_zip = handle.read(4) == b"PK\x03\x04"
    if is_zip:
        check_torch_archive(path, words.max_bytes, words.what, words.fix, damaged)
    try:
        obj, _ = _scan_zip(path) if is_zip else _scan_legacy(path)
    except _Unsafe:
        raise FlexIPError(
            f"{path.name} holds more than tensors and would need full unpickling, which can run code, so it is "
            f"not {words.what}: {words.fix}."
        ) from None
    except Exception:  # _Damaged, or a damaged byte stream failing the unpickler anywhere
        raise FlexIPError(f"{path.name} is damaged or not a torch file: {damaged}.") from None
    records = _flat_records(obj, part, path.name, words)

    def read() -> dict[str, torch.Tensor]:
        loaded = load_weights_only(path, words.fix, damaged)
        try:
            return _select(loaded, part)
        except _Damaged:
            raise FlexIPError(f"{path.name} is damaged or not a torch file: {damaged}.") from None

    return records, read


def _open_safetensors(path: Path, words: FileWords, part: str | None) -> tuple[dict[str, TensorRecord], Reader]:
    header = read_header(path)
    prefix = f"{part}." if part else ""
    records = {}
    for key, info in header.tensors.items():
        if not key.startswith(prefix):
            continue
        if info.dtype not in _SAFETENSORS_DTYPES:
            raise FlexIPError(f"{path.name} stores {key} as {info.dtype}, so it is not {words.what}: {words.fix}.")
        records[key[len(prefix) :]] = TensorRecord(_SAFETENSORS_DTYPES[info.dtype], info.shape)

    def read() -> dict[str, torch.Tensor]:
        return {key[len(prefix) :]: t for key, t in load_file(str(path)).items() if key.startswith(prefix)}

    return records, read


def _shape_text(shape: Shape) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


def check_records(
    records: Mapping[str, TensorRecord],
    expected: Mapping[str, Shape],
    name: str,
    words: FileWords,
    counters: Collection[str] = (),
) -> None:
    """FlexIPError unless the file's tensors are exactly `expected` (names and shapes), each a float
    tensor; `counters` (batch-norm step counters) may be missing, and are integer scalars if present."""
    for key, shape in expected.items():
        record = records.get(key)
        if record is None:
            if key in counters:
                continue
            raise FlexIPError(f"{name} lacks {key}, so it is not {words.what}: {words.fix}.")
        if key in counters:
            if record.dtype.is_floating_point or record.dtype == torch.bool or record.shape != ():
                raise FlexIPError(f"{name} has {key} that is not an integer counter: {words.fix}.")
            continue
        if not record.dtype.is_floating_point:
            raise FlexIPError(f"{name} has {key} that is not a float tensor ({record.dtype}): {words.fix}.")
        if record.shape != shape:
            raise FlexIPError(
                f"{name} has {key} of shape {_shape_text(record.shape)} where {words.what} has "
                f"{_shape_text(shape)}: {words.fix}."
            )
    for key in records:
        if key not in expected:
            raise FlexIPError(f"{name} has an unexpected tensor {key[:80]}, so it is not {words.what}: {words.fix}.")


def read_weights(
    path: str | os.PathLike[str],
    words: FileWords,
    expected: Mapping[str, Shape],
    counters: Collection[str] = (),
    part: str | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (under key `part` of a pickle, or prefix `part.` of a .safetensors),
    after names, shapes and dtypes were checked against `expected` and before any was allocated; every
    float tensor finite. FlexIPError, one sentence naming the file, otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FlexIPError(f"{path.name} was not found at {path.parent}: check the file name and folder.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        records, read = _open_safetensors(path, words, part)
    elif suffix in TORCH_SUFFIXES:
        records, read = _open_pickle(path, words, part)
    else:
        raise FlexIPError(f"{path.name} is neither .safetensors nor a torch file (.pth, .bin): {words.fix}.")
    check_records(records, expected, path.name, words, counters)
    tensors = read()
    found = {key: (tensor.dtype, tuple(tensor.shape)) for key, tensor in tensors.items()}
    if found != {key: (record.dtype, record.shape) for key, record in records.items()}:
        raise FlexIPError(f"{path.name} is damaged or not a torch file: download {words.what} again.")
    check_finite({key: t for key, t in tensors.items() if t.is_floating_point()}, path.name)
    return tensors
