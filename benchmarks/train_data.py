"""`python -m benchmarks.train_data` (`make bench-train`): what sharded training data costs one rank, as JSON lines.

Issue 17's figures, on synthetic pairs (tiny images: the index and the plan are measured, not
decoding): start-up to the first batch, resident memory after 100 batches (minus the same at the
smallest size), the per-step cost of choosing and reading the next batch without decoding, and
decoded samples per second. Each size is written once per engine into a scratch folder, then read
by fresh child processes (REPEATS per size, sizes alternating; the figures are medians), so
start-up and memory are one rank's from process start.
The litdata engine is the trainer's own data path, run as a process the way a user runs the trainer
(`python -m flexip_train.data_probe`, never imported): `write_shards` writes the pack (one subset per
kind, a digest per sample) and `ShardPairs` + `training_loader` read it, mixing the kinds at
variant_fraction 0.1; MDS and WebDataset are read bare here, for the comparison table.
By default 12.3 M pairs (the paper's set) is measured; with a smaller largest size it is
extrapolated linearly from the smallest and largest (figures that do not grow extrapolate to
themselves), and the note says so.
Progress goes to stderr; stdout holds only the JSON lines.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .report import Figure, Report

PAPER_PAIRS = 12_300_000  # FlexIP's training set: 11.1 M invariant + 1.23 M variant pairs
ENGINES = ("mds", "litdata", "wds")
BATCH = 16
STEPS = 100
REPEATS = 3  # reads per size; the figures are their medians
DECODED = 256  # samples decoded for the throughput figure
SHARD_BYTES = 64 << 20  # each engine's usual shard size
VARIANT_FRACTION = 0.1  # the paper's mix, about 9:1
SPAN = 50  # least ratio of the largest to the smallest size, so the measured growth is above the noise
TRAINER_PROBE = "flexip_train.data_probe"  # run as a process: the benchmarks never import the trainer


def log(message: str) -> None:
    print(f"train_data: {message}", file=sys.stderr, flush=True)


def _tiny_images() -> tuple[bytes, bytes]:
    """A 16×16 JPEG and its 16×16 PNG mask: every synthetic pair stores these bytes."""
    from PIL import Image

    image, mask = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(image, format="JPEG")
    Image.new("L", (16, 16), 255).save(mask, format="PNG")
    return image.getvalue(), mask.getvalue()


def samples(count: int) -> Iterator[dict]:
    """Synthetic pairs in the shard schema (no digest); one in ten is a variant pair (the paper's mix is
    about 9:1). The trainer's probe packs the same bytes for the litdata engine."""
    image, mask = _tiny_images()
    for index in range(count):
        variant = index % 10 == 0
        yield {
            "target": image,
            "reference": image if variant else b"",
            "reference_mask": mask,
            "caption": f"a photo of subject {index}",
            "kind": "variant" if variant else "invariant",
            "source": f"synthetic:{index}",
        }


