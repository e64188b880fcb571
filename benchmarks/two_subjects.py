"""Several subjects: what a second subject adds to a step, against what the first adds (deterministic counts).

SD1.5: the comfy tests' tiny SD1.5 UNet (tools/fixtures/tiny.py: ComfyUI's own SD15 model, 7
cross-attention layers) in compatibility mode (an ip-adapter-plus + ip-adapter pair fitted to its
layers, random weights), a step as `workload.model_step` makes it (cond and uncond batched), counted
on real tensors in the steady state of a run. One subject is one Apply FlexIP with a left-half mask;
two are a second Apply FlexIP chained on its model with a right-half mask and another subject, as
the workflow `flexip_two_subjects_sd15` chains them.

FLUX: one Apply FlexIP InfiniteYou with a left-half mask against two chained on the positive
conditioning (the second with another identity and a right-half mask), as
`flexip_two_identities_flux` chains them; the step of `flux_pair.run`. Judged on a FLUX of
FLUX.1-dev's depth at width 128 with InfuseNets of InfiniteYou's depth: an InfuseNet gives 57
residual entries, which the second pair adds to the first's (ComfyUI's `control_merge`) and the DiT
adds into its 57 blocks when only one pair runs. The tiny FLUX of `flux_pair.py` (1 + 1 blocks)
adds only 2 of them, so there the second looks dearer by the other 55 adds: reported, not judged.

Both subjects have the same settings (γ = 0.5, s = 1, no window), so the two deltas compare like
with like; the target is that the second costs no more than the first.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from flexip_host.comfy_models import load_fully, unload_all
from flexip_host.loaded_pack import Pack
from tools.fixtures.flux import flux_config, random_flux_patcher, random_infusenet, tiny_flux_vae
from tools.fixtures.tiny import tiny_unet_patcher

from . import counting, flux_pair, workload
from .counting import Cost
from .report import Figure, Report

logger = logging.getLogger(__name__)

GAMMA = 0.5
LATENT = 16  # tiny SD1.5: 16 x 16 latent (128 px); ops do not depend on the size, FLOPs do
MASK_SIZE = 64  # the masks' own grid: resized to each block's (and each FLUX token grid) by the patch
FLUX_DEPTH = (19, 38)  # FLUX.1-dev's double and single blocks
INFUSENET_DEPTH = (4, 10)  # InfiniteYou's InfuseNets
FLUX_DEPTH_WIDTH = 128  # one head of 128, the width FLUX's rope axes need
STAGES = (flux_pair.SIM, flux_pair.AES)


def half_masks(height: int = MASK_SIZE, width: int = MASK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI MASKs [1, H, W]: the left half white, and the right half."""
    left = torch.zeros(1, height, width)
    left[..., : width // 2] = 1.0
    return left, 1.0 - left


def _apply(pack: Pack, model: Any, flexip: Any, subject: Any, mask: torch.Tensor) -> Any:
    """FlexIPApply.apply, the node's own code, with an attn_mask."""
    (patched,) = pack.apply_node().apply(model, flexip, subject, 1.0, GAMMA, 0.0, 1.0, attn_mask=mask)
    return patched


def _deltas(none: Cost, one: Cost, two: Cost) -> tuple[Cost, Cost]:
    """(what the first subject adds to the bare step, what the second adds to the first's step)."""
    return one.minus(none), two.minus(one)


def _add(
    report: Report, prefix: str, first: Cost, second: Cost, per_layer: str, where: str, judged: bool = True
) -> None:
    """The two figures of a world: the second subject's added ops and FLOPs, against the first's."""
    ratio = second.flop_count / first.flop_count if first.flop_count else float("nan")
    report.add(
        Figure(
            f"{prefix}_second_subject_added_ops",
            second.op_count,
            "aten ops per step",
            f"<= {first.op_count} (the first subject's)" if judged else "report",
            second.op_count <= first.op_count if judged else None,
            f"first subject +{first.op_count} ops, second +{second.op_count}; second minus first by op: "
            f"{counting.op_difference(second.ops, first.ops)}{per_layer}; {where}",
        )
    )
    report.add(
        Figure(
            f"{prefix}_second_subject_added_flops",
            second.flop_count,
            "FLOPs per step",
            f"<= {first.flop_count} (the first subject's)" if judged else "report",
            second.flop_count <= first.flop_count if judged else None,
            f"first subject +{first.flop_count} FLOPs, second +{second.flop_count} (second/first {ratio:.4f}); {where}",
        )
    )


def sd15_figures(report: Report, pack: Pack) -> None:
    """Two subjects against one on the tiny SD1.5 UNet, compatibility mode."""
    base = tiny_unet_patcher(0)
    pair = workload.ip_adapter_pair(pack, base, seed=4)
    subject_a, subject_b = (workload.random_subject(pack, pair, seed=seed) for seed in (3, 5))
    left, right = half_masks()
    one = _apply(pack, base, pair, subject_a, left)
    two = _apply(pack, one, pair, subject_b, right)
    load_fully([base, one, two, *workload.adapter_patchers([one, two])])
    inputs = workload.StepInputs.make(LATENT)
    none = counting.step_cost(base, inputs, fake=False)
    costs = [counting.run_costs(patched, inputs, fake=False)[1] for patched in (one, two)]
    unload_all()
    layers = len(pack.layer_specs_of(base.model.diffusion_model))
    first, second = _deltas(none, *costs)
    per_layer = (
        f"; per layer, first: {counting.per_layer(first.ops, layers)}; second: {counting.per_layer(second.ops, layers)}"
    )
    where = (
        f"tiny SD1.5 UNet ({layers} cross-attention layers), compatibility mode (ip-adapter-plus + ip-adapter), "
        f"γ = {GAMMA}, s = 1, left- and right-half masks ({MASK_SIZE}×{MASK_SIZE}), {LATENT}×{LATENT} latent, "
        "cond and uncond batched, steady state, real tensors"
    )
    _add(report, "two_subjects_sd15_tiny", first, second, per_layer, where)


def flux_depth_world() -> flux_pair.FluxWorld:
    """FLUX.1-dev's depth at width 128 (19 double and 38 single blocks, one head), with two InfuseNets of
    InfiniteYou's depth (4 + 10 blocks) at that width: every one of an InfuseNet's 57 residual entries meets
    a block of the DiT, as on FLUX.1-dev, where the tiny FLUX (1 + 1 blocks) adds 2 of them."""
    dit = flux_config(FLUX_DEPTH_WIDTH, 1, *FLUX_DEPTH)
    infusenet = flux_config(FLUX_DEPTH_WIDTH, 1, *INFUSENET_DEPTH)
    cpu = torch.device("cpu")
    controls = {stage: random_infusenet(infusenet, torch.float32, cpu, seed) for seed, stage in enumerate(STAGES, 1)}
    generator = torch.Generator().manual_seed(7)
    tokens = {stage: torch.randn(1, flux_pair.IDENTITY_TOKENS, 4096, generator=generator) for stage in STAGES}
    return flux_pair.FluxWorld(random_flux_patcher(dit, torch.float32, cpu), tiny_flux_vae(), controls, tokens)


def flux_costs(pack: Pack, world: flux_pair.FluxWorld) -> tuple[Cost, Cost, int]:
    """(first identity's added cost, second's, host reads per step with two) on `world`."""
    generator = torch.Generator().manual_seed(11)
    other = {stage: torch.randn(1, flux_pair.IDENTITY_TOKENS, 4096, generator=generator) for stage in world.tokens}
    left, right = half_masks()
    positive = world.positive()
    one = flux_pair.apply_gate(pack, world, positive, mask=left)
    two = flux_pair.apply_gate(pack, world, one, tokens=other, mask=right)
    counts = [flux_pair.run(world, conditioning) for conditioning in (positive, one, two)]
    unload_all()
    first, second = _deltas(*(count.cost for count in counts))
    return first, second, counts[2].host_reads - counts[0].host_reads


def flux_figures(report: Report, pack: Pack) -> None:
    """Two identities against one: judged at FLUX.1-dev's depth (width 128), reported on the tiny FLUX."""
    settings = (
        f"both InfuseNets per identity, γ = {GAMMA}, s = 1, left- and right-half masks ({MASK_SIZE}×{MASK_SIZE}), "
        f"{flux_pair.LATENT}×{flux_pair.LATENT} latent, cfg 1, step {flux_pair.COUNTED_STEP + 1} of "
        f"{flux_pair.STEPS}"
    )
    first, second, reads = flux_costs(pack, flux_depth_world())
    where = (
        f"FLUX at FLUX.1-dev's depth ({FLUX_DEPTH[0]} double + {FLUX_DEPTH[1]} single blocks, width "
        f"{FLUX_DEPTH_WIDTH}), InfuseNets of InfiniteYou's depth ({INFUSENET_DEPTH[0]} + {INFUSENET_DEPTH[1]}), "
        f"{settings}; host reads with two identities: {reads}"
    )
    _add(report, "two_identities_flux_depth", first, second, "", where)
    first, second, reads = flux_costs(pack, flux_pair.tiny_world())
    where = (
        f"tiny FLUX (hidden 64, 1 double + 1 single block), {settings}; report only: the second identity's "
        "residuals are added to the first's by ComfyUI's control_merge, one add per residual entry (57), while "
        "the tiny DiT adds the first's into its 2 blocks only; see the flux_depth rows"
    )
    _add(report, "two_identities_flux_tiny", first, second, "", where, judged=False)


def figures(report: Report, pack: Pack) -> None:
    logger.info("several subjects: a second subject against the first (tiny SD1.5, tiny FLUX)")
    sd15_figures(report, pack)
    flux_figures(report, pack)
