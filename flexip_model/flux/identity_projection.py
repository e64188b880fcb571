"""InfiniteYou's identity projection: one ArcFace embedding -> 8 tokens of FLUX's text width (docs/design.md §8).

Each stage (sim_stage1, aes_stage2) ships its own `image_proj_model.bin`, a torch pickle
{"image_proj": state dict} of IP-Adapter's Perceiver resampler (dim 1280, depth 4, 20 heads of
64, 8 queries, 512 -> 4096, ff_mult 4). Its names are those of our
`flexip_model.ip_adapter.image_projections.Resampler`, so the file loads into it with strict=True.
The tokens are the InfuseNet's text context.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..ip_adapter.image_projections import Resampler
from .arcface_ir_se50 import EMBEDDING_DIM
from .checkpoint import FileWords, read_weights

IDENTITY_TOKENS = 8
TOKEN_WIDTH = 4096  # FLUX's T5 context width (joint_attention_dim)
PROJECTION_FILE = "image_proj_model.bin"
PROJECTION_PART = "image_proj"
PROJECTION_WORDS = FileWords(
    what=f"an InfiniteYou identity projection ({PROJECTION_FILE} of sim_stage1 or aes_stage2)",
    fix=f"pick the {PROJECTION_FILE} of an InfiniteYou v1.0 stage in models/infiniteyou, downloaded again",
    max_bytes=2 * 1024**3,  # 85 M parameters: 340 MB in float32
)


def identity_projection() -> Resampler:
    """InfiniteYou's resampler with empty (meta) weights: ArcFace [B, 1, 512] -> tokens [B, 8, 4096]."""
    with torch.device("meta"):
        return Resampler(
            feature_dim=EMBEDDING_DIM,
            context_dim=TOKEN_WIDTH,
            width=1280,
            heads=20,
            depth=4,
            queries=IDENTITY_TOKENS,
            ff_mult=4,
        )


def load_identity_projection(path: str | os.PathLike[str]) -> Resampler:
    """A stage's image_proj_model.bin (or its image_proj.* in a .safetensors) as a float32 Resampler on
    the CPU, in eval mode; names and shapes are checked before any weight is read. FlexIPError otherwise."""
    projection = identity_projection()
    expected = {name: tuple(tensor.shape) for name, tensor in projection.state_dict().items()}
    tensors = read_weights(path, PROJECTION_WORDS, expected, part=PROJECTION_PART)
    projection.load_state_dict({name: t.float() for name, t in tensors.items()}, strict=True, assign=True)
    projection.requires_grad_(False)
    return projection.eval()


def identity_tokens(projection: Resampler, embedding: Tensor) -> Tensor:
    """Unit ArcFace embeddings [B, 512] -> a stage's identity tokens [B, 8, 4096] (one feature token each)."""
    weight = projection.proj_in.weight
    with torch.no_grad():
        return projection(embedding.to(weight).unsqueeze(1))