def _run(command: list[str], what: str, timeout: float | None) -> dict:
    """Runs `python -m ...command` from the repository root; its last stdout line, as JSON."""
    # litdata asks PyPI for a newer version on every dataset it opens (up to 30 s); training nodes must not
    env = dict(
        os.environ,
        LITDATA_DISABLE_VERSION_CHECK="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{what} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(engine: str, folder: Path, count: int) -> float:
    """Writes `count` synthetic pairs with `engine` into the new `folder`; the seconds writing took."""
    if engine == "litdata":  # the trainer's pack writer times itself, without its process start
        command = [TRAINER_PROBE, "write", str(folder), str(count), "--chunk-bytes", str(SHARD_BYTES)]
        return _run(command, "the trainer's pack writer", timeout=None)["write_s"]
    start = time.perf_counter()
    folder.mkdir(parents=True)
    if engine == "mds":
        from streaming import MDSWriter

        columns = {"target": "bytes", "reference": "bytes", "reference_mask": "bytes", "caption": "str", "kind": "str"}
        with MDSWriter(out=str(folder), columns=columns, size_limit=SHARD_BYTES) as writer:
            for sample in samples(count):
                writer.write({key: sample[key] for key in columns})
    else:
        import webdataset

        with webdataset.ShardWriter(str(folder / "%06d.tar"), maxsize=SHARD_BYTES, maxcount=10**9, verbose=0) as writer:
            for index, sample in enumerate(samples(count)):
                writer.write(
                    {
                        "__key__": f"{index:09d}",
                        "target.jpg": sample["target"],
                        "reference.jpg": sample["reference"],
                        "mask.png": sample["reference_mask"],
                        "txt": sample["caption"],
                        "kind.txt": sample["kind"],
                    }
                )
    return time.perf_counter() - start


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _decode(image: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(image)) as decoded:
        decoded.convert("RGB").load()


def _open(engine: str, folder: Path, seed: int):
    """An iterable over raw samples (bytes, no decoding), shuffled by `seed`, for rank 0 of 1 (MDS, WebDataset)."""
    if engine == "mds":
        from streaming import StreamingDataset

        return StreamingDataset(local=str(folder), shuffle=True, shuffle_seed=seed, batch_size=BATCH)
    import webdataset

    shards = sorted(str(path) for path in folder.glob("*.tar"))
    return webdataset.WebDataset(shards, shardshuffle=len(shards), seed=seed, empty_check=False).shuffle(1000)


def child(engine: str, folder: Path) -> None:
    """One rank of MDS or WebDataset: first batch, STEPS more batches (timed, no decoding), RSS, then
    decoded throughput; the same figures as the trainer's probe prints for litdata."""
    import torch

    imported_rss = _rss_mb()
    batches = iter(
        torch.utils.data.DataLoader(_open(engine, folder, seed=7), batch_size=BATCH, num_workers=0, collate_fn=list)
    )
    next(batches)
    first = time.monotonic()
    start = time.perf_counter()
    for _ in range(STEPS):
        next(batches)
    step_ms = (time.perf_counter() - start) * 1000 / STEPS
    rss = _rss_mb()
    start = time.perf_counter()
    decoded = 0
    while decoded < DECODED:
        for sample in next(batches):
            _decode(sample["target"] if engine == "mds" else sample["target.jpg"])
            decoded += 1
    rate = decoded / (time.perf_counter() - start)
    print(
        json.dumps(
            {
                "first_batch": first,
                "step_ms": step_ms,
                "rss_mb": rss,
                "imported_rss_mb": imported_rss,
                "samples_per_s": rate,
            }
        )
    )


def measure(engine: str, folder: Path) -> dict:
    """Reads `folder` in a fresh interpreter (the trainer's probe for litdata, `child` for the others);
    start-up is from just before its launch to its first batch."""
    if engine == "litdata":
        command = [TRAINER_PROBE, "read", str(folder), "--batch", str(BATCH), "--steps", str(STEPS)]
        command += ["--decoded", str(DECODED), "--variant-fraction", str(VARIANT_FRACTION)]
    else:
        command = ["benchmarks.train_data", "--child", engine, str(folder)]
    launched = time.monotonic()
    result = _run(command, f"the {engine} reader", timeout=900)
    result["startup_s"] = result.pop("first_batch") - launched
    return result


def extrapolate(small: tuple[int, float], large: tuple[int, float], count: int) -> float:
    """Linear in the pair count through the two measured points; a fall between them is noise, not a trend."""
    (n0, v0), (n1, v1) = small, large
    return v1 + max(0.0, (v1 - v0) / (n1 - n0)) * (count - n1)


def figures(report: Report, engine: str, runs: dict[int, dict], write_s: dict[int, float]) -> None:
    small, large = min(runs), max(runs)
    at = {
        name: (extrapolate((small, runs[small][name]), (large, runs[large][name]), PAPER_PAIRS))
        for name in ("startup_s", "step_ms", "rss_mb")
    }
    measured = f"measured at {small:,} and {large:,} pairs" + (
        "" if large >= PAPER_PAIRS else "; 12.3 M extrapolated linearly from them"
    )
    rss_growth = at["rss_mb"] - runs[small]["rss_mb"]
    for size, run in sorted(runs.items()):
        report.add(
            Figure(
                f"train_data_startup_s[{engine},{size}]",
                run["startup_s"],
                "s",
                "report",
                note=f"process start to first batch of {BATCH}, one rank; writing took {write_s[size]:.1f} s",
            )
        )
        report.add(
            Figure(
                f"train_data_rss_mb[{engine},{size}]",
                run["rss_mb"] - runs[small]["rss_mb"],
                "MB",
                "report",
                note=f"RSS after {STEPS} batches {run['rss_mb']:.0f} MB minus the same at {small:,}; "
                f"{run['imported_rss_mb']:.0f} MB after imports",
            )
        )
        report.add(
            Figure(
                f"train_data_plan_ms_per_step[{engine},{size}]",
                run["step_ms"],
                "ms",
                "report",
                note=f"mean over {STEPS} batches of {BATCH}: choose and read the next batch, no decoding",
            )
        )
    report.add(
        Figure(
            f"train_data_startup_s[{engine},12.3M]",
            at["startup_s"],
            "s",
            "<= 60 and <= 2 x the 10 k figure + shard term",
            # the shard term: listing and opening shards, taken as 1 s here (tens of shards at 1 M)
            at["startup_s"] <= 60 and at["startup_s"] <= 2 * runs[small]["startup_s"] + 1,
            measured,
        )
    )
    report.add(Figure(f"train_data_rss_mb[{engine},12.3M]", rss_growth, "MB", "<= 500", rss_growth <= 500, measured))
    report.add(
        Figure(
            f"train_data_plan_ms_per_step[{engine},12.3M]",
            at["step_ms"],
            "ms",
            "<= 5 and <= 2 x the 10 k figure",
            at["step_ms"] <= 5 and at["step_ms"] <= 2 * runs[small]["step_ms"],
            measured,
        )
    )
    report.add(
        Figure(
            f"train_data_samples_per_s[{engine}]",
            runs[large]["samples_per_s"],
            "samples/s",
            "report",
            note=f"16×16 JPEG decoded with PIL, one worker, at {large:,} pairs",
        )
    )


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_data", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default="litdata",
        help=f"comma-separated, of {', '.join(ENGINES)} (default litdata: the trainer's own "
        f"write_shards + ShardPairs + training_loader, run as `python -m {TRAINER_PROBE}`)",
    )
    parser.add_argument(
        "--sizes",
        default="10000,1000000,12300000",
        help="pair counts (default 10000,1000000,12300000: the paper's 12.3 M is measured, about 8 min "
        "and 13 GB of scratch disk here; 10000,1000000 extrapolates in 1 min)",
    )
    parser.add_argument(
        "--scratch", type=Path, default=None, help="folder for the synthetic shards (default: a temp dir)"
    )
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    engines = args.engines.split(",")
    sizes = sorted(int(size) for size in args.sizes.split(","))
    unknown = [engine for engine in engines if engine not in ENGINES]
    if unknown or len(sizes) < 2:
        print(f"train_data: give engines from {', '.join(ENGINES)} and at least two sizes.", file=sys.stderr)
        return 2
    if sizes[-1] < SPAN * sizes[0]:
        # 10 k against 20 k: +6.6 MB of allocator noise extrapolates to 8 GB at 12.3 M
        print(
            f"train_data: make the largest size at least {SPAN}× the smallest: growth between close sizes "
            "is noise, and 12.3 M is extrapolated from it.",
            file=sys.stderr,
        )
        return 2
    report, started = Report(), time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="flexip-train-data-", dir=args.scratch))
    try:
        for engine in engines:
            write_s, folders = {}, {}
            for size in sizes:
                folders[size] = scratch / f"{engine}-{size}"
                log(f"{engine}: writing {size:,} pairs")
                write_s[size] = write(engine, folders[size], size)
            # single runs differ by tenths of a second here, which the extrapolation multiplies: the median of
            # REPEATS reads per size, in alternating order (A B B A ...) so a slow spell hits every size alike
            measured: dict[int, list[dict]] = {size: [] for size in sizes}
            for repeat in range(REPEATS):
                for size in sizes if repeat % 2 == 0 else reversed(sizes):
                    log(f"{engine}: reading {size:,} pairs ({repeat + 1} of {REPEATS})")
                    measured[size].append(measure(engine, folders[size]))
            runs = {
                size: {key: statistics.median(run[key] for run in results) for key in results[0]}
                for size, results in measured.items()
            }
            for folder in folders.values():
                shutil.rmtree(folder)
            figures(report, engine, runs, write_s)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.summary(time.perf_counter() - started, "cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
