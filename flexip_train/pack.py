"""`python -m flexip_train pack MANIFEST.jsonl OUTPUT`: the manifest's pairs as litdata shards.

One shard sample per good pair, in the schema of docs/training-data.md: the image files' bytes as
they are on disk (never re-encoded), caption, kind, and where the pair came from. The manifest is
checked first exactly as `--check-data` checks it; any problem means no shards are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from flexip_model.errors import FlexIPError

from .data import Pair

CHUNK_BYTES = 64 << 20  # litdata's usual chunk size: few files per set, small enough to stream


def shard_sample(pair: Pair, manifest: Path) -> dict:
    """The shard sample of one pair; an invariant pair without its own reference stores an empty one."""
    return {
        "target": pair.target.read_bytes(),
        "reference": b"" if pair.reference == pair.target else pair.reference.read_bytes(),
        "reference_mask": b"" if pair.reference_mask is None else pair.reference_mask.read_bytes(),
        "caption": pair.caption,
        "kind": pair.kind,
        "source": f"{manifest.name}:{pair.line}",
    }


def _writer(output: Path, chunk_bytes: int):
    try:
        from litdata.streaming.writer import BinaryWriter
    except ImportError:
        raise FlexIPError("packing shards needs litdata: pip install 'comfyui-flexip[train]' "
                          "(litdata==0.2.76).") from None
    return BinaryWriter(str(output), chunk_bytes=chunk_bytes)


def write_shards(samples: Iterator[dict], output: Path, chunk_bytes: Optional[int] = None) -> int:
    """Writes `samples` into the empty or new folder `output`; returns how many were written."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FlexIPError(f"the shard folder {output} is not empty: pack into a new folder.")
    output.mkdir(parents=True, exist_ok=True)
    writer = _writer(output, chunk_bytes or CHUNK_BYTES)
    count = 0
    for count, sample in enumerate(samples, start=1):
        writer.add_item(count - 1, sample)
    if count == 0:
        raise FlexIPError("there are no pairs to pack: the manifest has no good lines.")
    writer.done()
    writer.merge()
    return count
