"""`python -m flexip_train.data_probe`: the trainer's own data path, measured as a process.

It exists so `make bench-train` (`benchmarks/train_data.py`) can measure the trainer's pack writer
and reader from outside, the way a user runs the trainer, without importing it. `write FOLDER PAIRS`
packs synthetic pairs with `write_shards`; `read FOLDER ...` reads them as one rank through
`ShardPairs` + `training_loader`. Each prints its raw measurements as one JSON object on stdout; the
benchmark owns the repeats, the statistics, the targets and the report (docs/training-data.md).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from .pack import write_shards
from .shards import Prepare, ShardPairs
from .stream import training_loader


def synthetic_pairs(count: int) -> Iterator[dict[str, Any]]:
    """Pairs in the shard schema but the digest (`write_shards` adds it): a 16×16 JPEG target and PNG
    mask, one pair in ten a variant (the paper's mix, about 9:1); the bytes the benchmark gives its
    comparison engines."""
    image, mask = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(image, format="JPEG")
    Image.new("L", (16, 16), 255).save(mask, format="PNG")
    for index in range(count):
        variant = index % 10 == 0
        yield {
            "target": image.getvalue(),
            "reference": image.getvalue() if variant else b"",
            "reference_mask": mask.getvalue(),
            "caption": f"a photo of subject {index}",
            "kind": "variant" if variant else "invariant",
            "source": f"synthetic:{index}",
        }


def write(folder: Path, pairs: int, chunk_bytes: int | None) -> dict[str, float]:
    """Packs `pairs` synthetic pairs into the new folder `folder`: pairs written and seconds taken."""
    start = time.perf_counter()
    written = write_shards(synthetic_pairs(pairs), folder, chunk_bytes=chunk_bytes)
    return {"pairs": written, "write_s": time.perf_counter() - start}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _target_size(index: int, epoch: int | None, sample: dict[str, Any]) -> tuple[int, int]:
    """A `prepare` that reads the target's bytes without decoding: (pair index, target bytes)."""
    return index, len(bytes(sample["target"]))


def _decoded_target(index: int, epoch: int | None, sample: dict[str, Any]) -> int:
    """A `prepare` that decodes the target with PIL, inside the loader as in training."""
    with Image.open(io.BytesIO(bytes(sample["target"]))) as decoded:
        decoded.convert("RGB").load()
    return index


def _batches(folder: Path, prepare: Prepare, batch: int, variant_fraction: float) -> Iterator[Any]:
    """One rank's micro-batches (lists of prepared pairs), the pack's two kinds mixed at `variant_fraction`."""
    loader = training_loader(
        ShardPairs(str(folder)),
        prepare,
        seed=0,
        batch_size=batch,
        num_workers=0,
        variant_fraction=variant_fraction,
        collate=list,
        pin_memory=False,
    )
    return iter(loader)


def read(folder: Path, batch: int, steps: int, decoded: int, variant_fraction: float) -> dict[str, float]:
    """One rank: the first batch (its `time.monotonic()`, for start-up from the caller's launch), `steps`
    more batches timed without decoding, RSS after them (and after the imports), then decoded samples/s."""
    imported_rss = _rss_mb()  # the trainer's imports, at the top of this module, are paid by now
    batches = _batches(folder, _target_size, batch, variant_fraction)
    next(batches)
    first = time.monotonic()
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    step_ms = (time.perf_counter() - start) * 1000 / steps
    rss = _rss_mb()
    # the trainer decodes in `prepare`, which is fixed per loader: a second one, its first batch untimed
    batches = _batches(folder, _decoded_target, batch, variant_fraction)
    next(batches)
    start = time.perf_counter()
    count = 0
    while count < decoded:
        count += len(next(batches))
    return {
        "first_batch": first,
        "step_ms": step_ms,
        "rss_mb": rss,
        "imported_rss_mb": imported_rss,
        "samples_per_s": count / (time.perf_counter() - start),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flexip_train.data_probe",
        description="The trainer's data path, measured as a process for make bench-train: one JSON object on stdout.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("write", help="pack PAIRS synthetic pairs into the new folder FOLDER")
    packing.add_argument("folder", type=Path)
    packing.add_argument("pairs", type=int)
    packing.add_argument("--chunk-bytes", type=int, default=None, help="litdata chunk size (default: the pack's)")
    reading = commands.add_parser("read", help="read the pack FOLDER as one rank, no data-loader workers")
    reading.add_argument("folder", type=Path)
    reading.add_argument("--batch", type=int, required=True, help="pairs per micro-batch")
    reading.add_argument("--steps", type=int, required=True, help="batches timed after the first")
    reading.add_argument("--decoded", type=int, required=True, help="targets decoded for the throughput")
    reading.add_argument("--variant-fraction", type=float, required=True, help="as [data] variant_fraction")
    args = parser.parse_args(argv)
    if args.command == "write":
        result = write(args.folder, args.pairs, args.chunk_bytes)
    else:
        result = read(args.folder, args.batch, args.steps, args.decoded, args.variant_fraction)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
