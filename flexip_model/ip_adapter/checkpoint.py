"""Reading public IP-Adapter files, the only module of `flexip_model.ip_adapter` that touches files.

Two layouts exist: `.safetensors` with flat `image_proj.*` / `ip_adapter.*` names, and the
original `.bin`, a pickled {"image_proj": {...}, "ip_adapter": {...}} dict. A `.bin` is read
with `torch.load(weights_only=True)` only, which unpickles tensors and plain containers
and nothing else; a file that needs more is refused. The variant is detected and matched to
the model before any tensor of a `.safetensors` file is read.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import LayerSpec
from ..errors import FlexIPError
from ..safetensors_header import MAX_RANK, MAX_TENSORS, check_finite, read_header, refuse_non_float
from ..vocabulary import family_name
from .pair import IPAdapterBranch, IPAdapterPair
from .variants import IMAGE_PROJ, IP_LAYERS, IPAdapterSpec, Shape, describe, ip_adapter_index, match_layers

PathLike = str | os.PathLike[str]
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_PARTS = (IMAGE_PROJ[:-1], IP_LAYERS[:-1])
MAX_BIN_BYTES = 8 * 1024**3  # the largest released IP-Adapter .bin (plus SDXL) is ~1 GB
# torch.save's archive: data.pkl, version, byteorder, .data/serialization_id and one record per storage
_ARCHIVE_EXTRA_RECORDS = 16
_USE_SAFETENSORS = "use the .safetensors version of this IP-Adapter file"

Reader = Callable[[], dict[str, torch.Tensor]]


def _open_safetensors(path: Path) -> tuple[dict[str, Shape], Reader]:
    header = read_header(path)
    refuse_non_float(header, path.name, "download the original file again")
    return {name: info.shape for name, info in header.tensors.items()}, lambda: load_file(str(path))


def check_torch_archive(path: Path, max_bytes: int, kind: str, fix: str, damaged_fix: str) -> None:
    """Bound a torch.save zip archive before unpickling: its size, its record count, and records stored as
    they are (torch.save never compresses, so a record cannot expand beyond the file).

    `kind` names what the file should be ("an IP-Adapter .bin"); `fix` and `damaged_fix` end the
    sentences of an oversized or foreign archive and of a damaged file.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise FlexIPError(f"{path.name} is {size:,} bytes, over the {max_bytes:,} accepted for {kind}: {fix}.")
    try:
        with open(path, "rb") as handle:
            # torch.load reads a file as a zip only if it starts with a local file header (a zip appended
            # to a pre-1.6 pickle would pass zipfile's test, which looks at the end)
            if handle.read(4) != b"PK\x03\x04":
                raise zipfile.BadZipFile
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):  # also the pre-1.6 torch format, which is not a zip
        raise FlexIPError(f"{path.name} is damaged or not a torch file: {damaged_fix}.") from None
    if (
        len(records) > MAX_TENSORS + _ARCHIVE_EXTRA_RECORDS
        or any(record.compress_type != zipfile.ZIP_STORED for record in records)
        or sum(record.file_size for record in records) > size
    ):
        raise FlexIPError(
            f"{path.name} holds {len(records):,} records or compressed ones, not a torch.save archive of {kind}: {fix}."
        )


