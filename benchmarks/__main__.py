"""`python -m benchmarks` (`make bench`): what FlexIP costs on a full-size SD1.5 step, as JSON lines.

Order: deterministic figures (ops, FLOPs; SD1.5, SDXL, then FLUX's gate over two InfuseNets on a
tiny FLUX, `flux_pair.py`, then a second subject against the first on the tiny SD1.5 UNet and the
tiny FLUX, `two_subjects.py`) first, then memory, the server re-run, and last the timed figures,
which get whatever is left of `--budget` (at least one A-B-B-A round). `--only flux` runs the
FLUX figures alone, `--only subjects` the two-subject figures alone (seconds each).
Progress goes to stderr; stdout holds only the JSON lines.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time

import torch

from flexip_host.comfy_models import load_fully, unload_all
from flexip_host.loaded_pack import Pack
from flexip_model.vocabulary import OUTPUT_MODE, TOKEN_MODE

from . import counting, flux_pair, memory, timing, two_subjects, workload
from .report import Figure, Report

logger = logging.getLogger("benchmarks")

GAMMA = 0.5


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cpu (fp32, default) or cuda (fp16; needs a GPU)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=540.0,
        help="seconds for the whole run; the timed rounds use what is left (default 540)",
    )
    parser.add_argument("--max-rounds", type=int, default=5, help="most A-B-B-A rounds of the timed figures")
    parser.add_argument("--no-server", action="store_true", help="skip encode_cache_rerun (starts a ComfyUI server)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--only",
        choices=("sd15", "flux", "subjects"),
        help="only the SD1.5/SDXL figures, only the FLUX figures (tiny FLUX, seconds), or only the two-subject "
        "figures (tiny SD1.5 and tiny FLUX, seconds); default: all",
    )
    return parser.parse_args(argv)


def build_configs(pack: Pack, base) -> tuple[dict, dict]:
    """Patched models by figure name, all through FlexIPApply, and what built them."""
    output_flexip = workload.flexip_adapter(pack, base, OUTPUT_MODE, seed=1)
    token_flexip = workload.flexip_adapter(pack, base, TOKEN_MODE, seed=2)
    pair = workload.ip_adapter_pair(pack, base, seed=4)
    subject = workload.random_subject(pack, output_flexip, seed=3)
    configs = {
        "flexip": workload.apply_flexip(pack, base, output_flexip, subject, GAMMA),
        "token_mode": workload.apply_flexip(
            pack, base, token_flexip, workload.random_subject(pack, token_flexip, seed=3), GAMMA
        ),
        "gamma1": workload.apply_flexip(pack, base, output_flexip, subject, 1.0),
        # compatibility mode at γ = 1: plain IP-Adapter plus, the peer of figure 3
        "ipadapter": workload.apply_flexip(pack, base, pair, workload.random_subject(pack, pair, seed=5), 1.0),
    }
    return configs, dict(flexip=output_flexip, subject=subject)


def deterministic_figures(report: Report, base, configs: dict, layers: int, device, dtype) -> int:
    """Figures A, B and the per-configuration op counts; returns the unpatched step's FLOPs."""
    # load UNet and adapters for real first: a load inside FakeTensorMode would move fake weights.
    # An adapter loaded here stays loaded through its K/V builds (LoadedFlexIP.on_device), so no
    # build moves weights while counting; all are unloaded after.
    load_fully(list(configs.values()) + workload.adapter_patchers(configs.values()))
    big = workload.StepInputs.make(workload.LATENT, device=device, dtype=dtype)
    small = workload.StepInputs.make(8, device=device, dtype=dtype)
    base_cost = counting.step_cost(base, big)
    costs = {name: counting.run_costs(patched, big) for name, patched in configs.items()}
    first, steady = costs["flexip"]
    added = steady.minus(base_cost)

    # the fake 64×64 count must equal a real forward's (ops do not depend on the latent size)
    real_added = counting.run_costs(configs["flexip"], small, fake=False)[1].minus(
        counting.step_cost(base, small, fake=False)
    )
    check = "equal" if real_added.ops == added.ops else f"DIFFERENT ({real_added.op_count})"
    report.add(
        Figure(
            "added_ops_per_step_sd15_512",
            added.op_count,
            "aten ops",
            "<= 256 (<= 16 per layer)",
            added.op_count <= 256,
            f"{added.op_count / layers:g} per layer over {layers} layers: {counting.per_layer(added.ops, layers)}; "
            f"steady state, γ={GAMMA}, output mode; counted on fake tensors at 64×64, real 8×8 forward {check}; "
            "ComfyUI_IPAdapter_plus (one plus adapter, PyTorch attention) adds 405 and 15 host reads",
        )
    )
    ratio = steady.flop_count / base_cost.flop_count
    report.add(
        Figure(
            "added_flops_ratio_sd15_512",
            ratio,
            "FLOPs with/without",
            "<= 1.007",
            ratio <= 1.007,
            f"{base_cost.flop_count / 1e9:.1f} GFLOP unpatched, +{added.flop_count / 1e9:.2f} GFLOP; "
            "analytic floor ≈ 1.0055",
        )
    )
    first_added = first.minus(steady)
    report.add(
        Figure(
            "first_call_extra_sd15_512",
            round(first_added.flop_count / 1e9, 3),
            "GFLOP",
            "report",
            note=f"{first_added.op_count} extra aten ops, once per sampling run: personalization adapter "
            f"and K/V of {layers} layers × 2 branches, cached by batch layout",
        )
    )
    for name, figure in (
        ("token_mode", "added_ops_per_step_sd15_512_token_mode"),
        ("gamma1", "added_ops_per_step_sd15_512_gamma1"),
        ("ipadapter", "ipadapter_added_ops_per_step_sd15_512"),
    ):
        other = costs[name][1].minus(base_cost)
        report.add(
            Figure(
                figure,
                other.op_count,
                "aten ops",
                "report",
                note=f"+{other.flop_count / 1e9:.2f} GFLOP "
                f"(FlexIP γ={GAMMA}: {added.flop_count / other.flop_count:.1f}×), "
                f"FLOP ratio {costs[name][1].flop_count / base_cost.flop_count:.5f}; per layer: "
                f"{counting.per_layer(other.ops, layers)}",
            )
        )
    unload_all()
    return base_cost.flop_count


