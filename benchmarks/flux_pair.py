"""FLUX: what the FlexIP gate over InfiniteYou's two InfuseNets adds to one sampling step, against
ComfyUI's own controlnets doing the same work (docs/design.md §8).

The workload is the comfy tests' tiny FLUX (tools/fixtures/flux.py: ComfyUI's own `Flux` and
`ControlNetFlux` classes, hidden 64, one double and one single block, so 2 residual groups), its
tiny VAE and two tiny InfuseNets, sampled by ComfyUI's sampler (euler, simple, cfg 1: one model
call per step, the positive conditioning only). A *step* is one call of comfy.samplers'
`calc_cond_batch`: the controlnets' `get_control`, then the DiT. It is counted by a
CALC_COND_BATCH wrapper on the second call of a 3-step run (the first encodes the control image
and builds the per-run caches), on real tensors, under inference mode as ComfyUI's executor runs
nodes: aten ops and FLOPs as `counting.py` counts them, and host reads as the ops that read a
value on the host (`is_nonzero`, `item`, `_local_scalar_dense`: what `bool()`, `.item()` and
`float()` of a tensor dispatch; a device-to-host sync on a GPU) or have value-dependent shapes.

*Stock* is ComfyUI's own `ControlNet` objects set up the way its Apply ControlNet (Advanced) node
sets them up (`copy().set_cond_hint(...)`, chained with `set_previous_controlnet`), black control
image, the identity tokens as `cross_attn_controlnet` (one context per conditioning: both
controlnets of the stock pair read the last one set). The stock pair runs both InfuseNets at
strength 0.5 each: the residuals of the gate at γ = 0.5, s = 1.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from flexip_host.comfy_models import is_loaded, unload_all
from flexip_host.loaded_pack import Pack
from flexip_host.model_options import wrapper_kinds
from flexip_host.sampling import prepare_noise, sample
from flexip_model.gate_schedule import GateSchedule
from tools.fixtures.flux import flux_conditioning, tiny_flux_patcher, tiny_flux_vae, tiny_infusenet

from .counting import CPU_ATTENTION_FLOPS, HOST_READ_OPS, Cost, OpCounter, op_difference
from .memory import resident_bytes_on_load_device
from .report import Figure, Report
from .workload import module_bytes

logger = logging.getLogger(__name__)

STEPS = 3  # a sampling run; COUNTED_STEP is its steady-state call
COUNTED_STEP = 1
LATENT = 16  # 16 x 16 latent: 8 x 8 tokens
IDENTITY_TOKENS = 8
DIT_GUIDANCE = 3.5
GAMMA = 0.5
WINDOW_START = 0.1  # InfiniteYou's README tip; the counted step lies inside the window
# stages of the gate as the apply node names them: γ = 1 runs sim alone, γ = 0 aes alone
SIM, AES = "sim", "aes"


@dataclass
class FluxWorld:
    """A FLUX ModelPatcher, its VAE, the two stages' InfuseNets (ComfyUI ControlNets) and an identity's
    tokens per stage [1, 8, 4096]."""

    model: Any
    vae: Any
    controls: dict[str, Any]
    tokens: dict[str, torch.Tensor]
    text_tokens: int = 8

    def positive(self, seed: int = 0) -> list:
        return flux_conditioning(seed, tokens=self.text_tokens, guidance=DIT_GUIDANCE)


def tiny_world() -> FluxWorld:
    """The comfy tests' tiny FLUX (fp32), its VAE and two tiny InfuseNets, with random identity tokens."""
    generator = torch.Generator().manual_seed(7)
    tokens = {name: torch.randn(1, IDENTITY_TOKENS, 4096, generator=generator) for name in (SIM, AES)}
    return FluxWorld(tiny_flux_patcher(0), tiny_flux_vae(), {SIM: tiny_infusenet(1), AES: tiny_infusenet(2)}, tokens)


