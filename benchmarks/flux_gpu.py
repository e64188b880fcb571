"""`python -m benchmarks.flux_gpu`: the time the FlexIP gate's blend of two InfuseNets adds to a FLUX step.

A random-weight FLUX at full width (hidden 3072, 24 heads of 128) with one double and one single
block, and two InfuseNets of the same shape (tools/fixtures/flux.py `random_flux_patcher`,
`random_infusenet`: ComfyUI's own classes), bf16 on CUDA, at 1024 px (a 128×128 latent: 4096 image
tokens, 512 text tokens, 8 identity tokens), sampled by ComfyUI's sampler (euler, simple, cfg 1:
one model call per step). A is the gate at γ = 1 (one stage: sim alone), B at γ = 0.5 (both stages
and their blend). Each model call (comfy.samplers' calc_cond_batch: get_control, then the DiT) is
timed with the device synchronised around it; a run's step time is the median of its calls after
the first. Runs alternate A B B A in rounds until `--budget` is spent; the figure is the median over
rounds of B − A per step. It prints one JSON line in the `python -m benchmarks` format.

`--device cpu` runs the same at hidden 256 (2 heads), a 16×16 latent and one round: a smoke check
of the script, not a figure.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from flexip_host.model_options import wrapper_kinds
from flexip_host.sampling import prepare_noise, sample
from tools.fixtures.flux import flux_config, random_flux_patcher, random_infusenet, tiny_flux_vae

from .flux_pair import AES, IDENTITY_TOKENS, SIM, FluxWorld, apply_gate
from .report import Figure
from .workload import import_host

logger = logging.getLogger("benchmarks.flux_gpu")

SIZES = {  # per device: hidden, latent side, text tokens, steps per run
    "cuda": dict(hidden=3072, latent=128, text_tokens=512, steps=8),
    "cpu": dict(hidden=256, latent=16, text_tokens=8, steps=3),
}
HEAD_WIDTH = 128  # FLUX's rope axes [16, 56, 56] sum to it


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flux_gpu", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cuda (bf16) or cpu (fp32, smoke check)"
    )
    parser.add_argument("--budget", type=float, default=40.0, help="seconds for the timed rounds (default 40)")
    parser.add_argument("--max-rounds", type=int, default=20, help="most A-B-B-A rounds (default 20)")
    return parser.parse_args(argv)


def world_of(device: torch.device, hidden: int, text_tokens: int) -> FluxWorld:
    """The FLUX, its VAE (a TAESD: it only encodes the black control image, once per run) and two InfuseNets."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = flux_config(hidden, hidden // HEAD_WIDTH)
    generator = torch.Generator().manual_seed(7)
    tokens = {stage: torch.randn(1, IDENTITY_TOKENS, 4096, generator=generator) for stage in (SIM, AES)}
    controls = {stage: random_infusenet(config, dtype, device, seed) for seed, stage in enumerate((SIM, AES), 1)}
    return FluxWorld(random_flux_patcher(config, dtype, device), tiny_flux_vae(), controls, tokens, text_tokens)


def step_seconds(world: FluxWorld, positive: list, latent: int, steps: int, device: torch.device) -> float:
    """One sampling run of `steps` steps; the median seconds of its model calls after the first."""
    synchronize: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    seconds: list[float] = []

    def timed(executor: Callable, *args: Any, **kwargs: Any) -> Any:
        synchronize()
        started = time.perf_counter()
        out = executor(*args, **kwargs)
        synchronize()
        seconds.append(time.perf_counter() - started)
        return out

    model = world.model.clone()
    model.add_wrapper_with_key(wrapper_kinds().CALC_COND_BATCH, "bench_flux_gpu", timed)
    empty = torch.zeros(1, 16, latent, latent)
    with torch.inference_mode():
        sample(model, prepare_noise(empty, 0), steps, 1.0, "euler", "simple", positive, world.positive(99), empty, 0)
    return statistics.median(seconds[1:])


def measure(pack: Any, device: torch.device, budget: float, max_rounds: int) -> Figure:
    """The blend's added time per step (B − A), median over A-B-B-A rounds."""
    sizes = SIZES[device.type]
    world = world_of(device, sizes["hidden"], sizes["text_tokens"])
    positive = world.positive()
    configs = {
        "one": apply_gate(pack, world, positive, preservation=1.0),
        "both": apply_gate(pack, world, positive, preservation=0.5),
        "dit": positive,
    }

    def step(name: str) -> float:
        return step_seconds(world, configs[name], sizes["latent"], sizes["steps"], device)

    for name in configs:  # warm-up: kernels chosen, memory allocated, models loaded
        step(name)
    dit = step("dit")
    rounds: list[tuple[float, float]] = []
    deadline = time.perf_counter() + budget
    while len(rounds) < max(1, max_rounds):
        started = time.perf_counter()
        a1, b1, b2, a2 = step("one"), step("both"), step("both"), step("one")
        rounds.append(((a1 + a2) / 2, (b1 + b2) / 2))
        took = time.perf_counter() - started
        if time.perf_counter() + took > deadline:
            break
    one = statistics.median(a for a, _ in rounds)
    both = statistics.median(b for _, b in rounds)
    added = statistics.median(b - a for a, b in rounds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke check, not a figure)"
    hidden = sizes["hidden"]
    return Figure(
        "flux_blend_added_ms_per_step",
        round(added * 1e3, 3),
        "ms per step, both stages blended − one stage",
        "report",
        None,
        f"{one * 1e3:.2f} ms → {both * 1e3:.2f} ms (+{added / one * 100:.1f} %), DiT alone {dit * 1e3:.2f} ms; "
        f"median of {len(rounds)} A-B-B-A round(s), each run's median call after the first of {sizes['steps']}; "
        f"FLUX hidden {hidden}, {hidden // HEAD_WIDTH} heads, 1 double + 1 single block (the InfuseNets too, "
        f"so one InfuseNet costs about a DiT here, against ~25 % in InfiniteYou; 2 residual groups, not 14), "
        f"{'bf16' if device.type == 'cuda' else 'fp32'}, {sizes['latent']}×{sizes['latent']} latent, "
        f"{sizes['text_tokens']} text tokens, cfg 1; {name}",
    )


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="flux_gpu %(relativeCreated)6.0f ms: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.error("--device cuda: no CUDA device is visible to torch.")
        return 2
    pack = import_host(args.device)
    logging.getLogger().setLevel(logging.WARNING)  # ComfyUI logs every model load
    device = torch.device(args.device)
    max_rounds = args.max_rounds if device.type == "cuda" else 1
    print(measure(pack, device, args.budget, max_rounds).as_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
