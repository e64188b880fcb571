"""`python -m flexip_model init|inspect`: valid seeded files, layer lists from SD checkpoints, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flexip_model import checkpoint
from flexip_model.cli import main
from tests.support.assertions import assert_one_sentence

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "model.diffusion_model."
# (key in the SD checkpoint, FlexIP layer key, inner dim) for a few real attn2 locations
SD15_ATTN2 = [
    ("input_blocks.1.1.transformer_blocks.0", "input_1_0", 320),
    ("middle_block.1.transformer_blocks.0", "middle_0_0", 1280),
    ("output_blocks.11.1.transformer_blocks.0", "output_11_0", 320),
]
SDXL_ATTN2 = [
    ("output_blocks.5.1.transformer_blocks.0", "output_5_0", 640),
    ("input_blocks.4.1.transformer_blocks.1", "input_4_1", 640),
    ("middle_block.1.transformer_blocks.9", "middle_0_9", 1280),
]


def _sd_checkpoint(path: Path, attn2: list, context_dim: int) -> dict[str, torch.Tensor]:
    """A small safetensors file with real SD key names: the attn2 layers plus unrelated tensors."""
    generator = torch.Generator().manual_seed(7)
    tensors = {}
    for stem, _, inner in attn2:
        for name in ("to_k", "to_v"):
            tensors[f"{PREFIX}{stem}.attn2.{name}.weight"] = torch.randn(inner, context_dim, generator=generator).half()
        tensors[f"{PREFIX}{stem}.attn1.to_k.weight"] = torch.zeros(inner, inner).half()  # self-attention: ignored
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(path))
    return tensors


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_init_then_inspect_round_trips_the_sd15_layer_list(tmp_path, capsys):
    out = tmp_path / "sd15_tiny.safetensors"
    assert _run(["init", "--base", "sd15", "--tiny", "--seed", "1", "--out", str(out)], capsys)[0] == 0
    code, text, _ = _run(["inspect", str(out)], capsys)
    assert code == 0
    assert "valid FlexIP checkpoint" in text and "base: sd15" in text and "layers (16):" in text
    assert "input_1_0: inner_dim 320, heads 8" in text and "output_11_0: inner_dim 320, heads 8" in text
    assert "layer projections: 38,338,560" in text  # full-width projections even when tiny (they match the UNet)


def test_init_from_sdxl_checkpoint_takes_its_layers_and_kv_weights(tmp_path, capsys):
    base = tmp_path / "sdxl_base.safetensors"
    source = _sd_checkpoint(base, SDXL_ATTN2, 2048)
    out = tmp_path / "sdxl_tiny.safetensors"
    argv = [
        "init",
        "--base",
        "sdxl",
        "--tiny",
        "--gate-mode",
        "token",
        "--layers-from",
        str(base),
        "--seed",
        "2",
        "--out",
        str(out),
    ]
    assert _run(argv, capsys)[0] == 0
    config = checkpoint.validate(out)
    # ComfyUI's order (input, middle, output), SDXL's 64-channel heads
    assert [(s.key, s.inner_dim, s.heads) for s in config.layers] == [
        ("input_4_1", 640, 10),
        ("middle_0_9", 1280, 20),
        ("output_5_0", 640, 10),
    ]
    assert (config.base, config.context_dim, config.gate_mode) == ("sdxl", 2048, "token")
    tensors = load_file(str(out))
    for stem, key, _ in SDXL_ATTN2:
        for name in ("to_k", "to_v"):
            expected = source[f"{PREFIX}{stem}.attn2.{name}.weight"].float()
            assert torch.equal(tensors[f"layers.{key}.joint.{name}.weight"], expected)
    code, text, _ = _run(["inspect", str(out)], capsys)
    assert code == 0 and "base: sdxl" in text and "layers (3):" in text


def test_init_is_deterministic_per_seed(tmp_path, capsys):
    base = tmp_path / "sd15_base.safetensors"
    source = _sd_checkpoint(base, SD15_ATTN2, 768)
    files = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        files[name] = tmp_path / f"{name}.safetensors"
        argv = [
            "init",
            "--base",
            "sd15",
            "--tiny",
            "--layers-from",
            str(base),
            "--seed",
            str(seed),
            "--out",
            str(files[name]),
        ]
        assert _run(argv, capsys)[0] == 0
    a, b, c = (load_file(str(files[name])) for name in "abc")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["preservation.queries"], c["preservation.queries"])
    middle_v = source[f"{PREFIX}middle_block.1.transformer_blocks.0.attn2.to_v.weight"].float()
    assert torch.equal(a["layers.middle_0_0.pers.to_v.weight"], middle_v)
    keys = tuple(spec.key for spec in checkpoint.read_config(files["a"]).layers)
    assert keys == ("input_1_0", "middle_0_0", "output_11_0")


def test_layers_from_a_file_without_unet_attention_is_a_clear_error(tmp_path, capsys):
    base = tmp_path / "vae_only.safetensors"
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4)}, str(base))
    argv = ["init", "--base", "sd15", "--layers-from", str(base), "--out", str(tmp_path / "x.safetensors")]
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert_one_sentence(err.strip(), "vae_only.safetensors", "cross-attention")


def test_layers_from_a_checkpoint_of_the_other_base_is_a_clear_error(tmp_path, capsys):
    base = tmp_path / "sd15_base.safetensors"
    _sd_checkpoint(base, SD15_ATTN2, 768)
    argv = ["init", "--base", "sdxl", "--layers-from", str(base), "--out", str(tmp_path / "x.safetensors")]
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert_one_sentence(err.strip(), "sd15_base.safetensors", "--base")


def test_module_entry_point_runs_from_the_repo_root(tmp_path):
    base = tmp_path / "sd15_base.safetensors"
    _sd_checkpoint(base, SD15_ATTN2, 768)
    out = tmp_path / "small.safetensors"
    assert main(["init", "--base", "sd15", "--tiny", "--layers-from", str(base), "--out", str(out)]) == 0
    good = subprocess.run(
        [sys.executable, "-m", "flexip_model", "inspect", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert "layers (3):" in good.stdout
    # the exit status for a bad file is checked in-process: a second interpreter costs seconds


def test_inspect_exits_1_with_one_sentence_for_a_pickle_file(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x04N.")
    code, out, err = _run(["inspect", str(bad)], capsys)
    assert code == 1 and out == ""
    assert_one_sentence(err.strip(), "bad.ckpt", "pickle")
