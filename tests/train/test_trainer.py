"""Trainer layer: `python -m flexip_train` (and torchrun) on generated tiny models, CPU, float32.

The CLI runs in subprocesses, one thread each; the in-process tests import ComfyUI on the CPU.
Shared: one 40-step smoke run (the "straight" run the resume test compares against).
"""

from __future__ import annotations

import copy
import functools
import json
import operator
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.smoke import run_process, smoke_sections, train_cli, trainer_env, write_trained_checkpoint
from tests.support.synthetic import random_model_inputs, write_config, write_pairs

pytestmark = pytest.mark.train

STEPS = 40  # the smoke run: ~1 s/step on one loaded CPU core, and a >25 % drop of the fixed eval loss


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _placeless(data: dict) -> dict:
    """A data-loader state without the shard folders it names."""
    places = ("input_dir_path", "input_dir_url", "cache_dir_path")
    subsets = {name: {k: v for k, v in subset.items() if k not in places} for name, subset in data["dataset"].items()}
    return {**data, "dataset": subsets}


def _log_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _log(output: Path) -> list[dict]:
    return _log_file(output / "log.jsonl")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("train")
    write_pairs(folder / "data")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # ~0.6 GB of checkpoints and states; free it for the next layers


def _config(workspace: Path, name: str, steps: int = STEPS, **changes: dict) -> Path:
    sections = smoke_sections(workspace / "data" / "pairs.jsonl", workspace / name, workspace / "cache", steps)
    for section, values in changes.items():
        sections.setdefault(section, {}).update(values)
    return write_config(workspace / f"{name}.toml", sections)


@pytest.fixture(scope="module")
def straight_run(workspace: Path) -> Path:
    """40 steps in one go, checkpoints at 20 and 40, a sample grid at the end."""
    config = _config(
        workspace,
        "straight",
        output={"checkpoint_every": 20},
        samples={"every": STEPS, "pairs": 2, "gates": [0.0, 1.0], "steps": 2},
    )
    train_cli(config)
    return workspace / "straight"


def test_smoke_training_lowers_the_fixed_evaluation_loss(straight_run: Path):
    evaluations = {record["step"]: record["eval_loss"] for record in _log(straight_run) if "eval_loss" in record}
    before, after = evaluations[0], evaluations[STEPS]
    # the acceptance criterion: same pairs, noise, timesteps and γ before and after
    assert after <= 0.8 * before, f"evaluation loss {before:.4f} -> {after:.4f}"
    losses = [record["loss"] for record in _log(straight_run) if "loss" in record]
    assert len(losses) == STEPS // 5 and all(loss == loss for loss in losses)  # logged every 5 steps, no NaN
    grid = straight_run / "samples" / f"smoke-{STEPS:06d}.png"
    from PIL import Image

    with Image.open(grid) as image:  # 2 pairs x (reference + 2 gates) at 64 px
        assert image.size == (3 * 64, 2 * 64)


def test_checkpoint_passes_inspect_and_loads_in_flexip_loader(straight_run: Path, pack, capsys):
    from flexip_model.cli import main as flexip_model_main  # what `python -m flexip_model` runs

    path = straight_run / f"smoke-{STEPS:06d}.safetensors"
    assert flexip_model_main(["inspect", str(path)]) == 0
    assert "valid FlexIP checkpoint" in capsys.readouterr().out

    import folder_paths

    folder_paths.add_model_folder_path("flexip", str(straight_run))
    (loaded,) = pack.nodes.loader.FlexIPLoader().load(path.name)
    from flexip_model import checkpoint

    assert loaded.config == checkpoint.read_config(path)  # one flexip_model in the process: equal dataclasses
    keys = tuple(spec.key for spec in loaded.config.layers)
    assert keys == (
        "input_1_0",
        "input_3_0",
        "middle_0_0",
        "output_0_0",
        "output_1_0",
        "output_2_0",
        "output_3_0",
    )  # the tiny UNet's attn2 layers


