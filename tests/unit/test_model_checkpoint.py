"""Checkpoint format v1: save/load round trip, and one clear sentence for each kind of bad file."""

from __future__ import annotations

import json
import pathlib
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flexip_model import FlexIPError, checkpoint, config_for
from tests.support.assertions import assert_one_sentence
from tests.unit.crafted_files import SMALL_LAYERS, valid_flexip
from tests.unit.crafted_files import parts as _parts

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> Path:
    return valid_flexip(tmp_path_factory.mktemp("flexip") / "valid.safetensors")


def test_save_then_load_round_trips_every_tensor_and_the_config(valid_file):
    tensors, metadata = _parts(valid_file)
    assert json.loads(metadata["flexip"])["format_version"] == 1
    adapter = checkpoint.load(valid_file)
    assert adapter.config == config_for("sd15", layers=SMALL_LAYERS, tiny=True)
    assert not adapter.training
    state = adapter.state_dict()
    assert state.keys() == tensors.keys()
    assert all(torch.equal(state[name], tensor) for name, tensor in tensors.items())
    assert checkpoint.read_config(valid_file) == checkpoint.validate(valid_file) == adapter.config


def test_load_casts_to_the_requested_dtype(valid_file):
    adapter = checkpoint.load(valid_file, dtype=torch.bfloat16)
    assert {p.dtype for p in adapter.parameters()} == {torch.bfloat16}


def _rewrite(source: Path, target: Path, tensors=None, metadata=None) -> Path:
    original_tensors, original_metadata = _parts(source)
    save_file(
        tensors if tensors is not None else original_tensors,
        str(target),
        metadata=metadata if metadata is not None else original_metadata,
    )
    return target


def _broken(kind: str, valid: Path, folder: Path) -> Path:
    tensors, metadata = _parts(valid)
    target = folder / f"{kind}.safetensors"
    if kind == "truncated":
        target.write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    elif kind == "wrong_shape":
        tensors["preservation.queries"] = torch.zeros(1, 5, 64)
        _rewrite(valid, target, tensors)
    elif kind == "format_version":
        config = json.loads(metadata["flexip"])
        config["format_version"] = 2
        _rewrite(valid, target, metadata={"flexip": json.dumps(config)})
    elif kind == "missing_key":
        del tensors["layers.input_1_0.pres.to_k.weight"]
        _rewrite(valid, target, tensors)
    elif kind == "extra_key":
        tensors["layers.input_1_0.extra.weight"] = torch.zeros(2)
        _rewrite(valid, target, tensors)
    elif kind == "renamed_key":
        tensors["layers.input_1_0.renamed.weight"] = tensors.pop("layers.input_1_0.pres.to_k.weight")
        _rewrite(valid, target, tensors)
    elif kind == "no_metadata":
        _rewrite(valid, target, metadata={"format": "pt"})
    elif kind == "integer_tensor":
        tensors["preservation.queries"] = tensors["preservation.queries"].to(torch.int32)
        _rewrite(valid, target, tensors)
    elif kind == "not_safetensors":
        target.write_text("this is not a tensor file")
    return target


@pytest.mark.parametrize(
    "kind,mention",
    [
        ("truncated", "truncated"),
        ("wrong_shape", "preservation.queries of shape [1, 5, 64]"),
        ("format_version", "format version 2"),
        ("missing_key", "holds 60 tensors but its config describes 61"),  # counted before anything is built
        ("extra_key", "holds 62 tensors but its config describes 61"),
        ("renamed_key", "layers.input_1_0.pres.to_k.weight"),
        ("no_metadata", "not a FlexIP adapter"),
        ("integer_tensor", "I32"),
        ("not_safetensors", "not a safetensors file"),
    ],
)
def test_bad_file_gives_one_sentence_naming_the_file(kind, mention, valid_file, tmp_path):
    path = _broken(kind, valid_file, tmp_path)
    for check in (checkpoint.validate, checkpoint.load):
        with pytest.raises(FlexIPError) as error:
            check(path)
        assert_one_sentence(str(error.value), path.name, mention)


class _Marker:
    """Unpickling this touches a file: proof that a loader ran pickle code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt", ".pth"])
def test_pickle_files_are_refused_without_being_unpickled(suffix, tmp_path):
    marker = tmp_path / "pickle_code_ran"
    path = tmp_path / f"adapter{suffix}"
    path.write_bytes(pickle.dumps({"weights": _Marker(marker)}))
    with pytest.raises(FlexIPError) as error:
        checkpoint.load(path)
    assert_one_sentence(str(error.value), path.name, "pickle", "safetensors")
    assert not marker.exists()


def test_missing_file_names_the_file_and_folder(tmp_path):
    with pytest.raises(FlexIPError) as error:
        checkpoint.validate(tmp_path / "absent.safetensors")
    assert_one_sentence(str(error.value), "absent.safetensors", str(tmp_path))
