"""FLUX residual groups and the gated blend of two InfuseNets' residuals (docs/design.md §8).

An InfuseNet (a FLUX controlnet) emits one residual per double-stream block and per single-stream
block of its own; ComfyUI's `ControlNetFlux` repeats each over a run of the DiT's 19 double and 38
single blocks, in the control dict's input and output lists, the same tensor object along a run.
A *residual group* is one such run: 4 + 10 = 14 groups for InfiniteYou. The gate gives each group
a γ, and the blended residual is s · (γ · r_sim + (1 − γ) · r_aes), computed once per group and
shared along its run as ComfyUI shares it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention import Weight
from ..errors import FlexIPError
from ..vocabulary import INPUT_BLOCK, MIDDLE_BLOCK, OUTPUT_BLOCK

# ComfyUI's control dict uses its UNet block names: for FLUX the input list runs over the
# double-stream blocks, the output list over the single-stream ones; the middle list is empty but
# other controlnets' merge reads it
DOUBLE_KEY, SINGLE_KEY, MIDDLE_KEY = INPUT_BLOCK, OUTPUT_BLOCK, MIDDLE_BLOCK
Residuals = dict[str, list[Tensor | None]]
PATCH = 2  # FLUX packs 2 x 2 latent pixels into one token


@dataclass(frozen=True)
class ResidualGroup:
    """One residual of an InfuseNet, repeated over a run of DiT blocks; what the gate reads of a layer.

    Double-stream groups take the gate schedule's input-block overrides and single-stream groups its
    output-block ones: ComfyUI files them under the control dict's input and output lists.
    """

    key: str  # "double_0" .. "single_9"
    block: str


def residual_groups(double: int, single: int) -> tuple[ResidualGroup, ...]:
    """The groups of an InfuseNet with `double` and `single` residuals, double-stream first."""
    return tuple(ResidualGroup(f"double_{i}", INPUT_BLOCK) for i in range(double)) + tuple(
        ResidualGroup(f"single_{i}", OUTPUT_BLOCK) for i in range(single)
    )


def group_runs(entries: Sequence[Tensor | None]) -> list[tuple[Tensor, int]]:
    """The distinct tensors of a control list in order, each with the length of its run."""
    runs: list[tuple[Tensor, int]] = []
    for entry in entries:
        if entry is None:
            raise FlexIPError("an InfuseNet gave no residual for a block: load an InfiniteYou InfuseNet file.")
        if runs and runs[-1][0] is entry:
            runs[-1] = (entry, runs[-1][1] + 1)
        else:
            runs.append((entry, 1))
    return runs


def blend_residuals(sim: Residuals | None, aes: Residuals | None, gates: Sequence[Weight]) -> Residuals:
    """γ · sim + (1 − γ) · aes per residual group, shared along each run as the inputs share it.

    `gates[g]` is group g's γ (double-stream groups first): a float, a [] or a [B] tensor. A
    missing side is a dead branch (the gate holds its γ at a constant 1 for sim, 0 for aes), and
    the other side passes through as it is; otherwise one lerp per group. The strength s is
    applied by the caller (ComfyUI's control_merge scales each shared tensor once).
    """
    present = sim if sim is not None else aes
    assert present is not None  # the caller runs at least one InfuseNet
    out: Residuals = {DOUBLE_KEY: [], MIDDLE_KEY: [], SINGLE_KEY: []}
    group = 0
    for key in (DOUBLE_KEY, SINGLE_KEY):
        runs = group_runs(present[key])
        if sim is not None and aes is not None:
            aes_runs = group_runs(aes[key])
            runs = [
                (_mix(residual, aes_runs[index][0], gates[group + index]), length)
                for index, (residual, length) in enumerate(runs)
            ]
        for residual, length in runs:
            out[key].extend([residual] * length)
        group += len(runs)
    return out


def _mix(sim: Tensor, aes: Tensor, gamma: Weight) -> Tensor:
    if isinstance(gamma, float):
        if gamma == 1.0:
            return sim
        if gamma == 0.0:
            return aes
    if isinstance(gamma, Tensor) and gamma.ndim == 1:
        gamma = gamma.reshape(-1, 1, 1)  # one γ per row (a gate sweep) over the row's tokens and channels
    return torch.lerp(aes, sim, gamma)


def mask_tokens(mask: Tensor, latent_height: int, latent_width: int, batch: int) -> Tensor:
    """A [M, 1, H, W] mask on FLUX's token grid for a latent of that size: [batch, N, 1].

    Resized (bilinear, any aspect ratio) to the padded latent's 2 x 2 patches, in the DiT's
    row-major token order; a batch of M masks repeats over the `batch` rows.
    """
    grid = (-(-latent_height // PATCH), -(-latent_width // PATCH))
    tokens = F.interpolate(mask.float(), size=grid, mode="bilinear").flatten(1).unsqueeze(-1)
    if batch % tokens.shape[0]:
        raise FlexIPError(
            f"the InfiniteYou mask batch has {tokens.shape[0]} masks but the sampler runs {batch} images: "
            "give one mask, or one per image."
        )
    return tokens.repeat(batch // tokens.shape[0], 1, 1)
