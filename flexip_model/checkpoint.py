"""FlexIP checkpoint format v1 (docs/design.md §5): one .safetensors file, config JSON in the metadata.

The only module of flexip_model that touches files. Everything is validated from the header
before a single tensor is read, and every failure is one sentence naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .adapter import FlexIPAdapter, tensor_count
from .config import FlexIPConfig
from .errors import FlexIPError
from .safetensors_header import FLOAT_DTYPES, Header, check_finite, read_header
from .vocabulary import attn2_layer, comfy_order, layer_key

METADATA_KEY = "flexip"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PathLike = str | os.PathLike[str]
logger = logging.getLogger(__name__)


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FlexIPError(
            f"{path.name} is a pickle file, which can run code when loaded: convert it to .safetensors "
            "with a safetensors tool or re-export the adapter."
        )


def _read_header(path: Path) -> Header:
    """The checked header (metadata, tensor shapes and dtypes); no tensor data is read."""
    _refuse_pickle(path)
    return read_header(path)


def _few(names: list[str]) -> str:
    shown = ", ".join(name[:80] for name in sorted(names)[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _config_of(path: Path, header: Header) -> FlexIPConfig:
    if METADATA_KEY not in header.metadata:
        raise FlexIPError(
            f"{path.name} has no FlexIP config in its metadata, so it is not a FlexIP adapter: "
            "pick a file made by FlexIP (python -m flexip_model inspect FILE checks one)."
        )
    return FlexIPConfig.from_json(header.metadata[METADATA_KEY], path.name)


def read_config(path: PathLike) -> FlexIPConfig:
    """The config stored in the file's metadata (validated on its own, tensors not checked)."""
    path = Path(path)
    return _config_of(path, _read_header(path))


def validate(path: PathLike) -> FlexIPConfig:
    """Check the whole file against its config from the header alone; returns the config.

    The config's sizes are bounded (SIZE_BOUNDS) and its tensor count matches the header's before
    the adapter is built on `meta` for the shapes, so a file cannot choose the work done here.
    """
    path = Path(path)
    header = _read_header(path)
    config = _config_of(path, header)
    tensors = header.tensors
    count = tensor_count(config)
    if count != len(tensors):
        raise FlexIPError(
            f"{path.name} holds {len(tensors)} tensors but its config describes {count}: "
            "the file and its config disagree, export it again."
        )
    with torch.device("meta"):  # shapes only, no memory
        expected = {name: tuple(t.shape) for name, t in FlexIPAdapter.from_config(config).state_dict().items()}
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    if missing:
        raise FlexIPError(
            f"{path.name} lacks {len(missing)} tensors its config needs ({_few(missing)}): "
            "the file is incomplete, export it again."
        )
    if extra:
        raise FlexIPError(
            f"{path.name} has {len(extra)} tensors its config does not describe ({_few(extra)}): "
            "the file and its config disagree, export it again."
        )
    for name, shape in expected.items():
        actual, dtype = tensors[name].shape, tensors[name].dtype
        if actual != shape:
            raise FlexIPError(
                f"{path.name} has {name} of shape {list(actual)} but its config needs {list(shape)}: "
                "the file and its config disagree, export it again."
            )
        if dtype not in FLOAT_DTYPES:
            raise FlexIPError(
                f"{path.name} stores {name} as {dtype}, not a float type: export it as float16, bfloat16 or float32."
            )
    return config


def save(path: PathLike, adapter: FlexIPAdapter) -> None:
    """Write `adapter` as a FlexIP v1 file (tensors in their current dtype, moved to CPU)."""
    path = Path(path)
    _refuse_pickle(path)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in adapter.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: adapter.config.to_json()})


def load(path: PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> FlexIPAdapter:
    """Validate, then load the adapter onto `device` (optionally cast to `dtype`), in eval mode."""
    config = validate(path)
    tensors = load_file(str(path), device=str(device))
    check_finite(tensors, Path(path).name)
    if dtype is not None:
        tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    with torch.device("meta"):
        adapter = FlexIPAdapter.from_config(config)
    adapter.load_state_dict(tensors, strict=True, assign=True)
    logger.info(
        "loaded FlexIP %s: %s, %d layers, gate_mode %s",
        Path(path).name,
        config.base,
        len(config.layers),
        config.gate_mode,
    )
    return adapter.eval()


_ATTN2_PREFIXES = ("model.diffusion_model.", "")  # full checkpoint, or a UNet-only LDM file
_TO_K = ".to_k.weight"


def _attn2_layer(name: str) -> tuple[str, str, int, int] | None:
    """'...input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight' -> (stem, 'input', 1, 0); None otherwise."""
    stem = name[: -len(_TO_K)] if name.endswith(_TO_K) else ""
    for prefix in _ATTN2_PREFIXES:
        layer = attn2_layer(stem[len(prefix) :]) if stem.startswith(prefix) else None
        if layer is not None:
            return (stem, *layer)
    return None


def read_unet_cross_attention(path: PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each attn2 layer's (to_k, to_v) weights [inner, d] from an SD checkpoint, keyed like
    'input_1_0' and in ComfyUI's order; only these tensors are read."""
    path = Path(path)
    tensors = _read_header(path).tensors
    found = sorted(
        (layer for layer in map(_attn2_layer, tensors) if layer is not None),
        key=lambda layer: comfy_order(layer[1:]),
    )
    for stem, *_ in found:
        if f"{stem}.to_v.weight" not in tensors:
            raise FlexIPError(
                f"{path.name} has {stem}.to_k.weight but no matching to_v: "
                "the checkpoint is incomplete, use a complete one."
            )
    if not found:
        raise FlexIPError(
            f"{path.name} has no UNet cross-attention weights (model.diffusion_model...attn2.to_k.weight): "
            "pass an SD1.5 or SDXL checkpoint in the original (LDM) layout."
        )
    weights = {}
    with safe_open(str(path), framework="pt") as handle:
        for stem, block, block_id, index in found:
            weights[layer_key(block, block_id, index)] = (
                handle.get_tensor(f"{stem}.to_k.weight"),
                handle.get_tensor(f"{stem}.to_v.weight"),
            )
    return weights