def sdxl_figures(report: Report, pack: Pack) -> int:
    """SDXL's ops and FLOPs per 128×128 step and its K/V cache per run (report only); returns the
    unpatched step's FLOPs.

    The SDXL UNet and a full-size SDXL FlexIP adapter are built with unwritten weights (address
    space, not memory) and counted on fake tensors only."""
    base = workload.sdxl_patcher_unfilled()
    flexip = workload.flexip_adapter(pack, base, "output", base="sdxl", unfilled=True)
    patched = workload.apply_flexip(pack, base, flexip, workload.random_subject(pack, flexip, seed=3), GAMMA)
    load_fully([patched, flexip.patcher])  # as above
    inputs = workload.StepInputs.make(workload.SDXL_LATENT, sdxl=True)
    base_cost = counting.step_cost(base, inputs)
    first, steady = counting.run_costs(patched, inputs)
    # the cache in fp16, as a GPU run keeps it (K/V are cast to the UNet's compute dtype)
    kv_bytes = memory.kv_cache_bytes_per_run(
        patched, workload.StepInputs.make(workload.SDXL_LATENT, sdxl=True, dtype=torch.float16)
    )
    unload_all()
    added, layers = steady.minus(base_cost), len(flexip.config.layers)
    report.add(
        Figure(
            "added_ops_per_step_sdxl_1024",
            added.op_count,
            "aten ops",
            "report",
            note=f"{added.op_count / layers:g} per layer over {layers} layers; 128×128 latent, batch 2, γ={GAMMA}; "
            f"first call of a run +{first.minus(steady).flop_count / 1e9:.0f} GFLOP",
        )
    )
    report.add(
        Figure(
            "added_flops_ratio_sdxl_1024",
            steady.flop_count / base_cost.flop_count,
            "FLOPs with/without",
            "report",
            note=f"{base_cost.flop_count / 1e12:.2f} TFLOP unpatched, +{added.flop_count / 1e9:.1f} GFLOP",
        )
    )
    report.add(
        Figure(
            "kv_cache_bytes_per_run_sdxl_1024",
            kv_bytes,
            "bytes",
            "report",
            note=f"{kv_bytes / 2**20:.1f} MiB in fp16: the K/V of {layers} layers × 2 branches for one batch "
            f"layout (cond and uncond batched, one row each), built on fake tensors; what a run keeps on the "
            f"device instead of the adapter ({workload.module_bytes(flexip.adapter) / 2 / 2**30:.2f} GiB in fp16); "
            "one more layout (cond and uncond in separate calls, regional prompts) builds one more",
        )
    )
    return base_cost.flop_count


