"""The trainer's inputs are untrusted too: the .state.pt is checked against the run, the TOML's sizes are bounded."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flexip_model import FlexIPAdapter, FlexIPError, LayerSpec, config_for
from flexip_train import load_config, state
from tests.support.assertions import assert_one_sentence

pytestmark = pytest.mark.unit

CONFIG = config_for("sd15", layers=(LayerSpec("input_1_0", 16, 2),), tiny=True)


def _payload() -> dict:
    """What the trainer writes after one AdamW step (trainer.py _checkpoint), for CONFIG."""
    torch.manual_seed(0)
    adapter = FlexIPAdapter(CONFIG)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    sum(p.sum() for p in adapter.parameters()).backward()
    optimizer.step()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {
        "format": state.STATE_FORMAT,
        "step": 1,
        "position": 1,
        "world_size": 1,
        "adapter": {k: v.detach().clone() for k, v in adapter.state_dict().items()},
        "ema": None,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": None,
        "rng": state.rng_states(),
        "adapter_config": CONFIG.to_json(),
        "rank_digests": ["x"],
        "data": {"current_epoch": 1, "dataset": {}, "latest_worker_idx": 0, "num_samples_yielded": {0: [1, 0]}},
    }


def _saved(tmp_path: Path, payload: dict) -> Path:
    path = tmp_path / "run-000001.safetensors"
    torch.save(payload, str(state.state_path(path)))
    return path


def test_a_state_written_by_the_trainer_is_accepted(tmp_path):
    payload = _payload()
    loaded = state.load_state(_saved(tmp_path, payload), CONFIG)
    assert loaded["step"] == 1 and loaded["adapter"].keys() == payload["adapter"].keys()


def _damaged(kind: str) -> dict:
    payload = _payload()
    first = next(iter(payload["adapter"]))
    if kind == "step":
        payload["step"] = 10**30
    elif kind == "world_size":
        payload["world_size"] = "8"
    elif kind == "adapter_shape":
        payload["adapter"][first] = torch.zeros(10**3)
    elif kind == "adapter_names":
        payload["adapter"]["extra"] = torch.zeros(1)
    elif kind == "adapter_nan":
        payload["adapter"][first].view(-1)[0] = math.nan
    elif kind == "optimizer_size":
        payload["optimizer"]["state"][0]["exp_avg"] = torch.zeros(10**4)
    elif kind == "optimizer_index":
        payload["optimizer"]["state"][10**6] = {}
    elif kind == "rng":
        payload["rng"] = {"torch": torch.zeros(1 << 20, dtype=torch.uint8), "cuda": [], "python": [3, [], None]}
    elif kind == "data":
        payload["data"] = {"current_epoch": "1; import os"}
    elif kind == "not_a_dict":
        payload = [1, 2, 3]
    return payload


@pytest.mark.parametrize(
    "kind,mention",
    [
        ("step", "step=1000000000000000000000000000000"),
        ("world_size", "world_size=8"),
        ("adapter_shape", "adapter weight"),
        ("adapter_names", "names differ"),
        ("adapter_nan", "NaN or infinite"),
        ("optimizer_size", "optimizer exp_avg for parameter 0"),
        ("optimizer_index", "parameter 1000000"),
        ("rng", "random-number states"),
        ("data", "data-loader position"),
        ("not_a_dict", "trainer-state format"),
    ],
)
def test_damaged_state_fields_are_refused_in_one_sentence(tmp_path, kind, mention):
    path = _saved(tmp_path, _damaged(kind))
    with pytest.raises(FlexIPError) as error:
        state.load_state(path, CONFIG)
    assert_one_sentence(str(error.value), "run-000001.state.pt", mention)


TOML = """
[model]
checkpoint = "base.safetensors"
clip_vision = "clip.safetensors"
dino = "dino.safetensors"
[data]
manifest = "pairs.jsonl"
{data}
[output]
dir = "out"
[train]
{train}
"""


@pytest.mark.parametrize(
    "data,train,mention",
    [
        ("", "batch_size = 1000000000", "[train] batch_size = 1000000000 is over 4096"),
        ("resolution = 8000000", "", "[data] resolution = 8000000 is over 4096"),
        ("num_workers = 100000", "", "[data] num_workers = 100000 is over 256"),
        (
            "variant_fraction = 9",
            "",
            "[data] variant_fraction is the share of variant pairs per batch, between 0 and 1",
        ),
        ('shards = "packed"', "", "[data] needs either manifest"),
    ],
)
def test_training_config_sizes_are_bounded(tmp_path, data, train, mention):
    path = tmp_path / "train.toml"
    path.write_text(TOML.format(data=data, train=train), encoding="utf-8")
    with pytest.raises(FlexIPError) as error:
        load_config(path)
    assert_one_sentence(str(error.value), "train.toml", mention)


def test_training_config_within_bounds_loads(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(TOML.format(data="resolution = 1024", train="batch_size = 64"), encoding="utf-8")
    assert load_config(path).train.batch_size == 64


@pytest.mark.parametrize("shards,expected", [("packed", "{base}/packed"), ("s3://bucket/pairs", "s3://bucket/pairs")])
def test_shards_are_a_folder_relative_to_the_config_or_a_url(tmp_path, shards, expected):
    path = tmp_path / "train.toml"
    path.write_text(
        TOML.format(data="", train="").replace('manifest = "pairs.jsonl"', f'shards = "{shards}"'), encoding="utf-8"
    )
    data = load_config(path).data
    assert data.manifest is None and data.shards == expected.format(base=tmp_path.resolve())


@pytest.mark.parametrize(
    "data,train,mention",
    [
        ("", "batch_size = 4.5", "[train] batch_size is 4.5, expected a whole number"),
        ("", "deterministic = 1", "[train] deterministic is 1, expected true or false"),
        ("invariant_gate = [0.7]", "", "[data] invariant_gate is [0.7], expected a list of 2 numbers"),
        ("manifest = 3", "", "[data] manifest is 3, expected a path in quotes"),
        ("[data.augment]\nflips = 0.5", "", "[data.augment] has unknown key 'flips'"),
    ],
)
def test_training_config_types_are_checked_key_by_key(tmp_path, data, train, mention):
    path = tmp_path / "train.toml"
    path.write_text(
        TOML.format(data=data, train=train).replace('manifest = "pairs.jsonl"\nmanifest', "manifest"), encoding="utf-8"
    )
    with pytest.raises(FlexIPError) as error:
        load_config(path)
    assert_one_sentence(str(error.value), "train.toml", mention)
