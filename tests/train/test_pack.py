"""`python -m flexip_train pack`: a manifest becomes litdata shards holding the same pairs, byte for byte,
one subset per kind, read back through the trainer's own reader."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from flexip_train.cli import main
from tests.support.synthetic import write_pairs

pytestmark = pytest.mark.train


def _read_shards(folder: Path) -> list[dict]:
    """Every packed pair in the trainer's index space: invariant pairs first, then variant pairs."""
    from flexip_train.shards import ShardPairs

    pairs = ShardPairs(str(folder))
    return [pairs.sample(index) for index in range(len(pairs))]


def test_pack_writes_every_pair_as_it_is_on_disk(tmp_path: Path, capsys):
    manifest = write_pairs(tmp_path / "data", count=6)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]

    # 1 MB chunks over ~6 small pairs: one chunk; the count check below covers the whole set either way
    assert main(["pack", str(manifest), str(tmp_path / "shards"), "--chunk-mb", "1"]) == 0
    assert "6 pairs packed" in capsys.readouterr().err

    samples = _read_shards(tmp_path / "shards")
    # write_pairs alternates kinds: lines 1, 3, 5 are invariant, 2, 4, 6 variant
    order = [1, 3, 5, 2, 4, 6]
    assert [sample["source"] for sample in samples] == [f"pairs.jsonl:{n}" for n in order]
    chunks = json.loads((tmp_path / "shards" / "pack.json").read_text())["chunks"]
    assert {kind: [size for size, _ in chunks[kind]] for kind in chunks} == {"invariant": [3], "variant": [3]}
    images = tmp_path / "data"
    for sample, line in zip(samples, [lines[n - 1] for n in order]):
        assert sample["kind"] == line["kind"] and sample["caption"] == line["caption"]
        assert sample["target"] == (images / line["target"]).read_bytes()
        # invariant pairs build their reference from the target: the shard stores none
        reference = (images / line["reference"]).read_bytes() if "reference" in line else b""
        assert sample["reference"] == reference
        mask = (images / line["reference_mask"]).read_bytes() if "reference_mask" in line else b""
        assert sample["reference_mask"] == mask
    assert len({sample["digest"] for sample in samples}) == 6  # the content digest the feature cache keys on


def test_pack_refuses_a_bad_manifest_and_writes_nothing(tmp_path: Path, capsys):
    manifest = write_pairs(tmp_path / "data", count=2)
    faults = [
        '{"target": "images/missing.png", "caption": "a red circle", "kind": "invariant"}',
        '{"target": "images/0_target.png", "caption": "a red circle", "kind": "invarient"}',
    ]
    manifest.write_text(manifest.read_text() + "\n".join(faults) + "\n")

    assert main(["pack", str(manifest), str(tmp_path / "shards")]) == 1
    # the --check-data report: every bad line, one line each
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("pairs.jsonl line 3") and "was not found" in lines[0], lines
    assert lines[1].startswith("pairs.jsonl line 4") and "kind 'invarient'" in lines[1], lines
    assert not (tmp_path / "shards").exists()


def test_pack_refuses_a_folder_in_use(tmp_path: Path, capsys):
    manifest = write_pairs(tmp_path / "data", count=2)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "index.json").write_text("{}")

    assert main(["pack", str(manifest), str(tmp_path / "shards")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"the shard folder {tmp_path / 'shards'} is not empty: pack into a new folder."


def _img2dataset_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    """A tar laid out as img2dataset writes one: KEY.jpg, KEY.txt, KEY.json next to each other."""
    with tarfile.open(path, "w") as archive:
        for key, members in samples.items():
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_pack_reads_img2dataset_tars_as_invariant_pairs(tmp_path: Path):
    images = sorted((write_pairs(tmp_path / "data", count=4).parent / "images").glob("*_target.png"))
    (tmp_path / "web").mkdir()
    pictures = [path.read_bytes() for path in images]
    _img2dataset_tar(
        tmp_path / "web" / "00000.tar",
        {
            "000000000": {"jpg": pictures[0], "txt": b"a red circle", "json": b"{}"},
            "000000001": {"jpg": pictures[1], "txt": b"a green square", "json": b"{}"},
        },
    )
    _img2dataset_tar(tmp_path / "web" / "00001.tar", {"000010000": {"png": pictures[2], "txt": b"a blue triangle"}})

    assert main(["pack", str(tmp_path / "web"), str(tmp_path / "shards")]) == 0
    samples = _read_shards(tmp_path / "shards")
    assert [(s["source"], s["caption"], s["kind"]) for s in samples] == [
        ("00000.tar:000000000", "a red circle", "invariant"),
        ("00000.tar:000000001", "a green square", "invariant"),
        ("00001.tar:000010000", "a blue triangle", "invariant"),
    ]
    assert [s["target"] for s in samples] == pictures[:3]
    assert all(s["reference"] == b"" and s["reference_mask"] == b"" for s in samples)


def test_pack_lists_every_bad_img2dataset_sample(tmp_path: Path, capsys):
    picture = (write_pairs(tmp_path / "data", count=1).parent / "images" / "0_target.png").read_bytes()
    (tmp_path / "web").mkdir()
    _img2dataset_tar(
        tmp_path / "web" / "00000.tar",
        {
            "a": {"jpg": picture, "txt": b"fine"},
            "b": {"txt": b"no image"},
            "c": {"jpg": picture},
            "d": {"jpg": b"not an image at all", "txt": b"broken"},
        },
    )

    assert main(["pack", str(tmp_path / "web"), str(tmp_path / "shards")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    for line, (key, words) in zip(lines, [("b", "has no image"), ("c", "has no caption"), ("d", "not a readable")]):
        assert line.startswith(f"00000.tar sample {key} ") and words in line, line
    assert not (tmp_path / "shards").exists()
