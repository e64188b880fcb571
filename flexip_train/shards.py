"""Reading packed pairs (docs/training-data.md) with litdata: random access for the feature cache,
evaluation and sample grids, and the shuffled, resumable training stream.

A pack is a folder or object-store URL holding `pack.json` and one litdata dataset per kind
(`invariant/`, `variant/`). Pairs are numbered in one index space, invariant pairs first: that
number keys augmentation draws and the feature cache.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from flexip_model.errors import FlexIPError

from .config import is_url
from .data import KINDS

PACK_INFO = "pack.json"
PACK_FORMAT = 1
# Prepare(global pair index, epoch or None for the canonical item, shard sample) -> training item
Prepare = Callable[[int, int | None, dict], Any]


def litdata_streaming() -> ModuleType:
    """`litdata.streaming`, imported without its PyPI version query (up to 30 s at every dataset open)."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    try:
        import litdata.streaming
    except ImportError:
        raise FlexIPError(
            "training data is read and written with litdata: pip install 'comfyui-flexip[train]' (litdata==0.2.76)."
        ) from None
    return litdata.streaming


def pack_location(root: str, name: str) -> str:
    """`name` (a kind's subset, pack.json) inside the pack `root`, a URL or a local folder."""
    return f"{root.rstrip('/')}/{name}" if is_url(root) else str(Path(root) / name)


def read_pack_info(root: str) -> dict[str, list[tuple[int, str]]]:
    """{kind: [(pairs, digest) per chunk]} from the pack's pack.json (fetched through litdata for a URL)."""
    where = pack_location(root, PACK_INFO)
    try:
        if is_url(root):
            with tempfile.TemporaryDirectory() as scratch:
                local = os.path.join(scratch, PACK_INFO)
                litdata_streaming()
                from litdata.streaming.downloader import get_downloader

                get_downloader(root, scratch, []).download_file(where, local)
                text = Path(local).read_text(encoding="utf-8")
        else:
            text = Path(where).read_text(encoding="utf-8")
    except Exception as error:
        raise FlexIPError(
            f"{where} cannot be read ({_reason(error)}): point [data] shards at a folder or URL "
            "written by `python -m flexip_train pack`."
        ) from None
    try:
        info = json.loads(text)
        if info["format"] != PACK_FORMAT:
            raise ValueError(f"format {info['format']}, this trainer reads {PACK_FORMAT}")
        return {
            kind: [(int(size), str(digest)) for size, digest in info["chunks"][kind]]
            for kind in KINDS
            if info["chunks"].get(kind)
        }
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise FlexIPError(f"{where} is not a pack description ({_reason(error)}): pack the pairs again.") from None


class ShardPairs:
    """The packed pairs of `root` (a local folder or a URL litdata reads), in one index space; chunks
    streamed from a URL are kept in `stream_cache` (default: litdata's cache folder)."""

    def __init__(self, root: str, stream_cache: str | None = None) -> None:
        streaming = litdata_streaming()
        self.root = root
        self.stream_cache = stream_cache
        chunks = read_pack_info(root)
        self.subsets: list[tuple[str, int, Any]] = []  # (kind, first global index, unshuffled dataset)
        self._chunk_starts: list[int] = []  # global index of each chunk's first pair, all kinds in order
        self._chunk_digests: list[str] = []
        offset = 0
        for kind, kind_chunks in chunks.items():
            try:
                dataset = streaming.StreamingDataset(pack_location(root, kind), cache_dir=stream_cache, shuffle=False)
            except Exception as error:
                raise FlexIPError(
                    f"the {kind} shards in {root} cannot be opened ({_reason(error)}): pack the pairs again."
                ) from None
            self.subsets.append((kind, offset, dataset))
            for size, digest in kind_chunks:
                self._chunk_starts.append(offset)
                self._chunk_digests.append(digest)
                offset += size
        self._length = offset

    def content_key(self, start: int, stop: int) -> str:
        """A digest that changes when any of pairs start..stop-1 changes: over the digests of their chunks."""
        first = bisect.bisect_right(self._chunk_starts, start) - 1
        last = bisect.bisect_left(self._chunk_starts, stop)
        return hashlib.sha256(json.dumps([start, stop, self._chunk_digests[first:last]]).encode()).hexdigest()

    def __len__(self) -> int:
        return self._length

    def locate(self, index: int) -> tuple[str, int, Any]:
        """(kind, index within its subset, that subset's dataset) of global pair `index`."""
        for kind, offset, dataset in reversed(self.subsets):
            if index >= offset:
                return kind, index - offset, dataset
        raise IndexError(index)

    @property
    def kinds(self) -> list[str]:
        """The kinds the pack holds, in index order."""
        return [kind for kind, _, _ in self.subsets]

    def damage(self) -> str | None:
        """For a local pack, the sentence naming its first missing or short chunk; else None."""
        return None if is_url(self.root) else damaged_chunk(self.root, self.kinds)

    def kind(self, index: int) -> str:
        return self.locate(index)[0]

    def sample(self, index: int) -> dict:
        """The shard sample of pair `index` (the schema of docs/training-data.md)."""
        _, local, dataset = self.locate(index)
        return dataset[local]


def _reason(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _damaged(chunk: str, folder: object, what: str) -> str:
    return f"shard {chunk} in {folder} is damaged ({what}): restore it from where it was packed, or pack again."


def _chunk_problem(path: Path, size: int) -> str | None:
    """What is wrong with a chunk file on disk against its index entry, or None."""
    if not path.is_file():
        return "the file is missing"
    found = path.stat().st_size
    return None if found == size else f"{found} bytes, its index says {size}"


def damaged_chunk(root: str, kinds: list[str]) -> str | None:
    """The sentence for the first chunk of a local pack that is missing or not the size its index says
    (one stat per chunk: litdata itself would wait for a short chunk to grow), else None."""
    for kind in kinds:
        folder = Path(root) / kind
        try:
            chunks = json.loads((folder / "index.json").read_text(encoding="utf-8"))["chunks"]
            expected = [(chunk["filename"], int(chunk["chunk_bytes"])) for chunk in chunks]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return _damaged("index.json", folder, _reason(error))
        for name, size in expected:
            problem = _chunk_problem(folder / name, size)
            if problem:
                return _damaged(name, folder, problem)
    return None


def damaged_chunk_sentence(dataset: Any, index: Any, error: BaseException) -> str:
    """One sentence for a sample litdata could not read: the chunk file, where it is, what went wrong."""
    folder = dataset.input_dir.path or dataset.input_dir.url
    try:
        chunk = dataset.cache._reader.config._chunks[index.chunk_index]
        name, size = chunk["filename"], int(chunk["chunk_bytes"])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return _damaged("a chunk", folder, _reason(error))  # still names the subset
    local = dataset.input_dir.url is None
    return _damaged(name, folder, (local and _chunk_problem(Path(folder) / name, size)) or _reason(error))
