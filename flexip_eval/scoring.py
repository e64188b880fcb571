"""Every image scored by the judges once: the scores are kept beside the PNG and reused.

An image's scores (images/.../p03_s0.json beside p03_s0.png) name the judges that gave them;
an image is scored again only when it was just made or the [judges] files changed. Each rank
scores its own images; rank 0 reads them all back for the tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .benchmark import read_image, subject_images
from .judges import Judges, JudgesConfig
from .table import METRICS
from .worklist import Item


def judges_key(config: JudgesConfig) -> dict[str, str]:
    """Which judges gave a score: the [judges] files (a changed file means new scores)."""
    return {
        "clip": str(config.clip),
        "dino": str(config.dino),
        "aesthetic": str(config.aesthetic),
        "aesthetic_clip": str(config.aesthetic_clip or config.clip),
    }


def scores_path(output: Path, item: Item) -> Path:
    return output / item.image.with_suffix(".json")


def stored_scores(output: Path, item: Item, key: dict[str, str]) -> dict[str, float] | None:
    """The item's scores if the judges of `key` gave them, else None."""
    try:
        stored = json.loads(scores_path(output, item).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("judges") != key or set(stored.get("scores", {})) != set(METRICS):
        return None
    return stored["scores"]


def unscored(items: list[Item], output: Path, key: dict[str, str]) -> list[Item]:
    return [item for item in items if stored_scores(output, item, key) is None]


def _runs(items: list[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive items of one subject, at most `size` at a time (one subject's references per call)."""
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and end - start < size and items[end].subject.name == items[start].subject.name:
            end += 1
        yield items[start:end]
        start = end


def score_images(
    judges: Judges,
    items: list[Item],
    output: Path,
    key: dict[str, str],
    batch_size: int,
    resolution: int,
    done: Callable[[Item], None] = lambda item: None,
) -> None:
    """Score each item's PNG against its prompt and all photos of its subject; write the scores beside it."""
    references: dict[str, torch.Tensor] = {}
    for run in _runs(items, batch_size):
        subject = run[0].subject
        if subject.name not in references:
            references = {subject.name: subject_images(subject.images, resolution)}  # one subject held at a time
        images = torch.stack([read_image(output / item.image) for item in run])
        scores = judges.score(images, [item.prompt for item in run], references[subject.name])
        for item, values in zip(run, scores):
            path = scores_path(output, item)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps({"judges": key, "scores": {name: float(values[name]) for name in METRICS}}))
            os.replace(partial, path)
            done(item)


def results(items: list[Item], output: Path, key: dict[str, str]) -> list[dict]:
    """One record per item (its identity and every metric), in work order; all must be scored."""
    records = []
    for item in items:
        scores = stored_scores(output, item, key)
        if scores is None:
            raise RuntimeError(f"{item.image} has no scores: a rank did not finish its share")  # ranks met at a barrier
        records.append({**item.record(), **scores})
    return records
