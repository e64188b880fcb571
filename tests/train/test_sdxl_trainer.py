"""Trainer layer, SDXL: the generated SDXL checkpoint's text encoders (CLIP-L + bigG) and TAESD-XL,
its own UNet or a tiny SDXL UNet, tiny image encoders, CPU, float32.

SDXL's UNet also reads a `y` vector (bigG pooled text + size/crop embeddings); the trainer has
ComfyUI's `model_base.SDXL.extra_conds` build it, as the sampler does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.support.smoke import TINY_FACTORIES, smoke_sections, train_cli, write_trained_checkpoint
from tests.support.synthetic import random_model_inputs, write_config, write_pairs
from tools.fixtures import sdxl_checkpoint

pytestmark = pytest.mark.train

STEPS = 4


def test_sdxl_smoke_run_with_the_feature_cache_writes_a_valid_sdxl_file(tmp_path: Path):
    from flexip_model import checkpoint

    sections = smoke_sections(write_pairs(tmp_path / "data"), tmp_path / "out", tmp_path / "cache", STEPS)
    sections["model"] = {
        "checkpoint": str(sdxl_checkpoint()),
        **TINY_FACTORIES,
        "unet_factory": "tools.fixtures.tiny_sdxl:tiny_sdxl_unet_patcher",
    }
    sections["output"]["name"] = "smoke_sdxl"
    train_cli(write_config(tmp_path / "sdxl.toml", sections), timeout=900)

    config = checkpoint.validate(tmp_path / "out" / f"smoke_sdxl-{STEPS:06d}.safetensors")
    assert (config.base, config.context_dim, len(config.layers)) == ("sdxl", 2048, 70)  # tiny SDXL: all 70 layers
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r] + [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(losses) == 3 and all(loss == loss and loss < float("inf") for loss in losses)  # 1 log, 2 evals


def test_sdxl_run_on_the_checkpoints_own_unet_writes_a_file_for_that_unet(tmp_path: Path):
    from flexip_model import checkpoint

    path = write_trained_checkpoint(sdxl_checkpoint(), tmp_path, steps=1, pairs=2)  # live encoding, no cache
    config = checkpoint.validate(path)
    base = checkpoint.read_unet_cross_attention(sdxl_checkpoint())
    # the 31 layers of the generated UNet
    assert config.base == "sdxl" and tuple(spec.key for spec in config.layers) == tuple(base)
    assert all(config.layer(key).inner_dim == to_k.shape[0] for key, (to_k, _) in base.items())


def test_sdxl_unet_gets_the_pooled_text_and_size_embeddings_comfyui_builds(pack):
    from flexip_train.objective import model_conditions
    from tools.fixtures.tiny_sdxl import tiny_sdxl_unet_patcher

    base = tiny_sdxl_unet_patcher().model
    inputs = random_model_inputs(2048, pooled_dim=1280)
    conditions = model_conditions(base, inputs)
    assert set(conditions) == {"c_crossattn", "y"}
    assert torch.equal(conditions["c_crossattn"], inputs.context)
    # 64 px targets, uncropped: what CLIPTextEncodeSDXL gives with width = height = target size = 64, crop 0
    expected = base.encode_adm(
        pooled_output=inputs.pooled, width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64
    )
    assert conditions["y"].shape == (2, 2816) and torch.equal(conditions["y"], expected)


def test_size_conditioning_of_a_fitted_target_is_its_original_size_and_crop_offset():
    from flexip_train.data import size_conditions

    # short side to 32 px: 90×60 becomes 48×32, centre-cropped 8 px from the top; 60×90 8 px from the left
    assert size_conditions(90, 60, 32).tolist() == [90, 60, 8, 0]
    assert size_conditions(60, 90, 32).tolist() == [60, 90, 0, 8]
    assert size_conditions(64, 64, 64).tolist() == [64, 64, 0, 0]


def test_sdxl_size_embeddings_are_each_targets_own_original_size_and_crop(pack):
    """As SDXL itself was trained: every row of y embeds its own target's original size and crop offset."""
    from flexip_train.objective import model_conditions
    from tools.fixtures.tiny_sdxl import tiny_sdxl_unet_patcher

    base = tiny_sdxl_unet_patcher().model
    sizes = [[300, 200, 16, 0], [64, 64, 0, 0]]  # a 300×200 photo fitted to 64 px, and an uncropped 64 px one
    inputs = random_model_inputs(2048, pooled_dim=1280, sizes=sizes)
    y = model_conditions(base, inputs)["y"]
    for row, (height, width, top, left) in enumerate(sizes):
        expected = base.encode_adm(
            pooled_output=inputs.pooled[row : row + 1],
            width=width,
            height=height,
            crop_w=left,
            crop_h=top,
            target_width=64,
            target_height=64,
        )
        assert torch.equal(y[row : row + 1], expected), f"row {row}"
    uncropped = model_conditions(base, dataclasses.replace(inputs, sizes=None))["y"]
    # bit-for-bit by construction: the embedder sees one size per call in both, the pooled row is copied
    assert torch.equal(y[1], uncropped[1]) and not torch.equal(y[0], uncropped[0])


def test_sd15_unet_gets_only_the_text_context(pack):
    from flexip_train.objective import model_conditions
    from tools.fixtures.tiny import tiny_unet_patcher

    inputs = random_model_inputs(768, batch=1, pooled_dim=768)
    assert set(model_conditions(tiny_unet_patcher().model, inputs)) == {"c_crossattn"}