def apply_gate(
    pack: Pack, world: FluxWorld, positive: list, tokens: dict[str, torch.Tensor] | None = None, **settings: Any
) -> list:
    """FlexIPInfiniteYouApply.apply, the node's own code: `positive` with the gated pair attached, for the
    identity of `tokens` per stage (default: the world's)."""
    # Pack has no typed accessor for the InfiniteYou bundles yet: they are built as the loader builds them
    bundles = pack.nodes.infiniteyou_bundles
    pair = bundles.InfiniteYouPair(
        bundles.InfiniteYouStage(f"{SIM}.safetensors", world.controls[SIM], None),
        bundles.InfiniteYouStage(f"{AES}.safetensors", world.controls[AES], None),
    )
    tokens = world.tokens if tokens is None else tokens
    identity = bundles.InfiniteYouIdentity(pair, tokens[SIM], tokens[AES])
    inputs = dict(strength=1.0, preservation=GAMMA, start_at=0.0, end_at=1.0, infusenet_guidance=1.0) | settings
    (out,) = pack.node("FlexIPInfiniteYouApply").apply(positive, pair, identity, world.vae, **inputs)
    return out


def apply_stock(world: FluxWorld, positive: list, stage: str, strength: float) -> list:
    """ComfyUI's Apply ControlNet (Advanced) with the InfuseNet of `stage` on the positive conditioning,
    chained after any controlnet already there; the stage's identity tokens as the controlnet's context."""
    hint = torch.zeros(1, 3, 64, 64)  # black, as the gate's default control image
    out, made = [], {}
    for context, options in positive:
        previous = options.get("control")
        if previous not in made:
            control = world.controls[stage].copy().set_cond_hint(hint, strength, (0.0, 1.0), vae=world.vae)
            made[previous] = control.set_previous_controlnet(previous)
        extra = {"cross_attn_controlnet": world.tokens[stage], "control": made[previous]}
        out.append([context, {**options, **extra, "control_apply_to_uncond": False}])
    return out


@dataclass
class StepCount:
    """The counted step of a run, and what model management held at every step of it."""

    cost: Cost
    host_reads: int
    loaded: list[dict[int, bool]] = field(default_factory=list)  # per step: control model id -> held
    resident: list[int] = field(default_factory=list)  # per step: bytes of the watched controls held


@contextmanager
def counted_step(model: Any, step: int, watched: list[Any]) -> Iterator[StepCount]:
    """Count call `step` of the next sampling run of `model` (a clone), and look at `watched`
    (ControlNet ModelPatchers) before every call."""
    count = StepCount(Cost(Counter(), Counter()), 0)
    calls = [0]

    def wrapper(executor: Callable, *args: Any, **kwargs: Any) -> Any:
        count.loaded.append({id(patcher.model): is_loaded(patcher.model) for patcher in watched})
        count.resident.append(sum(resident_bytes_on_load_device(patcher) for patcher in watched))
        index, calls[0] = calls[0], calls[0] + 1
        if index != step:
            return executor(*args, **kwargs)
        with FlopCounterMode(display=False, custom_mapping=FLUX_FLOPS) as flops, OpCounter() as ops:
            out = executor(*args, **kwargs)
        by_op = Counter({str(op): n for op, n in flops.get_flop_counts().get("Global", {}).items()})
        count.cost = Cost(ops.ops, by_op)
        count.host_reads = host_reads(ops.ops)
        return out

    model.add_wrapper_with_key(wrapper_kinds().CALC_COND_BATCH, "bench_flux_step", wrapper)
    try:
        yield count
    finally:
        model.remove_wrappers_with_key(wrapper_kinds().CALC_COND_BATCH, "bench_flux_step")


def _elementwise(per_item: int) -> Callable[..., int]:
    def flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return per_item * math.prod(out_shape)

    return flops