def test_resume_continues_exactly_where_training_stopped(straight_run: Path, workspace: Path):
    config = _config(workspace, "resumed")
    # 8 pairs in batches of 4: an epoch is 2 steps, so step 21 stops in the middle of one
    train_cli(config, "--max-steps", str(STEPS // 2 + 1))
    middle = _state(workspace / "resumed" / f"smoke-{STEPS // 2 + 1:06d}.state.pt")["data"]
    assert middle["current_epoch"] == 11 and middle["dataset"], middle  # litdata's loader position, mid-epoch
    train_cli(config, "--resume", "--max-steps", str(STEPS))
    resumed = _state(workspace / "resumed" / f"smoke-{STEPS:06d}.state.pt")
    straight = _state(straight_run / f"smoke-{STEPS:06d}.state.pt")
    assert resumed["step"] == straight["step"] == STEPS
    assert resumed["position"] == straight["position"] == STEPS
    assert _placeless(resumed["data"]) == _placeless(straight["data"])  # each run packed into its own folder
    # same ops on the same data in the same order on one CPU thread: bit for bit
    for name, tensor in straight["adapter"].items():
        assert torch.equal(resumed["adapter"][name], tensor), name
    for key in ("exp_avg", "exp_avg_sq"):
        for index, entry in straight["optimizer"]["state"].items():
            assert torch.equal(resumed["optimizer"]["state"][index][key], entry[key]), (index, key)


def test_torchrun_two_cpu_ranks_stay_identical_and_rank_zero_writes_one_checkpoint(workspace: Path, straight_run: Path):
    # 2 ranks x batch 1 x 2 accumulated micro-batches: the gradient sync is skipped on the first one
    config = _config(
        workspace, "ddp", steps=4, train={"batch_size": 1, "grad_accumulation": 2}, output={"record_order": True}
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "flexip_train",
        "--config",
        str(config),
    ]
    # torchrun's own scratch folder (torchelastic_*) inside the workspace, which the module removes
    result = run_process(command, timeout=300, env=dict(trainer_env(), TMPDIR=str(workspace)))
    assert result.returncode == 0, result.stderr[-4000:]
    written = sorted(path.name for path in (workspace / "ddp").glob("*.safetensors"))
    assert written == ["smoke-000004.safetensors"]
    state = _state(workspace / "ddp" / "smoke-000004.state.pt")
    from flexip_host.distributed import weights_digest

    # each rank hashed its own weights after the last step; rank 0 saved its weights beside them
    assert state["world_size"] == 2
    assert state["rank_digests"] == [weights_digest(state["adapter"])] * 2
    assert state["position"] == 16  # 4 steps x 2 micro-batches x 2 ranks
    # the ranks split every epoch: 8 pairs, 4 to each rank, none to both
    seen = [[record["pairs"] for record in _log_file(workspace / "ddp" / f"order-rank{rank}.jsonl")] for rank in (0, 1)]
    assert [len(batches) for batches in seen] == [8, 8]
    for epoch in range(2):
        mine = [sorted(functools.reduce(operator.iadd, batches[epoch * 4 : (epoch + 1) * 4], [])) for batches in seen]
        assert not set(mine[0]) & set(mine[1]), mine
        assert sorted(mine[0] + mine[1]) == list(range(8)), mine


def test_feature_cache_is_reused_and_rebuilt_only_where_inputs_changed(straight_run: Path, workspace: Path):
    from flexip_train.config import load_config
    from flexip_train.data import PairImageSource, read_manifest
    from flexip_train.features import FeatureCache
    from flexip_train.pack import pack_manifest
    from flexip_train.shards import ShardPairs

    def stale(config_path: Path, shard_size: int = 256) -> list:
        config = load_config(config_path).replace("cache", shard_size=shard_size)
        pairs, problems = read_manifest(config.data.manifest)
        assert not problems
        folder = config.output.dir / "shards"
        pack_manifest(config.data.manifest, pairs, folder)  # what the trainer does first
        source = PairImageSource(
            ShardPairs(str(folder)),
            config.data.resolution,
            config.data.reference_resolution,
            config.data.augment,
            config.train.seed,
        )
        return FeatureCache(config, source, dino_resolution=224).stale()

    assert stale(workspace / "straight.toml") == []  # what the smoke run built is current
    data = workspace / "data"
    lines = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    shutil.copyfile(data / lines[5]["target"], data / "images" / "5_target_copy.png")
    lines[5]["target"] = "images/5_target_copy.png"  # same bytes in another file: the content is unchanged
    (data / "copied.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert stale(_config(workspace, "copied", data={"manifest": str(data / "copied.jsonl")})) == []
    lines[0]["caption"] = "a red circle, seen again"
    (data / "changed.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    changed = _config(workspace, "changed", data={"manifest": str(data / "changed.jsonl")})
    assert stale(changed) == [0]  # the one shard; the null conditions (empty prompt, black image) stay
    assert stale(changed, shard_size=4) == [0, 1]  # another layout: new shard files
    resized = _config(workspace, "resized", data={"resolution": 32})
    assert stale(resized) == [None, 0]  # a setting every shard depends on


def test_check_data_lists_every_bad_line(tmp_path: Path, capsys):
    manifest = write_pairs(tmp_path / "data", count=2)
    (tmp_path / "data" / "images" / "broken.png").write_bytes(b"not an image at all")
    good = manifest.read_text().splitlines()
    faults = [
        '{"target": "images/0_target.png", "caption": "a red circle", "kind": "invariant"',  # line 3: bad JSON
        '{"target": "images/missing.png", "caption": "a red circle", "kind": "invariant"}',  # line 4: no file
        '{"target": "images/broken.png", "caption": "a red circle", "kind": "invariant"}',  # line 5: unreadable
        '{"target": "images/0_target.png", "caption": "  ", "kind": "invariant"}',  # line 6: empty caption
        '{"target": "images/0_target.png", "caption": "a red circle", "kind": "invarient"}',  # line 7: bad kind
    ]
    manifest.write_text("\n".join(good + faults) + "\n")
    config = write_config(
        tmp_path / "train.toml",
        {
            "model": {"checkpoint": "base.safetensors", "clip_vision": "h.safetensors", "dino": "d.safetensors"},
            "data": {"manifest": str(manifest)},
            "output": {"dir": str(tmp_path / "out")},
        },
    )
    from flexip_train.cli import main

    assert main(["--config", str(config), "--check-data"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5, lines
    expected = {3: "not valid JSON", 4: "was not found", 5: "not a readable image", 6: "empty", 7: "kind 'invarient'"}
    for line, (number, words) in zip(lines, expected.items()):
        assert line.startswith(f"pairs.jsonl line {number}") and words in line, line
    # training refuses the same manifest before loading any model, naming the first bad line
    assert main(["--config", str(config)]) == 1
    error = capsys.readouterr().err.strip()
    # without --check-data images are not decoded up front: 4 of the 5 faults are found at once
    assert error.startswith("pairs.jsonl line 3 is not valid JSON") and "3 more problems" in error
    assert "--check-data" in error and error.count("\n") == 0


def test_missing_comfyui_is_reported_in_one_sentence_with_exit_2(workspace: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "no-comfyui"))
    from flexip_train.cli import main

    assert main(["--config", str(_config(workspace, "nocomfy"))]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "COMFYUI_PATH" in error and "no-comfyui" in error


def test_unknown_config_key_is_named(workspace: Path, capsys):
    from flexip_train.cli import main

    config = _config(workspace, "typo", train={"lr": 0.1})

    assert main(["--config", str(config)]) == 1
    assert "[train] has unknown key 'lr'" in capsys.readouterr().err


def _tiny_models(pack):
    from flexip_host.frozen_models import FrozenModels
    from tools.fixtures import tiny_clip_vision, tiny_dino, tiny_unet_patcher

    return FrozenModels(tiny_unet_patcher(), None, None, tiny_clip_vision(), tiny_dino(), "sd15")


def _call(model, x, sigma, context, **options):
    from flexip_train.objective import sampler_transformer_options

    transformer_options = sampler_transformer_options(model)
    transformer_options.update(cond_or_uncond=[0], sigmas=sigma, **options)
    return model.model.apply_model(x, sigma, c_crossattn=context, transformer_options=transformer_options)


def test_training_patch_computes_what_the_inference_nodes_compute(pack):
    from flexip_train.config import AdapterConfig
    from flexip_train.features import Encoders
    from flexip_train.trainable_adapter import build_adapter
    from flexip_train.training_patch import TRAINING_INPUTS, install_training_patch, subject_inputs

    models = _tiny_models(pack)
    adapter = build_adapter(models, pack, AdapterConfig(size="tiny"), seed=0)
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 64, 64, 3, generator=generator)
    x, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 768, generator=generator)
    sigma, gate = torch.tensor([3.0]), 0.7

    loaded = pack.nodes.bundles.LoadedFlexIP.wrap("trained", copy.deepcopy(adapter))
    (subject,) = pack.nodes.encode.FlexIPEncodeSubject().encode(
        loaded, models.clip_vision, reference, "average", dino=models.dino
    )
    (inference,) = pack.nodes.apply.FlexIPApply().apply(models.unet, loaded, subject, 1.0, gate, 0.0, 1.0)
    expected = _call(inference, x, sigma, context)

    training, _ = install_training_patch(pack, models.unet, adapter, torch.device("cpu"))
    clip, dino = Encoders(models, pack, adapter.config.dino_resolution).image(reference)
    actual = _call(training, x, sigma, context, **{TRAINING_INPUTS: subject_inputs(clip, dino, torch.tensor([gate]))})

    unpatched = _call(models.unet, x, sigma, context)
    assert (expected - unpatched).abs().max() > 1e-2  # the adapter term is far from negligible
    # float32, same ops; the per-sample tensor γ vs a Python float γ only reorders roundings
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    actual.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(pack):
    from flexip_train.config import AdapterConfig
    from flexip_train.objective import DenoisingLoss
    from flexip_train.trainable_adapter import build_adapter
    from flexip_train.training_patch import TRAINING_INPUTS, enable_gradient_checkpointing, install_training_patch

    models = _tiny_models(pack)
    adapter = build_adapter(models, pack, AdapterConfig(size="tiny"), seed=1)
    model, _ = install_training_patch(pack, models.unet, adapter, torch.device("cpu"))
    loss = DenoisingLoss(adapter, model, TRAINING_INPUTS, None)
    inputs = random_model_inputs(768, seed=1)

    def loss_and_gradients():
        adapter.zero_grad(set_to_none=True)
        value = loss(inputs)
        value.backward()
        return value.detach(), [p.grad.clone() for p in adapter.parameters()]

    plain, plain_grads = loss_and_gradients()
    assert enable_gradient_checkpointing(models.diffusion_model) > 0
    checkpointed, checkpointed_grads = loss_and_gradients()
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)  # the forward is the same computation
    for got, want in zip(checkpointed_grads, plain_grads):  # the recomputation may round differently
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_written_checkpoint_fits_the_base_checkpoint(tmp_path: Path):
    from flexip_model import checkpoint
    from tools.fixtures import sd15_checkpoint

    path = write_trained_checkpoint(sd15_checkpoint(), tmp_path, steps=1, pairs=2)
    config = checkpoint.validate(path)
    assert tuple(spec.key for spec in config.layers) == tuple(checkpoint.read_unet_cross_attention(sd15_checkpoint()))


def test_example_config_shows_the_defaults():
    from flexip_train.config import load_config
    from tests.support.assertions import assert_example_shows_defaults
    from tools.fixtures import REPO_ROOT

    config = load_config(REPO_ROOT / "flexip_train" / "train.example.toml")
    assert_example_shows_defaults(config, "flexip_train/train.example.toml")
