"""ArcFace IR-SE50, the face recognition network InfiniteYou embeds identities with (docs/design.md §8).

A 50-layer improved-residual network with squeeze-and-excitation units (Deng et al., ArcFace,
2019): an aligned 112 px face, BGR in [-1, 1], -> a unit-length 512-d identity. Module and
parameter names are those of facexlib's `Backbone(num_layers=50, mode="ir_se")`, so its
`recognition_arcface_ir_se50.pth` loads with `strict=True`; facexlib itself is not needed.
Inference only: the model is used in eval mode (batch norms read their running statistics).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import FileWords, read_weights

FACE_SIZE = 112  # ArcFace's aligned crop
EMBEDDING_DIM = 512
# (channels, units) per stage; the first unit of each stage halves the feature map: 112 -> 7
STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))
SE_REDUCTION = 16
IR_SE50_FILE = "recognition_arcface_ir_se50.pth"
IR_SE50_WORDS = FileWords(
    what=f"facexlib's ArcFace IR-SE50 ({IR_SE50_FILE})",
    fix=f"put facexlib's {IR_SE50_FILE} (release v0.1.0) into models/infiniteyou and pick it",
    max_bytes=1024**3,  # the release is 175 MB of float32 weights
)


class SqueezeExcitation(nn.Module):
    """Channel gate: x · σ(W2 ReLU(W1 avgpool(x))), the two 1x1 convolutions bias-free."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // SE_REDUCTION, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // SE_REDUCTION, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class ResidualUnitSE(nn.Module):
    """BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN -> SE, plus a shortcut of the same stride."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        # with equal widths the shortcut only subsamples: a 1x1 max pool is a strided pick, no weights
        self.shortcut_layer: nn.Module = (
            nn.MaxPool2d(1, stride)
            if in_channels == channels
            else nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))
        )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels),
            SqueezeExcitation(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, C, H / stride, W / stride]."""
        return self.res_layer(x) + self.shortcut_layer(x)


class ArcFaceIRSE50(nn.Module):
    """Aligned faces [B, 3, 112, 112] (BGR in [-1, 1]) -> unit-length identities [B, 512]."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, width = [], 64
        for channels, count in STAGES:
            for unit in range(count):
                units.append(ResidualUnitSE(width, channels, 2 if unit == 0 else 1))
                width = channels
        self.body = nn.Sequential(*units)
        side = FACE_SIZE // 2 ** len(STAGES)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Dropout(0.6),  # training only; keeps the file's indices (3: linear, 4: batch norm)
            nn.Flatten(),
            nn.Linear(width * side * side, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )

    def forward(self, faces: Tensor) -> Tensor:
        """[B, 3, 112, 112] -> [B, 512], each row of unit L2 norm."""
        return F.normalize(self.output_layer(self.body(self.input_layer(faces))), dim=1)


def arcface_input(crops: Tensor) -> Tensor:
    """Aligned face crops [B, 112, 112, 3], RGB in 0..1 (ComfyUI's IMAGE) -> [B, 3, 112, 112], BGR in [-1, 1]."""
    return (crops.flip(-1).permute(0, 3, 1, 2).float() * 2 - 1).contiguous()


def _counters(module: nn.Module) -> set[str]:
    """The batch norms' num_batches_tracked: training counters the release may lack (older torch)."""
    return {name for name in module.state_dict() if name.endswith("num_batches_tracked")}


def load_ir_se50(path: str | os.PathLike[str]) -> ArcFaceIRSE50:
    """facexlib's IR-SE50 file (a pickled state dict, or the same names in a .safetensors) as a float32
    ArcFaceIRSE50 on the CPU, in eval mode. Every name, shape and value is checked before the module's
    weights exist; FlexIPError (one sentence naming the file) otherwise."""
    with torch.device("meta"):
        model = ArcFaceIRSE50()
    expected: Mapping[str, tuple[int, ...]] = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    counters = _counters(model)
    state = {name: tensor.float() for name, tensor in read_weights(path, IR_SE50_WORDS, expected, counters).items()}
    # the counters only count training steps: zero whether the file has them or not
    state.update({name: torch.zeros((), dtype=torch.long) for name in counters})
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
