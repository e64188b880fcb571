"""Checkpoints: the FlexIP v1 file users load, and the trainer state beside it for --resume.

`<name>-<step>.safetensors` is a normal FlexIP checkpoint (EMA weights when EMA is on).
`<name>-<step>.state.pt` holds what resuming needs, as plain tensors, numbers and strings
(read back with `torch.load(weights_only=True)`, so it never runs code): the exact float32
weights, the EMA weights, optimizer and grad-scaler state, step, the data loader's position (litdata's
`StreamingDataLoader.state_dict()`), RNG states,
and one parameter digest per rank (equal digests: the ranks held identical weights).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch

from flexip_model import checkpoint
from flexip_model.adapter import FlexIPAdapter
from flexip_model.config import FlexIPConfig
from flexip_model.errors import FlexIPError
from flexip_model.safetensors_header import check_finite

STATE_FORMAT = 2  # 2: the data position is litdata's loader state
STATE_SUFFIX = ".state.pt"
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def checkpoint_path(directory: Path, name: str, step: int) -> Path:
    return directory / f"{name}-{step:06d}.safetensors"


def state_path(checkpoint_file: Path) -> Path:
    return checkpoint_file.with_name(checkpoint_file.name[: -len(".safetensors")] + STATE_SUFFIX)


def saved_checkpoints(directory: Path, name: str) -> list[tuple[int, Path]]:
    """(step, file) of every complete checkpoint (file and state both present), oldest first."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d+)\.safetensors$")
    found = []
    for path in directory.glob(f"{name}-*.safetensors") if directory.is_dir() else ():
        match = pattern.match(path.name)
        if match and state_path(path).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def rng_states() -> dict:
    python = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [python[0], list(python[1]), python[2]],
    }


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _atomic(path: Path, write) -> None:
    temp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def export_adapter(config: FlexIPConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> FlexIPAdapter:
    """A CPU FlexIPAdapter holding `weights` cast to `dtype` (built on meta: no second random init)."""
    with torch.device("meta"):
        adapter = FlexIPAdapter(config)
    adapter.load_state_dict({k: v.detach().to("cpu", dtype) for k, v in weights.items()}, strict=True, assign=True)
    return adapter.eval()


def save(
    directory: Path,
    name: str,
    step: int,
    config: FlexIPConfig,
    published: dict[str, torch.Tensor],
    save_dtype: str,
    state: dict,
) -> Path:
    """Write the FlexIP file and then its state (a checkpoint counts once both exist); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, name, step)
    adapter = export_adapter(config, published, SAVE_DTYPES[save_dtype])
    _atomic(path, lambda temp: checkpoint.save(temp, adapter))
    _atomic(state_path(path), lambda temp: torch.save({"format": STATE_FORMAT, **state}, temp))
    return path


def prune(directory: Path, name: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    for _, path in saved_checkpoints(directory, name)[:-keep_last]:
        state_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def find_resume(resume: str, directory: Path, name: str) -> Path:
    """The checkpoint `--resume` means: 'latest' in the output folder, or a given file (.safetensors or .state.pt)."""
    if resume == "latest":
        found = saved_checkpoints(directory, name)
        if not found:
            raise FlexIPError(
                f"--resume found no checkpoint {name}-<step>.safetensors with its {STATE_SUFFIX} in "
                f"{directory}: train without --resume first, or pass a checkpoint path."
            )
        return found[-1][1]
    path = Path(resume)
    if path.name.endswith(STATE_SUFFIX):
        path = path.with_name(path.name[: -len(STATE_SUFFIX)] + ".safetensors")
    if not state_path(path).is_file():
        raise FlexIPError(
            f"--resume {resume}: {state_path(path).name} was not found beside it; only checkpoints "
            "written by the trainer (with their state file) can be resumed."
        )
    return path


def load_state(path: Path, config: FlexIPConfig) -> dict:
    """Read the trainer state of checkpoint `path` (weights_only: plain data only) and check it fits."""
    name = state_path(path).name
    try:
        state = torch.load(state_path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file: say which and stop
        raise FlexIPError(
            f"{name} cannot be read ({type(error).__name__}): resume from an earlier checkpoint."
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise FlexIPError(
            f"{name} has trainer-state format {str(found)[:40]!r}, this trainer reads {STATE_FORMAT}: "
            "resume with the trainer version that wrote it."
        )
    if state.get("adapter_config") != config.to_json():
        raise FlexIPError(
            f"{path.name} was trained with another adapter config (models, sizes or gate mode): resume "
            "with the same [model] and [adapter] settings."
        )
    _check_fields(state, config, name)
    return state


def _refuse(name: str, what: str) -> None:
    raise FlexIPError(f"{name} has {what}: the state file is damaged, resume from an earlier checkpoint.")


def _check_weights(weights: object, expected: dict[str, torch.Size], name: str, field: str) -> None:
    if not isinstance(weights, dict) or set(weights) != set(expected):
        _refuse(name, f"{field} weights whose names differ from the adapter's")
    for key, shape in expected.items():
        tensor = weights[key]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.shape != shape:
            _refuse(name, f"{field} weight {key} that is not a float tensor of shape {list(shape)}")
    check_finite(weights, name)


def _check_fields(state: dict, config: FlexIPConfig, name: str) -> None:
    """Types and sizes of every field against the run's own adapter (built from the trusted config)."""
    for field, low, high in (("step", 0, 10**12), ("position", 0, 10**15), ("world_size", 1, 1 << 20)):
        value = state.get(field)
        if type(value) is not int or not low <= value <= high:
            _refuse(name, f"{field}={str(value)[:40]}, not a whole number in {low}..{high}")
    with torch.device("meta"):
        parameters = [tuple(p.shape) for p in FlexIPAdapter(config).parameters()]
        expected = {key: t.shape for key, t in FlexIPAdapter(config).state_dict().items()}
    _check_weights(state.get("adapter"), expected, name, "adapter")
    if state.get("ema") is not None:
        _check_weights(state["ema"], expected, name, "EMA")
    optimizer = state.get("optimizer")
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(optimizer.get("param_groups"), list)
    ):
        _refuse(name, "no optimizer state and parameter groups")
    for index, entry in optimizer["state"].items():
        if type(index) is not int or not 0 <= index < len(parameters) or not isinstance(entry, dict):
            _refuse(name, f"optimizer state for parameter {str(index)[:20]} of {len(parameters)}")
        for key, tensor in entry.items():
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) not in (parameters[index], ()):
                _refuse(name, f"optimizer {str(key)[:20]} for parameter {index} of the wrong size")
    data = state.get("data")
    if not isinstance(data, dict) or type(data.get("current_epoch")) is not int or data["current_epoch"] < 0:
        _refuse(name, "no data-loader position")
    if not isinstance(state.get("schedule"), dict) or not isinstance(state.get("scaler"), (dict, type(None))):
        _refuse(name, "no learning-rate schedule or grad-scaler state")
    rng = state.get("rng")
    if (
        not isinstance(rng, dict)
        or not isinstance(rng.get("torch"), torch.Tensor)
        or rng["torch"].numel() > 1 << 16
        or not isinstance(rng.get("cuda"), list)
        or not isinstance(rng.get("python"), list)
        or len(rng["python"]) != 3
        or not isinstance(rng["python"][1], list)
        or len(rng["python"][1]) != 625
    ):
        _refuse(name, "random-number states that are not those of torch and Python")