# torch's counter counts matmuls and attention only; the gate's own work is element-wise (lerp is a
# subtract, a multiply and an add; scaling and chaining a multiply or an add per element), so those
# are counted too, in the DiT and the stock controlnets alike
FLUX_FLOPS = CPU_ATTENTION_FLOPS | {
    torch.ops.aten.lerp: _elementwise(3),
    torch.ops.aten.lerp_: _elementwise(3),
    torch.ops.aten.mul: _elementwise(1),
    torch.ops.aten.mul_: _elementwise(1),
    torch.ops.aten.add: _elementwise(1),
    torch.ops.aten.add_: _elementwise(1),
}


def run(world: FluxWorld, positive: list, step: int = COUNTED_STEP, steps: int = STEPS) -> StepCount:
    """Sample `steps` steps (euler, simple, cfg 1) and count call `step`."""
    model = world.model.clone()
    control = positive[0][1].get("control")
    watched = control.get_models() if control is not None else []
    latent = torch.zeros(1, 16, LATENT, LATENT)
    with torch.inference_mode(), counted_step(model, step, watched) as count:
        sample(model, prepare_noise(latent, 0), steps, 1.0, "euler", "simple", positive, world.positive(99), latent, 0)
    return count


def host_reads(ops: Counter) -> int:
    """The host reads among counted ops: `bool()`, `.item()` and `float()` of a tensor dispatch
    is_nonzero, item or _local_scalar_dense once each."""
    return sum(n for name, n in ops.items() if name in HOST_READ_OPS or name.rsplit(".", 1)[0] in HOST_READ_OPS)


