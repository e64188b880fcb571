"""`python -m flexip_train --config train.toml [--check-data] [--resume [CHECKPOINT]]`,
or `python -m flexip_train pack MANIFEST.jsonl|IMG2DATASET_FOLDER OUTPUT [--chunk-mb N]` (pairs as shards).

Exit status: 0 done, 1 bad data (--check-data found problems) or a FlexIPError, 2 ComfyUI not found
or a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from flexip_host.bootstrap import comfyui_path
from flexip_model.errors import FlexIPError

from .config import load_config
from .data import Pair, read_manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flexip_train", description="Train a FlexIP adapter (see flexip_train/train.example.toml)."
    )
    parser.add_argument("--config", required=True, metavar="TRAIN.toml", help="the training config")
    parser.add_argument(
        "--check-data",
        action="store_true",
        help="check every manifest line (files exist and decode, caption, kind), then exit: 0 clean, 1 problems",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in [output] dir, or from CHECKPOINT.safetensors",
    )
    parser.add_argument("--max-steps", type=int, metavar="N", help="override [train] max_steps")
    return parser


def _pack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flexip_train pack",
        description="Check the pairs (a JSONL manifest as --check-data does), then "
        "write them as litdata shards (docs/training-data.md).",
    )
    parser.add_argument(
        "source",
        type=Path,
        metavar="SOURCE",
        help="a JSONL manifest (today's format) or a folder of img2dataset WebDataset tars",
    )
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="a new or empty folder for the shards")
    parser.add_argument("--chunk-mb", type=int, default=64, metavar="N", help="shard size in MB (default 64)")
    return parser


def checked_pairs(manifest: Path) -> tuple[list[Pair], int]:
    """Every pair, after printing every problem of the manifest one line each; (pairs, 1 if any problem)."""
    pairs, problems = read_manifest(manifest, check_images=True)
    for problem in problems:
        print(problem)
    print(f"{manifest.name}: {len(pairs)} good pairs, {len(problems)} problems", file=sys.stderr)
    return pairs, 1 if problems else 0


def check_data(manifest: Path) -> int:
    """Print every problem of the manifest, one line each; 1 if there was any."""
    return checked_pairs(manifest)[1]


def pack(argv: Sequence[str]) -> int:
    """The pack command: a clean source becomes shards; any bad line or sample means exit 1 and no shards."""
    from .pack import shard_sample, webdataset_problems, webdataset_samples, write_shards

    args = _pack_parser().parse_args(argv)
    try:
        if args.source.is_dir():
            good, problems = webdataset_problems(args.source)
            for problem in problems:
                print(problem)
            print(f"{args.source.name}: {good} good samples, {len(problems)} problems", file=sys.stderr)
            if problems:
                return 1
            samples = webdataset_samples(args.source)
        else:
            pairs, status = checked_pairs(args.source)
            if status:
                return status
            samples = (shard_sample(pair, args.source) for pair in pairs)
        count = write_shards(samples, args.output, chunk_bytes=args.chunk_mb << 20)
    except FlexIPError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{args.source.name}: {count} pairs packed into {args.output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pack"]:
        return pack(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        if args.max_steps is not None:
            config = config.replace("train", max_steps=args.max_steps)
        if args.check_data:
            return check_data(config.data.manifest)
        try:
            comfyui_path()
        except FlexIPError as error:
            print(error, file=sys.stderr)
            return 2
        from .trainer import train

        result = train(config, resume=args.resume)
        if result.checkpoint is not None:
            logging.getLogger(__name__).info("done at step %d: %s", result.step, result.checkpoint)
        return 0
    except FlexIPError as error:
        print(error, file=sys.stderr)
        return 1
