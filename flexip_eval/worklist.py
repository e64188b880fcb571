"""The work of an evaluation: one item per image, in a fixed order, with a stable file name each.

Order: method, then γ, subject, prompt, seed (the seed varies fastest, so one prompt's seeds sit
together and are sampled as one batch). torchrun rank r of n takes items[r::n]; an item whose PNG
exists was done by an earlier run (or another rank count) and is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from .benchmark import Benchmark, Subject
from .config import GenerationConfig, MethodConfig

IMAGES = "images"


def gate_label(method: MethodConfig, gamma: float | None) -> str:
    """The γ part of a row's name and folder: 'gamma_0.5', 'schedule' or 'no_adapter' (the base model)."""
    if gamma is not None:
        return f"gamma_{gamma:g}"
    return "schedule" if method.schedule else "no_adapter"


@dataclass(frozen=True)
class Item:
    """One image to make and score."""

    method: MethodConfig
    gamma: float | None  # None: the method's schedule, or the base model
    subject: Subject
    prompt_index: int  # position in the subject's prompt list
    seed: int

    @property
    def prompt(self) -> str:
        return self.subject.prompts[self.prompt_index]

    @property
    def image(self) -> Path:
        """Relative to the output folder, e.g. images/FlexIP/gamma_0.5/dog/p03_s0.png."""
        return (
            Path(IMAGES)
            / self.method.name
            / gate_label(self.method, self.gamma)
            / self.subject.name
            / f"p{self.prompt_index:02d}_s{self.seed}.png"
        )

    @property
    def batch_key(self) -> tuple:
        """Items with the same key are sampled together: same model, subject and prompt, other seeds."""
        return self.method.name, self.gamma, self.subject.name, self.prompt_index

    def record(self) -> dict:
        """What identifies the image in results.jsonl and in its PNG metadata."""
        return {
            "image": self.image.as_posix(),
            "method": self.method.name,
            "kind": self.method.kind,
            "gamma": self.gamma,
            "schedule": self.method.schedule,
            "subject": self.subject.name,
            "class_noun": self.subject.class_noun,
            "prompt_index": self.prompt_index,
            "prompt": self.prompt,
            "seed": self.seed,
        }


def work_items(methods: tuple[MethodConfig, ...], benchmark: Benchmark, seeds: tuple[int, ...]) -> list[Item]:
    """Every image of the evaluation, in the fixed order."""
    return [
        Item(method, gamma, subject, index, seed)
        for method in methods
        for gamma in method.gates
        for subject in benchmark.subjects
        for index in range(len(subject.prompts))
        for seed in seeds
    ]


def rank_share(items: list[Item], rank: int, world_size: int) -> list[Item]:
    """Rank `rank`'s items of `world_size`: every world_size-th, so each image belongs to one rank."""
    return items[rank::world_size]


def missing(items: list[Item], output: Path) -> list[Item]:
    """The items whose PNG is not in `output` yet."""
    return [item for item in items if not (output / item.image).is_file()]


def batches(items: list[Item], generation: GenerationConfig) -> Iterator[list[Item]]:
    """Consecutive items of one batch key, at most [generation] batch_size at a time."""
    for _, group in groupby(items, key=lambda item: item.batch_key):
        group = list(group)
        for start in range(0, len(group), generation.batch_size):
            yield group[start : start + generation.batch_size]
