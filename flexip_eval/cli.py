"""`python -m flexip_eval --config eval.toml` (or `torchrun ... -m flexip_eval --config eval.toml`).

Makes the images that are missing, scores those not scored yet, then (rank 0) writes into [output] dir:
results.jsonl (one line per image, every metric), table.md and table.csv (one row per method and γ,
with mRank), tradeoff.png (CLIP-T against DINO-I and CLIP-I across γ) and sheets/<subject>.png, and
prints the Markdown table on stdout. Each rank appends the images it made to logs/generated-rank<r>.jsonl.

Exit status: 0 done, 1 a FlexIPError (one sentence on stderr), 2 ComfyUI not found or a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from flexip_host import distributed
from flexip_host.bootstrap import comfyui_path
from flexip_model.errors import FlexIPError

from .benchmark import Benchmark, read_benchmark
from .config import EvalConfig, load_config
from .worklist import Item, missing, rank_share, work_items

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flexip_eval",
        description="Evaluate FlexIP against IP-Adapter and the base model on a "
        "DreamBench-style benchmark (see flexip_eval/eval.example.toml).",
    )
    parser.add_argument("--config", required=True, metavar="EVAL.toml", help="the evaluation config")
    return parser


@contextmanager
def _progress(total: int, what: str, shown: bool) -> Iterator:
    """A tqdm bar with ETA over `total` images (a no-op bar when not `shown`)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=what, unit="image", dynamic_ncols=True, disable=not shown or total == 0)
    try:
        yield bar
    finally:
        bar.close()


def _make_images(config: EvalConfig, items: list[Item], topology: distributed.Topology, shown: bool) -> None:
    """Load the base model and the methods in ComfyUI and write the PNG of every item, logging each."""
    from flexip_host.bootstrap import import_comfy, load_pack
    from flexip_host.frozen_models import load_frozen, resolve_factories

    from .generate import ImageMaker

    output = config.output.dir
    factories = resolve_factories(config.model)  # before ComfyUI's folder shadows a project's packages
    import_comfy(cpu=topology.device.type != "cuda")
    pack = load_pack()
    maker = ImageMaker(config, pack, load_frozen(config.model, factories, None, pack))
    journal = output / "logs" / f"generated-rank{topology.rank}.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    with _progress(len(items), "generating", shown) as bar, journal.open("a", encoding="utf-8") as log_file:
        started = time.monotonic()

        def done(item: Item) -> None:
            log_file.write(
                json.dumps(
                    {
                        "image": item.image.as_posix(),
                        "rank": topology.rank,
                        "world_size": topology.world_size,
                        "seconds": round(time.monotonic() - started, 3),
                    }
                )
                + "\n"
            )
            log_file.flush()
            bar.update(1)

        maker.make(items, output, done)


def _report(config: EvalConfig, benchmark: Benchmark, items: list[Item], key: dict[str, str]) -> str:
    """Rank 0, after every rank is done: results.jsonl, the tables, the chart and the contact sheets;
    returns the Markdown table."""
    from .figures import contact_sheet, tradeoff_chart
    from .scoring import results
    from .table import csv_table, markdown_table, mean_rows, with_mrank

    output = config.output.dir
    records = results(items, output, key)
    (output / "results.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    rows = with_mrank(mean_rows(records))
    table = markdown_table(rows)
    (output / "table.md").write_text(table, encoding="utf-8")
    (output / "table.csv").write_text(csv_table(rows), encoding="utf-8")
    tradeoff_chart(rows, output / "tradeoff.png")
    for subject in benchmark.subjects:
        contact_sheet(subject, items, output, output / "sheets" / f"{subject.name}.png")
    log.info("%d images scored; wrote %s", len(records), output)
    return table


def evaluate(config: EvalConfig) -> str | None:
    """Make, score and (rank 0) report, with torchrun's ranks splitting the images; the Markdown table on
    rank 0, None on the others."""
    from .generate import check_existing, image_settings
    from .scoring import judges_key, score_images, unscored

    gen = config.generation
    if gen.device == "cuda" and not torch.cuda.is_available():
        raise FlexIPError(
            "[generation] device is 'cuda' but PyTorch sees no CUDA GPU: install a CUDA build of "
            "PyTorch or set device = 'cpu'."
        )
    topology = distributed.setup(gen.device, gen.timeout_minutes)
    try:
        output = config.output.dir
        benchmark = read_benchmark(config.benchmark)
        items = work_items(config.methods, benchmark, gen.seeds)
        settings = {method.name: image_settings(config, method) for method in config.methods}
        for item in items:  # every rank checks all: a stale image stops every rank alike
            if (output / item.image).is_file():
                check_existing(output / item.image, item, settings[item.method.name])
        mine = rank_share(items, topology.rank, topology.world_size)
        to_make = missing(mine, output)
        key = judges_key(config.judges)
        stale = set(to_make) | set(unscored(mine, output, key))  # a new image is scored again
        to_score = [item for item in mine if item in stale]
        log.info(
            "rank %d of %d: %d of %d images to make, %d to score",
            topology.rank,
            topology.world_size,
            len(to_make),
            len(items),
            len(to_score),
        )
        shown = topology.is_main and config.output.progress
        if to_score:
            from .judges import load_judges

            judges = load_judges(config.judges)  # before the slow part: a missing judge stops the run now
        if to_make:
            _make_images(config, to_make, topology, shown)
        if to_score:
            with _progress(len(to_score), "scoring", shown) as bar:
                score_images(judges, to_score, output, key, gen.batch_size, gen.resolution, lambda item: bar.update(1))
        distributed.barrier(topology)
        return _report(config, benchmark, items, key) if topology.is_main else None
    finally:
        distributed.teardown()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        try:
            comfyui_path()
        except FlexIPError as error:
            print(error, file=sys.stderr)
            return 2
        table = evaluate(config)
        if table is not None:
            print(table)  # the command's result, on stdout
        return 0
    except FlexIPError as error:
        print(error, file=sys.stderr)
        return 1
