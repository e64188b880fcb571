"""`python -m flexip_train pack SOURCE OUTPUT`: training pairs as litdata shards.

SOURCE is today's JSONL manifest, or a folder of `img2dataset` WebDataset tars (`KEY.jpg` +
`KEY.txt` per sample: invariant pairs). One shard sample per good pair, in the schema of
docs/training-data.md: the image bytes as they were (never re-encoded), caption, kind, and where
the pair came from. The source is checked first (the manifest exactly as `--check-data` checks
it); any problem means no shards are written.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image, UnidentifiedImageError

from flexip_model.errors import FlexIPError

from .data import Pair

CHUNK_BYTES = 64 << 20  # litdata's usual chunk size: few files per set, small enough to stream
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # what img2dataset writes


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


def _tar_samples(archive_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; WebDataset keeps a sample's members next to each other."""
    key, members = None, {}
    with tarfile.open(archive_path) as archive:
        for member in archive:
            if not member.isfile():
                continue
            stem, _, extension = member.name.partition(".")
            if stem != key and key is not None:
                yield key, members
                members = {}
            key = stem
            members[extension.lower()] = archive.extractfile(member).read()
    if key is not None:
        yield key, members


def _webdataset_sample(archive: Path, key: str, members: dict[str, bytes]) -> tuple[Optional[dict], Optional[str]]:
    """The invariant pair of one img2dataset sample, or the sentence that says what is wrong with it."""
    where = f"{archive.name} sample {key}"
    image = next((members[extension] for extension in IMAGE_EXTENSIONS if extension in members), None)
    if image is None:
        return None, f"{where} has no image ({', '.join(IMAGE_EXTENSIONS)}): re-run img2dataset or drop the sample."
    caption = members.get("txt", b"").decode("utf-8", errors="replace").strip()
    if not caption:
        return None, f"{where} has no caption (.txt): set img2dataset's caption_col or drop the sample."
    try:
        with Image.open(io.BytesIO(image)) as decoded:
            decoded.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, f"{where} is not a readable image ({error}): re-download it or drop the sample."
    return {"target": image, "reference": b"", "reference_mask": b"", "caption": caption, "kind": "invariant",
            "source": f"{archive.name}:{key}"}, None


def webdataset_problems(folder: Path) -> tuple[int, list[str]]:
    """(good samples, one sentence per bad sample) of an img2dataset folder; every image is decoded."""
    archives = sorted(Path(folder).glob("*.tar"))
    if not archives:
        raise FlexIPError(f"{folder} holds no .tar files: give img2dataset's output folder "
                          "(output_format webdataset) or a JSONL manifest.")
    good, problems = 0, []
    for archive in archives:
        for key, members in _tar_samples(archive):
            sample, problem = _webdataset_sample(archive, key, members)
            good += sample is not None
            problems.extend([problem] if problem else [])
    return good, problems


def webdataset_samples(folder: Path) -> Iterator[dict]:
    """The shard samples of a folder that `webdataset_problems` found clean."""
    for archive in sorted(Path(folder).glob("*.tar")):
        for key, members in _tar_samples(archive):
            yield _webdataset_sample(archive, key, members)[0]


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
