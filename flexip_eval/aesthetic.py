"""The LAION aesthetic predictor v2 head: an MLP from a CLIP ViT-L/14 image embedding to a 1..10 score.

The head of christophschuhmann/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth) is five
linear layers with dropout between the first four and no activation anywhere; its input is the
L2-normalised CLIP ViT-L/14 image embedding ([B, 768]). The file read here is that state dict saved
as safetensors, keys as in the original `nn.Sequential` named `layers` (dropouts at 1, 3, 5):

    layers.0.weight [1024, 768]  layers.0.bias [1024]
    layers.2.weight [128, 1024]  layers.2.bias [128]
    layers.4.weight [64, 128]    layers.4.bias [64]
    layers.6.weight [16, 64]     layers.6.bias [16]
    layers.7.weight [1, 16]      layers.7.bias [1]

The .pth is a pickle, which can run code when loaded, so it is never read here; convert it once with
`python -c "import torch, safetensors.torch as s; s.save_file(torch.load('sac+logos+ava1-l14-linearMSE.pth',
weights_only=True), 'aesthetic.safetensors')"`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from flexip_model.errors import FlexIPError
from flexip_model.safetensors_header import check_finite, read_header, refuse_non_float

MODEL = "LAION aesthetic predictor v2 head (sac+logos+ava1-l14-linearMSE.pth)"


def aesthetic_head(width: int) -> torch.nn.Sequential:
    """The original head's layers for [B, width] embeddings; its dropouts (1, 3, 5) are inert in eval mode."""
    return torch.nn.Sequential(
        torch.nn.Linear(width, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    )


def expected_shapes(width: int) -> dict[str, tuple[int, ...]]:
    """{file key: shape} of a head reading [B, width] embeddings (width 768 for CLIP ViT-L/14)."""
    with torch.device("meta"):
        return {f"layers.{key}": tuple(value.shape) for key, value in aesthetic_head(width).state_dict().items()}


def _input_width(path: Path) -> int:
    """The embedding width the head at `path` reads, from its header alone; FlexIPError on any other file."""
    if path.suffix.lower() != ".safetensors":
        raise FlexIPError(
            f"the aesthetic head {path} is not a .safetensors file (a .pth is a pickle, which can run code when "
            f"loaded): convert the {MODEL} as flexip_eval/aesthetic.py shows."
        )
    if not path.is_file():
        raise FlexIPError(
            f"the aesthetic head {path} was not found: put the {MODEL} converted to safetensors "
            "there or set [judges] aesthetic."
        )
    header = read_header(path)
    first = header.tensors.get("layers.0.weight")
    width = first.shape[1] if first is not None and len(first.shape) == 2 else 0
    shapes = {name: info.shape for name, info in header.tensors.items()}
    if width == 0 or shapes != expected_shapes(width):
        raise FlexIPError(
            f"{path} does not hold the keys and shapes of the {MODEL} (layers.0 to layers.7, 1024-128-64-16-1): "
            "convert the original .pth as flexip_eval/aesthetic.py shows."
        )
    refuse_non_float(header, str(path), f"convert the {MODEL} again")
    return width


def load_aesthetic_head(path: Path, width: int) -> torch.nn.Sequential:
    """The head from its safetensors file (never a pickle), fp32, on the CPU, in eval mode.

    `width` is the judging CLIP's embedding width; the file must read that width.
    """
    file_width = _input_width(path)
    if file_width != width:
        raise FlexIPError(
            f"the aesthetic head {path} reads {file_width}-wide CLIP embeddings but the CLIP of [judges] "
            f"aesthetic_clip (by default clip) gives {width}: set aesthetic_clip to a folder of "
            "openai/clip-vit-large-patch14, the CLIP the head was trained on."
        )
    weights = load_file(str(path))
    check_finite(weights, str(path))
    head = aesthetic_head(width)
    head.load_state_dict({name.removeprefix("layers."): tensor.float() for name, tensor in weights.items()})
    return head.eval()