def figures(report: Report, pack: Pack) -> None:
    """The FLUX figures on the tiny FLUX (deterministic counts)."""
    world = tiny_world()
    groups = (
        world.controls[SIM].control_model.params.depth + world.controls[SIM].control_model.params.depth_single_blocks
    )
    positive = world.positive()
    stock_pair = apply_stock(world, apply_stock(world, positive, SIM, GAMMA), AES, 1.0 - GAMMA)
    ramp = GateSchedule(((0.0, 1.0), (1.0, 0.0)))  # γ from 1 at the first step to 0 at the last
    conditionings = {
        "none": positive,
        "gate": apply_gate(pack, world, positive),
        "gate_ramp": apply_gate(pack, world, positive, gate=ramp),
        "stock_pair": stock_pair,
        "gate_sim": apply_gate(pack, world, positive, preservation=1.0),
        "stock_sim": apply_stock(world, positive, SIM, 1.0),
        "gate_aes": apply_gate(pack, world, positive, preservation=0.0),
        "stock_aes": apply_stock(world, positive, AES, 1.0),
        "gate_window": apply_gate(pack, world, positive, start_at=WINDOW_START),
    }
    logger.info("FLUX: %d runs of the tiny FLUX, one step of each counted", len(conditionings))
    counts = {name: run(world, conditioning) for name, conditioning in conditionings.items()}
    base = counts["none"].cost
    where = (
        f"tiny FLUX (hidden 64, {groups} residual groups), {LATENT}×{LATENT} latent, cfg 1, "
        f"step {COUNTED_STEP + 1} of {STEPS}"
    )

    allowed = 2 * groups
    for name, label, what in (
        ("gate", "", f"γ = {GAMMA} constant"),
        ("gate_ramp", "_schedule", "γ from 1 to 0 over the run (a keyframed GateSchedule)"),
    ):
        ours, theirs = counts[name].cost, counts["stock_pair"].cost
        extra = ours.op_count - theirs.op_count
        report.add(
            Figure(
                f"flux_pair{label}_ops_vs_stock_pair",
                extra,
                "aten ops per step, ours - stock",
                f"<= +{allowed} (2 per residual group)",
                extra <= allowed,
                f"{what}, s = 1, both InfuseNets; ours {ours.op_count} ops, two chained stock ControlNets at "
                f"strength {GAMMA} each {theirs.op_count}, DiT alone {base.op_count}; difference by op: "
                f"{op_difference(ours.ops, theirs.ops)}; {where}",
            )
        )
        ratio = ours.flop_count / theirs.flop_count
        report.add(
            Figure(
                f"flux_pair{label}_flops_ratio_vs_stock_pair",
                ratio,
                "FLOPs ours/stock",
                "<= 1.001",
                ratio <= 1.001,
                f"{what}; {ours.flop_count / 1e6:.2f} MFLOP against {theirs.flop_count / 1e6:.2f} "
                f"(DiT alone {base.flop_count / 1e6:.2f}); matrix products, attention and the element-wise "
                f"lerp, mul and add (FLUX_FLOPS); {where}",
            )
        )

    for gamma, stage in ((1.0, SIM), (0.0, AES)):
        ours, theirs = counts[f"gate_{stage}"].cost, counts[f"stock_{stage}"].cost
        report.add(
            Figure(
                f"flux_pair_gamma{gamma:g}_flops_vs_stock_{stage}",
                ours.flop_count - theirs.flop_count,
                "FLOPs per step, ours - stock",
                "0 (FLOPs equal)",
                ours.flop_count == theirs.flop_count,
                f"γ = {gamma:g}: the gate runs {stage} alone; against ComfyUI's ControlNet with that InfuseNet "
                f"at strength 1; ops {ours.op_count} against {theirs.op_count} "
                f"({op_difference(ours.ops, theirs.ops)}); {where}",
            )
        )

    reads = {name: count.host_reads - counts["none"].host_reads for name, count in counts.items()}
    report.add(
        Figure(
            "flux_pair_host_reads_per_step",
            reads["gate"],
            "device-to-host reads per step",
            "0",
            reads["gate"] == 0 and reads["gate_ramp"] == 0,
            f"default window (0, 1), γ = {GAMMA}; with the γ ramp {reads['gate_ramp']}; ComfyUI's stock pair reads "
            f"{reads['stock_pair']} (each ControlNet compares t[0] with its window every call), one stock "
            f"ControlNet {reads['stock_sim']}; host-reading ops beyond the DiT alone's "
            f"({counts['none'].host_reads}); {where}",
        )
    )
    report.add(
        Figure(
            "flux_pair_host_reads_per_step_windowed",
            reads["gate_window"],
            "device-to-host reads per step",
            "<= 1",
            reads["gate_window"] <= 1,
            f"start_at = {WINDOW_START}: the pair compares t[0] with its window to skip both InfuseNets "
            f"outside it, as ComfyUI's own controlnets do every call, windowed or not ({reads['stock_sim']} "
            f"each); counted inside the window, where both comparisons run; {where}",
        )
    )

    pair = counts["gate"]
    control = conditionings["gate"][0][1]["control"]
    wanted = sorted(id(world.controls[stage].control_model_wrapped) for stage in (SIM, AES))
    returned = sorted(id(model) for model in control.get_models())
    size = sum(module_bytes(world.controls[stage].control_model) for stage in (SIM, AES))
    held = [all(step.values()) and len(step) == 2 for step in pair.loaded]
    during = max(pair.resident)
    same = all(net.load_device == net.control_model_wrapped.offload_device for net in world.controls.values())
    accounting = "; load and offload device are both the CPU here, so this is ComfyUI's accounting" if same else ""
    report.add(
        Figure(
            "flux_pair_infusenets_resident_bytes_during_steps",
            during,
            "bytes",
            "both InfuseNets' parameter + buffer bytes, held by ComfyUI's model management in every step",
            returned == wanted and all(held) and during == size,
            f"{size} B of parameters and buffers in the two tiny InfuseNets; get_models() returns their "
            f"ModelPatchers: {returned == wanted}; both loaded by model management in each of {len(held)} steps: "
            f"{all(held)}; the stock pair holds {max(counts['stock_pair'].resident)} B (the same two models)"
            + accounting,
        )
    )
    unload_all()
