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
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..config import LayerSpec
from ..errors import FlexIPError
from .pair import IPAdapterBranch, IPAdapterPair
from .variants import IMAGE_PROJ, IP_LAYERS, IPAdapterSpec, Shape, describe, family_name, ip_adapter_index, match_layers

PathLike = Union[str, os.PathLike]
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_PARTS = (IMAGE_PROJ[:-1], IP_LAYERS[:-1])
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

Reader = Callable[[], dict[str, torch.Tensor]]


def _open_safetensors(path: Path) -> tuple[dict[str, Shape], Reader]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes, dtypes = {}, {}
            for name in handle.keys():
                view = handle.get_slice(name)
                shapes[name], dtypes[name] = tuple(view.get_shape()), view.get_dtype()
    except SafetensorError:
        raise FlexIPError(f"{path.name} is truncated or not a safetensors file: download it again.") from None
    for name, dtype in dtypes.items():
        if dtype not in _FLOAT_DTYPES:
            raise FlexIPError(f"{path.name} stores {name} as {dtype}, not a float type: download the original file again.")
    return shapes, lambda: load_file(str(path))


def _open_torch(path: Path) -> tuple[dict[str, Shape], Reader]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # the weights-only unpickler names the global it refused (a class, a function to call);
        # anything else it stumbles on is a damaged or foreign byte stream
        if any(word in str(error).lower() for word in ("global", "reduce", "build")):
            raise FlexIPError(
                f"{path.name} holds more than tensors and would need full unpickling, which can run code: "
                "use the .safetensors version of this IP-Adapter file.") from None
        raise FlexIPError(f"{path.name} is damaged or not a torch file: download it again.") from None
    except (RuntimeError, EOFError, ValueError):
        raise FlexIPError(f"{path.name} is damaged or not a torch file: download it again.") from None
    if not isinstance(data, dict) or set(data) != set(_PARTS):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise FlexIPError(
            f"{path.name} holds {found}, not the image_proj and ip_adapter weights of an IP-Adapter file: "
            "pick an IP-Adapter .safetensors or .bin file in models/ipadapter.")
    tensors = {}
    for part in _PARTS:
        if not isinstance(data[part], dict):
            raise FlexIPError(f"{path.name} has a {part} that is not a dict of tensors: download the file again.")
        for name, tensor in data[part].items():
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise FlexIPError(f"{path.name} has {part}.{name} that is not a float tensor: download the file again.")
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


def _branch(spec: IPAdapterSpec, read: Reader, layers: tuple[LayerSpec, ...], context_dim: Optional[int],
            dtype: Optional[torch.dtype]) -> IPAdapterBranch:
    """Match the file's layers to the model's, then read its tensors into an IPAdapterBranch."""
    ordered = match_layers(spec, layers, context_dim)
    tensors = read()
    state = {name: tensor for name, tensor in tensors.items() if name.startswith(IMAGE_PROJ)}
    for number, layer in enumerate(ordered):
        for kind in ("k", "v"):
            state[f"layers.{layer.key}.to_{kind}.weight"] = tensors[f"{IP_LAYERS}{ip_adapter_index(number)}.to_{kind}_ip.weight"]
    if dtype is not None:
        state = {name: tensor.to(dtype) for name, tensor in state.items()}
    with torch.device("meta"):
        branch = IPAdapterBranch(spec, layers)
    branch.load_state_dict(state, strict=True, assign=True)
    return branch.eval()


def load_branch(path: PathLike, layers: Sequence[LayerSpec], context_dim: Optional[int] = None,
                dtype: Optional[torch.dtype] = None) -> IPAdapterBranch:
    """One IP-Adapter file matched to a model's attn2 `layers` (and its text context width)."""
    spec, read = _detect(path)
    return _branch(spec, read, tuple(layers), context_dim, dtype)


def load_pair(preservation: PathLike, personalization: PathLike, layers: Sequence[LayerSpec],
              context_dim: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> IPAdapterPair:
    """Two IP-Adapter files as the preservation and personalization branches of one FLEXIP adapter.

    Both are detected (headers only for .safetensors) and checked against each other and the
    model before either file's tensors are read.
    """
    layers = tuple(layers)
    (pres_spec, pres_read), (pers_spec, pers_read) = _detect(preservation), _detect(personalization)
    if pres_spec.context_dim != pers_spec.context_dim:
        raise FlexIPError(
            f"{pres_spec.name} is for {family_name(pres_spec.context_dim)} but {pers_spec.name} for "
            f"{family_name(pers_spec.context_dim)}: pick two IP-Adapter files of the same base model.")
    for spec in (pres_spec, pers_spec):
        match_layers(spec, layers, context_dim)
    return IPAdapterPair(_branch(pres_spec, pres_read, layers, context_dim, dtype),
                         _branch(pers_spec, pers_read, layers, context_dim, dtype), layers).eval()
