"""InfiniteYou's InfuseNet files: checked from their safetensors header, then loaded by ComfyUI's controlnet loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import comfy.controlnet
import comfy.ldm.flux.controlnet

from flexip_model.errors import FlexIPError
from flexip_model.safetensors_header import Header, read_header

from .folders import model_file

# a diffusers FluxControlNetModel with a latent control input (ComfyUI's InstantX route), and
# InfiniteYou's width: 4096-wide identity tokens, 16 latent channels in 2 x 2 patches
_CONTEXT_KEY, _CONTROL_IN_KEY = "context_embedder.weight", "controlnet_x_embedder.weight"
_REQUIRED = ("controlnet_blocks.0.weight", "controlnet_single_blocks.0.weight", _CONTROL_IN_KEY, _CONTEXT_KEY)
TOKEN_WIDTH, CONTROL_CHANNELS = 4096, 64
_FIX = "pick an InfiniteYou InfuseNet (infusenet_sim_* or infusenet_aes_*, bf16 or fp8) from models/controlnet"


@dataclass(frozen=True)
class InfuseNetFile:
    """An InfuseNet file whose header passed the checks: where it is, and its residual groups."""

    name: str
    path: str
    groups: tuple[int, int]  # (double, single) residuals, counted in the header


def check_infusenet(name: str, where: str) -> InfuseNetFile:
    """The InfuseNet file `name` in models/controlnet, checked from its header alone; one FlexIPError sentence."""
    path = model_file("controlnet", name, where)
    if not path.endswith(".safetensors"):
        raise FlexIPError(f"{where} {name} is not a .safetensors file: {_FIX}.")
    try:
        header = read_header(Path(path))  # bounded; nothing is read from an untrusted file before it
    except FlexIPError as error:
        raise FlexIPError(f"{where}: {error}") from None
    missing = [key for key in _REQUIRED if key not in header.tensors]
    if missing:
        raise FlexIPError(f"{where} {name} is not an InfuseNet (it has no {missing[0]}): {_FIX}.")
    context, control_in = header.tensors[_CONTEXT_KEY].shape, header.tensors[_CONTROL_IN_KEY].shape
    if len(context) != 2 or context[1] != TOKEN_WIDTH or len(control_in) != 2 or control_in[1] != CONTROL_CHANNELS:
        raise FlexIPError(
            f"{where} {name} is a FLUX controlnet but not InfiniteYou's (its {_CONTEXT_KEY} is {list(context)} "
            f"and its {_CONTROL_IN_KEY} {list(control_in)}, InfuseNets have [3072, {TOKEN_WIDTH}] and "
            f"[3072, {CONTROL_CHANNELS}]): {_FIX}."
        )
    return InfuseNetFile(
        name, path, (_count(header, "controlnet_blocks."), _count(header, "controlnet_single_blocks."))
    )


def _count(header: Header, prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in header.tensors if key.startswith(prefix)})


def load_infusenet(file: InfuseNetFile, where: str) -> comfy.controlnet.ControlNet:
    """A checked InfuseNet file as ComfyUI's ControlNet (its own loader: dtype, fp8 manual cast, offloading)."""
    try:
        control = comfy.controlnet.load_controlnet(file.path)
    except Exception as error:  # ComfyUI's loader names no file: say which one, and why
        raise FlexIPError(
            f"{where} {file.name} could not be loaded by ComfyUI ({type(error).__name__}: {error}): {_FIX}."
        ) from None
    model = getattr(control, "control_model", None)
    if control is None or not isinstance(model, comfy.ldm.flux.controlnet.ControlNetFlux) or not model.latent_input:
        raise FlexIPError(f"{where} {file.name} did not load as a FLUX controlnet with a latent input: {_FIX}.")
    return control
