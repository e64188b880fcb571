"""The smoke training setup the trainer, evaluation and server tests share, and a ready-made trained checkpoint.

Smoke config: the generated SD1.5 checkpoint's text encoder and TAESD VAE, the tiny in-process
UNet and image encoders of tools/fixtures (built through the config's `*_factory` keys), a
tiny-size adapter, 8 synthetic pairs at 64 px, the feature cache, CPU, float32.

`write_trained_checkpoint(base_checkpoint, work_dir)` trains a few steps against a given
checkpoint's own UNet and returns the FlexIP file (for server runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.synthetic import write_config, write_pairs
from tools.fixtures import REPO_ROOT, comfyui_path, sd15_checkpoint
from tools.fixtures.tiny import TINY_FACTORIES


def smoke_sections(manifest: Path, output: Path, cache: Path, steps: int) -> dict[str, dict]:
    """The smoke config as {section: {key: value}}; tests change single keys before writing it."""
    return {
        "model": {"checkpoint": str(sd15_checkpoint()), **TINY_FACTORIES},
        "adapter": {"size": "tiny"},
        "data": {"manifest": str(manifest), "resolution": 64, "num_workers": 0},
        "cache": {"enabled": True, "dir": str(cache), "variants": 2},
        "train": {
            "seed": 0,
            "batch_size": 4,
            "max_steps": steps,
            "learning_rate": 1e-3,
            "device": "cpu",
            "mixed_precision": "no",
        },
        "output": {
            "dir": str(output),
            "name": "smoke",
            "checkpoint_every": 1000,
            "eval_every": 0,
            "log_every": 5,
            "eval_pairs": 8,
            "eval_timesteps": 4,
            "progress": False,
        },
    }


def trainer_env() -> dict[str, str]:
    # one thread per process: on a small shared CPU, PyTorch's default thread pool oversubscribes it
    return dict(os.environ, COMFYUI_PATH=str(comfyui_path()), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_process(command: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `command` from the repo root in its own process group; on timeout the group is killed by PID."""
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env or trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command)} ran past {timeout} s:\n{stderr[-4000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def train_cli(config: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m flexip_train --config CONFIG ...`; asserts exit 0 with the log tail in the message."""
    result = run_process([sys.executable, "-m", "flexip_train", "--config", str(config), *extra], timeout)
    assert result.returncode == 0, f"trainer exit {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def write_trained_checkpoint(
    base_checkpoint: Path,
    work_dir: Path,
    clip_vision: Path | None = None,
    dino: Path | None = None,
    steps: int = 2,
    pairs: int = 4,
) -> Path:
    """Train a tiny-size FlexIP adapter for `steps` steps against `base_checkpoint`'s own UNet; returns the file.

    Encoders: the given CLIP-H / DINOv2-L files (the checkpoint then fits a server that loads
    them; slow on a CPU, they are full size), else the tiny in-process test encoders.
    Synthetic pairs at 64 px, no feature cache (the live encoding path).
    """
    work_dir = Path(work_dir)
    manifest = write_pairs(work_dir / "data", count=pairs)
    model = {"checkpoint": str(base_checkpoint)}
    for key, path in (("clip_vision", clip_vision), ("dino", dino)):
        model.update({key: str(path)} if path else {f"{key}_factory": TINY_FACTORIES[f"{key}_factory"]})
    sections = smoke_sections(manifest, work_dir / "out", work_dir / "cache", steps)
    sections["model"] = model
    sections["cache"] = {"enabled": False}
    sections["train"]["batch_size"] = 2
    sections["output"].update(eval_pairs=0, name="flexip_trained")
    config = write_config(work_dir / "train.toml", sections)
    train_cli(config, timeout=600)
    return work_dir / "out" / f"flexip_trained-{steps:06d}.safetensors"


__all__ = [
    "run_process",
    "smoke_sections",
    "train_cli",
    "trainer_env",
    "write_config",
    "write_pairs",
    "write_trained_checkpoint",
]