def memory_figures(report: Report, pack: Pack, base, configs: dict, made: dict) -> None:
    adapter_bytes = workload.module_bytes(made["flexip"].adapter)
    growth, clones = memory.clone_growth(configs["flexip"])
    shared = memory.shared_adapter(configs["flexip"], clones)
    fraction = growth / adapter_bytes
    report.add(
        Figure(
            "clone_memory_growth",
            fraction,
            "of adapter size",
            "< 0.05",
            fraction < 0.05 and shared,
            f"RSS +{growth / 2**20:.1f} MiB for 10 clones, adapter {adapter_bytes / 2**20:.0f} MiB; "
            f"clones share the adapter module: {shared}",
        )
    )
    del clones
    offload = memory.adapter_offload(pack, base, made["flexip"], made["subject"])
    seen = offload.residency
    during = max(seen.adapter_during_steps)
    kv_bytes = max(seen.kv_cache_bytes)
    # the probe must see the adapter loaded while it builds, the UNet loaded and the K/V in use
    probed = min(seen.adapter_during_build) > 0 and all(seen.unet_held_during_steps) and kv_bytes > 0
    same = offload.load_device == offload.offload_device
    accounting = (
        "; load and offload device are both the CPU here, so this checks ComfyUI's accounting "
        "(what it counts as loaded), not a transfer"
        if same
        else ""
    )
    report.add(
        Figure(
            "adapter_resident_bytes_during_steps",
            during,
            "bytes beyond the K/V cache",
            "0",
            during == 0 and not any(seen.adapter_held_during_steps) and probed,
            f"adapter ({offload.adapter_bytes / 2**20:.0f} MiB) loaded by model management for the K/V build only "
            f"({min(seen.adapter_during_build) / 2**20:.0f} MiB counted loaded while it built), then unloaded; "
            f"held beside the UNet during the steps: {any(seen.adapter_held_during_steps)}; UNet held in every "
            f"step: {all(seen.unet_held_during_steps)}; looked at once the sampler had loaded its models, then "
            f"before and after each of {len(seen.kv_cache_bytes)} model calls" + accounting,
        )
    )
    report.add(
        Figure(
            "kv_cache_bytes_per_run_sd15_512",
            kv_bytes,
            "bytes",
            "report",
            note=f"{kv_bytes / 2**20:.2f} MiB in {str(base.model_dtype()).removeprefix('torch.')}: the K/V of "
            f"{len(made['flexip'].config.layers)} layers × 2 branches for one batch layout, kept for the run",
        )
    )
    met = (
        offload.adapter_left_on_load_device == 0
        and offload.unet_left_on_load_device == 0
        and offload.run_cache_bytes == 0
    )
    report.add(
        Figure(
            "adapter_vram_offload",
            offload.adapter_left_on_load_device,
            "bytes on load device",
            "0",
            met,
            f"after free_memory(2^60): adapter {offload.adapter_left_on_load_device} B, "
            f"UNet {offload.unet_left_on_load_device} B, run K/V cache {offload.run_cache_bytes} B left" + accounting,
        )
    )