def load_weights_only(path: Path, unsafe_fix: str, damaged_fix: str) -> object:
    """`torch.load(weights_only=True)` of a bounded torch file: tensors and plain containers, nothing else.

    FlexIPError ending in `unsafe_fix` when the file holds more than that (the weights-only unpickler
    refused a global), ending in `damaged_fix` when it is damaged or foreign.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # the weights-only unpickler names the global it refused (a class, a function to call);
        # anything else it stumbles on is a damaged or foreign byte stream
        if any(word in str(error).lower() for word in ("global", "reduce", "build")):
            raise FlexIPError(
                f"{path.name} holds more than tensors and would need full unpickling, which can run code: {unsafe_fix}."
            ) from None
        raise FlexIPError(f"{path.name} is damaged or not a torch file: {damaged_fix}.") from None
    except Exception:
        raise FlexIPError(f"{path.name} is damaged or not a torch file: {damaged_fix}.") from None


def _open_torch(path: Path) -> tuple[dict[str, Shape], Reader]:
    check_torch_archive(
        path, MAX_BIN_BYTES, "an IP-Adapter .bin", _USE_SAFETENSORS, "download it again or use its .safetensors version"
    )
    data = load_weights_only(path, _USE_SAFETENSORS, "download it again")
    if not isinstance(data, dict) or set(data) != set(_PARTS):
        found = sorted(str(key)[:40] for key in data)[:4] if isinstance(data, dict) else type(data).__name__
        raise FlexIPError(
            f"{path.name} holds {found}, not the image_proj and ip_adapter weights of an IP-Adapter file: "
            "pick an IP-Adapter .safetensors or .bin file in models/ipadapter."
        )
    tensors = {}
    for part in _PARTS:
        if not isinstance(data[part], dict) or len(data[part]) > MAX_TENSORS:
            raise FlexIPError(
                f"{path.name} has a {part} that is not a dict of at most {MAX_TENSORS:,} tensors: "
                "download the file again."
            )
        for name, tensor in data[part].items():
            if (
                not isinstance(name, str)
                or not isinstance(tensor, torch.Tensor)
                or not tensor.is_floating_point()
                or tensor.ndim > MAX_RANK
            ):
                raise FlexIPError(
                    f"{path.name} has {part}.{str(name)[:80]} that is not a float tensor: download the file again."
                )
            tensors[f"{part}.{name}"] = tensor
    return {name: tuple(tensor.shape) for name, tensor in tensors.items()}, lambda: tensors


def open_file(path: PathLike) -> tuple[dict[str, Shape], Reader]:
    """Flat tensor shapes ({"image_proj.proj.weight": (3072, 1024), ...}) and a reader of the tensors."""
    path = Path(path)
    if not path.is_file():
        raise FlexIPError(f"{path.name} was not found at {path.parent}: check the file name and folder.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _open_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _open_torch(path)
    raise FlexIPError(f"{path.name} is neither .safetensors nor .bin: pick an IP-Adapter file in one of these formats.")


def _detect(path: PathLike) -> tuple[IPAdapterSpec, Reader]:
    path = Path(path)
    shapes, read = open_file(path)
    return describe(path.name, shapes), read


def _branch(
    spec: IPAdapterSpec,
    read: Reader,
    layers: tuple[LayerSpec, ...],
    context_dim: int | None,
    dtype: torch.dtype | None,
) -> IPAdapterBranch:
    """Match the file's layers to the model's, then read its tensors into an IPAdapterBranch."""
    ordered = match_layers(spec, layers, context_dim)
    tensors = read()
    check_finite(tensors, spec.name)
    state = {name: tensor for name, tensor in tensors.items() if name.startswith(IMAGE_PROJ)}
    for number, layer in enumerate(ordered):
        for kind in ("k", "v"):
            state[f"layers.{layer.key}.to_{kind}.weight"] = tensors[
                f"{IP_LAYERS}{ip_adapter_index(number)}.to_{kind}_ip.weight"
            ]
    if dtype is not None:
        state = {name: tensor.to(dtype) for name, tensor in state.items()}
    with torch.device("meta"):
        branch = IPAdapterBranch(spec, layers)
    branch.load_state_dict(state, strict=True, assign=True)
    return branch.eval()


def load_pair(
    preservation: PathLike,
    personalization: PathLike,
    layers: Sequence[LayerSpec],
    context_dim: int | None = None,
    dtype: torch.dtype | None = None,
) -> IPAdapterPair:
    """Two IP-Adapter files as the preservation and personalization branches of one FLEXIP adapter.

    Both are detected (headers only for .safetensors) and checked against each other and the
    model before either file's tensors are read.
    """
    layers = tuple(layers)
    (pres_spec, pres_read), (pers_spec, pers_read) = _detect(preservation), _detect(personalization)
    if pres_spec.context_dim != pers_spec.context_dim:
        raise FlexIPError(
            f"{pres_spec.name} is for {family_name(pres_spec.context_dim)} but {pers_spec.name} for "
            f"{family_name(pers_spec.context_dim)}: pick two IP-Adapter files of the same base model."
        )
    for spec in (pres_spec, pers_spec):
        match_layers(spec, layers, context_dim)
    return IPAdapterPair(
        _branch(pres_spec, pres_read, layers, context_dim, dtype),
        _branch(pers_spec, pers_read, layers, context_dim, dtype),
        layers,
    ).eval()
