"""ComfyUI's progress bar over a node's per-image loops, so long batches show progress in the UI."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TypeVar

import comfy.utils

Item = TypeVar("Item")


def with_progress(items: Collection[Item], bar: comfy.utils.ProgressBar | None = None) -> Iterator[Item]:
    """`items` in order; the node's progress bar (a new one of len(items), or `bar`) advances as each is done."""
    bar = bar if bar is not None else comfy.utils.ProgressBar(len(items))
    for item in items:
        yield item
        bar.update(1)
