"""`python -m flexip_model init|inspect`: make a random-init checkpoint, or check and describe one."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import torch

from . import checkpoint
from .adapter import FlexIPAdapter, parameter_counts
from .config import FlexIPConfig, LayerSpec, config_for
from .errors import FlexIPError
from .vocabulary import BASES, GATE_MODES, OUTPUT_MODE, context_dim_for


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexip_model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write a valid random-init FlexIP checkpoint")
    init.add_argument("--base", choices=BASES, required=True)
    init.add_argument(
        "--layers-from",
        metavar="CHECKPOINT.safetensors",
        help="take the layer list and the K/V init from this SD checkpoint's attn2 weights",
    )
    init.add_argument("--tiny", action="store_true", help="small widths and depths (tests, demos)")
    init.add_argument("--gate-mode", choices=GATE_MODES, default=OUTPUT_MODE)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", required=True, metavar="FILE.safetensors")
    inspect = commands.add_parser("inspect", help="validate a FlexIP checkpoint and print its config")
    inspect.add_argument("file")
    return parser


def _layers_from(
    base: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], source: str
) -> tuple[LayerSpec, ...]:
    context_dim = context_dim_for(base)
    layers = []
    for key, (to_k, _) in weights.items():
        inner, width = to_k.shape
        if width != context_dim:
            raise FlexIPError(
                f"{source} has cross-attention width {width} but --base {base} needs {context_dim}: "
                "pass the --base that matches the checkpoint."
            )
        # SD1.5 has 8 heads everywhere, SDXL 64 channels per head
        layers.append(LayerSpec(key, inner, 8 if base == "sd15" else inner // 64))
    return tuple(layers)


def _init(args: argparse.Namespace) -> int:
    base_weights = None
    layers = None
    if args.layers_from:
        base_weights = checkpoint.read_unet_cross_attention(args.layers_from)
        layers = _layers_from(args.base, base_weights, args.layers_from)
    config = dataclasses.replace(config_for(args.base, layers=layers, tiny=args.tiny), gate_mode=args.gate_mode)
    config.validate(args.out)
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG as it was
        torch.manual_seed(args.seed)
        adapter = FlexIPAdapter.from_config(config)
    if base_weights is not None:
        adapter.layers.init_from_base({key: (k.float(), v.float()) for key, (k, v) in base_weights.items()})
    checkpoint.save(args.out, adapter)
    print(
        f"wrote {args.out}: {config.base} FlexIP adapter, {len(config.layers)} layers, "
        f"{parameter_counts(config)['total']:,} parameters"
    )
    return 0


def describe(config: FlexIPConfig) -> str:
    """Human-readable config, parameter counts and layer list."""
    lines = ["config:"]
    for field in dataclasses.fields(config):
        if field.name != "layers":
            lines.append(f"  {field.name}: {getattr(config, field.name)}")
    counts = parameter_counts(config)
    lines += [
        "parameters:",
        f"  preservation: {counts['preservation']:,}",
        f"  personalization: {counts['personalization']:,}",
        f"  layer projections: {counts['layers']:,}",
        f"  total: {counts['total']:,}",
        f"layers ({len(config.layers)}):",
    ]
    lines += [f"  {spec.key}: inner_dim {spec.inner_dim}, heads {spec.heads}" for spec in config.layers]
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    config = checkpoint.validate(args.file)
    print(f"{args.file}: valid FlexIP checkpoint (format {config.format_version})")
    print(describe(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (1 with a one-sentence message for a FlexIPError)."""
    args = _parser().parse_args(argv)
    try:
        return _init(args) if args.command == "init" else _inspect(args)
    except FlexIPError as error:
        print(error, file=sys.stderr)
        return 1