def server_figure(report: Report) -> None:
    from .server_rerun import encode_cache_rerun

    rerun = encode_cache_rerun()
    report.add(
        Figure(
            "encode_cache_rerun",
            rerun.ratio,
            "wall second/first",
            "encoders not re-executed; ratio report",
            rerun.encoders_cached and rerun.apply_ran,
            f"{rerun.first_seconds:.1f} s then {rerun.second_seconds:.1f} s with only γ changed (0.3 → 0.7); "
            f"served from cache: {', '.join(sorted(rerun.cached))}; FlexIPApply re-ran: {rerun.apply_ran}",
        )
    )


def timed_figures(
    report: Report, base, configs: dict, started_at: float, deadline: float, max_rounds: int, device, dtype
) -> float:
    """The timed figures; returns the unpatched step's median wall seconds."""
    ordered = {"base": base, **configs}
    load_fully(list(ordered.values()))
    big = workload.StepInputs.make(workload.LATENT, device=device, dtype=dtype)
    small = workload.StepInputs.make(8, device=device, dtype=dtype)
    seconds = timing.warm_up(ordered, big, small)
    if time.perf_counter() + 2 * len(ordered) * seconds > deadline:
        # a busy machine: one round of every configuration would overrun the budget, so time
        # only the judged figure (4 calls) and say so for the others
        ordered = {"base": base, "flexip": configs["flexip"]}
    logger.info(
        "one step takes %.1f s; rounds of %d calls until %.0f s of the budget are used",
        seconds,
        2 * len(ordered),
        deadline - started_at,
    )
    result = timing.nested_abba(
        ordered,
        big,
        deadline,
        max_rounds,
        on_round=lambda index, took: logger.info("round %d took %.0f s", index, took),
    )
    # on a shared CPU the process's CPU time is the steadier measure: it leaves out the time the
    # process waits for a core (OpenMP threads sleep while they wait, see benchmarks/__init__.py)
    cpu = device.type == "cpu"
    unit = "CPU time with/without" if cpu else "time with/without"
    how = (
        f"median of {result.rounds} nested A-B-B-A round(s) after warm-up (rounds: {{rounds}}); "
        f"unpatched step {result.median_seconds('base'):.2f} s wall; {'wall-clock' if cpu else 'CPU-time'} "
        "ratio {other:.3f}"
    )

    def ratio_figure(name: str, figure: str, target: str, met) -> float:
        if name not in ordered:
            report.add(
                Figure(
                    figure,
                    None,
                    unit,
                    target,
                    None,
                    f"not measured: one step took {seconds:.0f} s, so the budget (--budget) left "
                    "room for the unpatched and FlexIP steps only",
                )
            )
            return float("nan")
        value = result.median_ratio(name, cpu=cpu)
        rounds = ", ".join(f"{r:.3f}" for r in (result.cpu_ratios if cpu else result.wall_ratios)[name])
        report.add(
            Figure(
                figure,
                value,
                unit,
                target,
                met(value) if met else None,
                how.format(rounds=rounds, other=result.median_ratio(name, cpu=not cpu)),
            )
        )
        return value

    flexip = ratio_figure("flexip", "unet_step_ratio_sd15_512", "<= 1.10 (aim 1.05)", lambda v: v <= 1.10)
    ratio_figure("token_mode", "unet_step_ratio_sd15_512_token_mode", "report", None)
    ratio_figure("gamma1", "unet_step_ratio_sd15_512_gamma1", "report", None)
    ip = ratio_figure("ipadapter", "ipadapter_step_ratio_sd15_512", "report", None)
    name, target = "flexip_extra_over_ipadapter_extra", "<= 2"
    if math.isnan(ip):
        report.add(Figure(name, None, "extra time ratio", target, None, "not measured (see ipadapter_step_ratio)"))
    elif ip - 1.0 > 0.002:
        extra = (flexip - 1.0) / (ip - 1.0)
        report.add(
            Figure(
                name,
                extra,
                "extra time ratio",
                target,
                extra <= 2.0,
                "FlexIP's extra time over the unpatched step ÷ IP-Adapter plus's (compatibility mode, γ = 1)",
            )
        )
    else:
        report.add(
            Figure(
                name,
                None,
                "extra time ratio",
                target,
                None,
                f"not computed: IP-Adapter plus's extra time ({ip - 1.0:+.4f}) is within noise",
            )
        )
    return result.median_seconds("base")


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    deadline = started + args.budget
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="bench %(relativeCreated)6.0f ms: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda: no CUDA device is visible to torch.")
        return 2
    pack = workload.import_host(args.device)
    logging.getLogger().setLevel(logging.INFO)  # ComfyUI's import may have changed it
    logging.getLogger(pack.package.__name__).setLevel(logging.WARNING)  # one line per (bench) sampling run
    device = torch.device(args.device)
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    report = Report()
    if args.only in ("flux", "subjects"):
        if args.only == "flux":
            logger.info("FLUX: the gate over two InfuseNets against ComfyUI's own controlnets")
            flux_pair.figures(report, pack)
            two_subjects.flux_figures(report, pack)
        else:
            two_subjects.figures(report, pack)
        summary = report.summary(time.perf_counter() - started, _describe(device))
        return 1 if args.strict and not summary["met"] else 0

    logger.info("building the full SD1.5 UNet (860 M parameters) and the adapters")
    base = workload.sd15_patcher(dtype=dtype)
    configs, made = build_configs(pack, base)
    layers = len(made["flexip"].config.layers)
    logger.info("counting ops and FLOPs")
    sd15_flops = deterministic_figures(report, base, configs, layers, device, dtype)
    sdxl_flops = None
    if device.type == "cpu":  # unwritten weights stay unwritten only if nothing copies them to a GPU
        logger.info("counting SDXL's ops and FLOPs")
        sdxl_flops = sdxl_figures(report, pack)
    else:
        report.add(
            Figure(
                "kv_cache_bytes_per_run_sdxl_1024",
                None,
                "bytes",
                "report",
                None,
                "not measured with --device cuda: SDXL is counted on CPU runs only (the same bytes)",
            )
        )
    if args.only is None:
        logger.info("FLUX: the gate over two InfuseNets against ComfyUI's own controlnets")
        flux_pair.figures(report, pack)
        two_subjects.figures(report, pack)
    else:
        two_subjects.sd15_figures(report, pack)
    logger.info("memory: clones and offload")
    memory_figures(report, pack, base, configs, made)
    if args.no_server:
        report.add(
            Figure(
                "encode_cache_rerun",
                None,
                "wall second/first",
                "encoders not re-executed; ratio report",
                None,
                "skipped (--no-server)",
            )
        )
    else:
        logger.info("server: the basic workflow, then the same graph with only γ changed")
        server_figure(report)
    logger.info("timing (%.0f s of the budget left)", deadline - time.perf_counter())
    seconds = timed_figures(report, base, configs, started, deadline, args.max_rounds, device, dtype)
    if sdxl_flops is None:
        note = "not measured with --device cuda: SDXL is counted, and its time estimated, on CPU runs only"
    else:
        scale = sdxl_flops / sd15_flops
        note = (
            f"not timed: a 128×128 SDXL step is {sdxl_flops / 1e12:.1f} TFLOP, {scale:.1f}× the SD1.5 step "
            f"(about {seconds * scale / 60:.0f} min per call here at the same rate), so one A-B-B-A round "
            "would take the whole budget; its ops and FLOPs are counted above"
        )
    report.add(Figure("sdxl_step_ratio_1024", None, "time with/without", "report", None, note))
    summary = report.summary(time.perf_counter() - started, _describe(device))
    return 1 if args.strict and not summary["met"] else 0


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    sys.exit(main())
