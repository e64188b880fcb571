"""`python -m flexip_train --config train.toml [--check-data] [--resume [CHECKPOINT]]`.

Exit status: 0 done, 1 bad data (--check-data found problems) or a FlexIPError, 2 ComfyUI not found
or a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from flexip_model.errors import FlexIPError

from .config import load_config
from .data import read_manifest
from .host import comfyui_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flexip_train",
                                     description="Train a FlexIP adapter (see flexip_train/train.example.toml).")
    parser.add_argument("--config", required=True, metavar="TRAIN.toml", help="the training config")
    parser.add_argument("--check-data", action="store_true",
                        help="check every manifest line (files exist and decode, caption, kind), then exit: "
                             "0 clean, 1 problems")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in [output] dir, or from CHECKPOINT.safetensors")
    parser.add_argument("--max-steps", type=int, metavar="N", help="override [train] max_steps")
    return parser


def check_data(manifest) -> int:
    """Print every problem of the manifest, one line each; 1 if there was any."""
    pairs, problems = read_manifest(manifest, check_images=True)
    for problem in problems:
        print(problem)
    print(f"{manifest.name}: {len(pairs)} good pairs, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
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
