"""`python -m flexip_train pack SOURCE OUTPUT`: training pairs as litdata shards.

SOURCE is today's JSONL manifest, or a folder of `img2dataset` WebDataset tars (`KEY.jpg` +
`KEY.txt` per sample: invariant pairs). One shard sample per good pair, in the schema of
docs/training-data.md: the image bytes as they were (never re-encoded), caption, kind, where the
pair came from and a digest of its content. Invariant and variant pairs go into the subsets
`OUTPUT/invariant` and `OUTPUT/variant`, so the trainer can mix them at any ratio. The source is
checked first (the manifest exactly as `--check-data` checks it); any problem means no shards
are written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from flexip_model.errors import FlexIPError

from .data import KINDS, Pair
from .shards import PACK_FORMAT, PACK_INFO, litdata_streaming

CHUNK_BYTES = 64 << 20  # litdata's usual chunk size: few files per set, small enough to stream
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # what img2dataset writes


def _with_digest(sample: dict) -> dict:
    """`sample` plus the SHA-256 of everything training reads from it (the feature cache keys on it)."""
    digest = hashlib.sha256()
    for key in ("target", "reference", "reference_mask"):
        digest.update(hashlib.sha256(sample[key]).digest())
    digest.update(json.dumps([sample["caption"], sample["kind"]]).encode())
    return {**sample, "digest": digest.hexdigest()}


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


def _webdataset_sample(archive: Path, key: str, members: dict[str, bytes]) -> tuple[dict | None, str | None]:
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
    return {
        "target": image,
        "reference": b"",
        "reference_mask": b"",
        "caption": caption,
        "kind": "invariant",
        "source": f"{archive.name}:{key}",
    }, None


def webdataset_problems(folder: Path) -> tuple[int, list[str]]:
    """(good samples, one sentence per bad sample) of an img2dataset folder; every image is decoded."""
    archives = sorted(Path(folder).glob("*.tar"))
    if not archives:
        raise FlexIPError(
            f"{folder} holds no .tar files: give img2dataset's output folder "
            "(output_format webdataset) or a JSONL manifest."
        )
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


def _single_writer(folder: Path, chunk_bytes: int):
    """A litdata writer that works alone: under torchrun it would otherwise wait for every rank's part,
    while the trainer packs a manifest on rank 0 only."""
    streaming = litdata_streaming()
    from litdata.utilities.env import _DistributedEnv

    writer = streaming.writer.BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    return writer


def _chunks(folder: Path, digests: bytes) -> list[list]:
    """[pairs, digest] per chunk of a written subset, in its index.json order: the digest is SHA-256 over
    the chunk's pair digests, so a feature-cache shard can tell its inputs changed without reading them."""
    sizes = [chunk["chunk_size"] for chunk in json.loads((folder / "index.json").read_text())["chunks"]]
    out, start = [], 0
    for size in sizes:
        out.append([size, hashlib.sha256(digests[start * 32 : (start + size) * 32]).hexdigest()])
        start += size
    return out


def write_shards(
    samples: Iterator[dict], output: Path, chunk_bytes: int | None = None, note: dict | None = None
) -> int:
    """Writes `samples` (the schema's keys but the digest, which is added) into the empty or new folder
    `output`, one subset per kind, and `pack.json` (per kind: its chunks' sizes and digests; plus `note`);
    returns how many pairs were written. Holds 32 bytes per pair until the end (390 MB at 12.3 M pairs)."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FlexIPError(f"the shard folder {output} is not empty: pack into a new folder.")
    output.mkdir(parents=True, exist_ok=True)
    writers, digests = {}, {}
    for sample in samples:
        kind = sample["kind"]
        if kind not in writers:
            writers[kind] = _single_writer(output / kind, chunk_bytes or CHUNK_BYTES)
            digests[kind] = bytearray()
        sample = _with_digest(sample)
        writers[kind].add_item(len(digests[kind]) // 32, sample)
        digests[kind] += bytes.fromhex(sample["digest"])
    if not writers:
        raise FlexIPError("there are no pairs to pack: the manifest has no good lines.")
    for writer in writers.values():
        writer.done()
        writer.merge()
    chunks = {kind: _chunks(output / kind, digests[kind]) for kind in KINDS if kind in writers}
    info = {"format": PACK_FORMAT, "chunks": chunks, **(note or {})}
    (output / PACK_INFO).write_text(json.dumps(info), encoding="utf-8")
    return sum(len(value) // 32 for value in digests.values())


def _manifest_key(manifest: Path, pairs: list[Pair]) -> str:
    """Changes when the manifest or any file it names changes (size or modification time)."""
    stats = [(path, path.stat()) for pair in pairs for _, path in pair.files()]
    stamps = [[str(path), stat.st_size, stat.st_mtime_ns] for path, stat in stats]
    return hashlib.sha256(json.dumps([manifest.read_bytes().decode("utf-8", "replace"), stamps]).encode()).hexdigest()


def pack_manifest(manifest: Path, pairs: list[Pair], folder: Path) -> bool:
    """Keep `folder` the pack of `manifest` (the trainer's small-run path): re-packed only when the manifest
    or its files changed, written beside and renamed into place. True when it packed."""
    key = _manifest_key(manifest, pairs)
    try:
        if json.loads((folder / PACK_INFO).read_text(encoding="utf-8")).get("manifest_key") == key:
            return False
    except (OSError, ValueError):
        pass
    temporary = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    write_shards((shard_sample(pair, manifest) for pair in pairs), temporary, note={"manifest_key": key})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)
    return True
