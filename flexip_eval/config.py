"""The evaluation config: a TOML file read into frozen dataclasses, every key checked up front.

Paths in the file are relative to the file itself. See flexip_eval/eval.example.toml for every key
with its default and meaning. [model] is the section the training config holds too (flexip_host.model_section),
so a training config's [model] block can be pasted as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flexip_host.distributed import DEVICES
from flexip_host.model_section import ModelConfig, check_model_section
from flexip_host.toml_files import read_toml
from flexip_model.errors import FlexIPError
from flexip_model.gate_schedule import INTERPOLATIONS, parse_keyframes
from flexip_model.gate_sweep import MAX_SWEEP_GAMMAS
from flexip_model.mapping import Rules, Source, dataclass_from_mapping

from .judges import JudgesConfig

KINDS = ("flexip", "ip_adapter", "base")
# a method name becomes a folder name: letters, digits, '.', '_', '-' and spaces (kept readable)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")
# Upper ends of the keys that choose sizes: far above any real run, low enough that a typo
# (an extra digit or three) is an error, not an hours-long or out-of-memory run.
SIZE_LIMITS = {"steps": 1000, "resolution": 4096, "batch_size": 256}
MAX_SEEDS = 64
MAX_METHODS = 64


@dataclass(frozen=True)
class BenchmarkConfig:
    """A DreamBench-style folder: one folder of images per subject and a prompts file (flexip_eval/benchmark.py)."""

    folder: Path
    prompts: str = "prompts.toml"  # file name inside `folder`
    subjects: tuple[str, ...] = ()  # a subset of the subjects, by folder name; empty = all
    prompts_per_subject: int = 0  # the first N prompts of each subject's list; 0 = all
    condition_images: int = 1  # the subject's first N images (sorted by name) condition the adapters; 0 = all


@dataclass(frozen=True)
class GenerationConfig:
    """How every image is sampled: the same settings for every method, so only the adapter differs."""

    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int = 30
    cfg: float = 7.5
    sampler: str = "euler"
    scheduler: str = "normal"
    resolution: int = 512
    negative: str = ""
    strength: float = 1.0  # FlexIPApply's strength s for the adapter methods
    batch_size: int = 4  # images (seeds of one prompt) per sampling call
    device: str = "auto"
    timeout_minutes: int = 60  # how long ranks wait for each other under torchrun


@dataclass(frozen=True)
class MethodConfig:
    """One method of the comparison; each γ of `gammas` (or the one `schedule`) is a row of the table."""

    name: str
    kind: str
    file: Path | None = None  # kind "flexip": the FlexIP checkpoint
    preservation: Path | None = None  # kind "ip_adapter": the IP-Adapter file weighted by γ
    personalization: Path | None = None  # kind "ip_adapter": the file weighted by 1 − γ
    gammas: tuple[float, ...] = ()  # the constant gates γ to evaluate, one table row each
    schedule: str = ""  # instead of gammas: FlexIPGateSchedule keyframes ('progress:gamma, ...'), one row
    interpolation: str = "linear"

    @property
    def gates(self) -> tuple[float | None, ...]:
        """The table rows of this method: its γ values; one row (None) for a schedule or the base model."""
        return (None,) if self.kind == "base" or self.schedule else self.gammas


@dataclass(frozen=True)
class OutputConfig:
    dir: Path
    progress: bool = True  # a progress bar with ETA on rank 0


@dataclass(frozen=True)
class EvalConfig:
    source: Path
    benchmark: BenchmarkConfig
    model: ModelConfig
    methods: tuple[MethodConfig, ...]
    judges: JudgesConfig
    output: OutputConfig
    generation: GenerationConfig = GenerationConfig()


def load_config(path: str | Path) -> EvalConfig:
    """Read and check a TOML evaluation config; FlexIPError naming the file and key on any problem."""
    path = Path(path)
    raw = read_toml(path, "evaluation config")
    base = path.resolve().parent

    def count(label: str, key: str, value: object) -> None:  # bounded before any method is read
        if key == "methods" and isinstance(value, list) and len(value) > MAX_METHODS:
            raise FlexIPError(f"{label} lists {len(value)} methods, over {MAX_METHODS}: split them over several runs.")

    rules = Rules(path=lambda text: (base / Path(text).expanduser()).resolve(), check=count)
    source = Source(path.name, "see flexip_eval/eval.example.toml for every key and its type")
    config = dataclass_from_mapping(EvalConfig, raw, source, rules, given={"source": path.resolve()})
    _validate(config, path.name)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise FlexIPError(message)


def _validate(config: EvalConfig, name: str) -> None:
    bench, model, gen = config.benchmark, config.model, config.generation
    check_model_section(model, name)
    _check(
        bool(bench.prompts) and "/" not in bench.prompts,
        f"{name} [benchmark] prompts must be a file name inside the benchmark folder, e.g. 'prompts.toml'.",
    )
    _check(
        bench.prompts_per_subject >= 0 and bench.condition_images >= 0,
        f"{name} [benchmark] prompts_per_subject and condition_images must be 0 (all) or more.",
    )
    _check(
        bool(gen.seeds) and len(gen.seeds) <= MAX_SEEDS and len(set(gen.seeds)) == len(gen.seeds),
        f"{name} [generation] seeds must list 1 to {MAX_SEEDS} different whole numbers, e.g. [0, 1, 2, 3].",
    )
    _check(all(0 <= seed < 2**63 for seed in gen.seeds), f"{name} [generation] seeds must lie in [0, 2^63).")
    _check(
        gen.resolution % 8 == 0 and gen.resolution >= 16,
        f"{name} [generation] resolution {gen.resolution} must be a multiple of 8 (the VAE's factor), e.g. 512.",
    )
    _check(
        gen.steps >= 1 and gen.batch_size >= 1 and gen.timeout_minutes >= 1,
        f"{name} [generation] steps, batch_size and timeout_minutes must be at least 1.",
    )
    _check(gen.cfg >= 0 and gen.strength >= 0, f"{name} [generation] cfg and strength must be 0 or more.")
    _check(gen.device in DEVICES, f"{name} [generation] device must be one of {DEVICES}.")
    for key, high in SIZE_LIMITS.items():
        value = getattr(gen, key)
        _check(value <= high, f"{name} [generation] {key} = {value} is over {high}: use a smaller value.")
    _check(bool(config.methods), f'{name} has no [[methods]]: add at least one, e.g. kind = "base".')
    folders = set()
    for index, method in enumerate(config.methods):
        _validate_method(method, f"{name} [[methods]] {index + 1} ({method.name!r})")
        folder = method.name.lower()
        _check(
            folder not in folders,
            f"{name} [[methods]] name {method.name!r} is used twice (names are folder "
            "names, compared without case): give each method its own name.",
        )
        folders.add(folder)


def _validate_method(method: MethodConfig, where: str) -> None:
    _check(
        bool(NAME.match(method.name)),
        f"{where} name must be 1-64 letters, digits, spaces, '.', '_' or '-', "
        "starting with a letter or digit (it names the image folder).",
    )
    _check(method.kind in KINDS, f"{where} kind must be one of {KINDS}.")
    files = {"flexip": ("file",), "ip_adapter": ("preservation", "personalization"), "base": ()}[method.kind]
    for key in ("file", "preservation", "personalization"):
        value = getattr(method, key)
        if key in files:
            _check(value is not None, f"{where} lacks {key}: give the .safetensors (or .bin) file's path.")
            _check(value.is_file(), f"{where} {key} {value} was not found: give the path of an existing file.")
        else:
            _check(value is None, f"{where} has {key}, which a {method.kind!r} method does not use: remove it.")
    if method.kind == "base":
        _check(
            not method.schedule and not method.gammas,
            f"{where} is the base model, which has no gate: remove gammas and schedule.",
        )
        return
    _check(
        bool(method.schedule) != bool(method.gammas),
        f"{where} needs either gammas (a list of constant gates) or schedule (keyframes), not both.",
    )
    _check(
        len(method.gammas) <= MAX_SWEEP_GAMMAS and len(set(method.gammas)) == len(method.gammas),
        f"{where} gammas must list up to {MAX_SWEEP_GAMMAS} different values, e.g. [0.25, 0.5, 0.75, 1.0].",
    )
    _check(all(0.0 <= gamma <= 1.0 for gamma in method.gammas), f"{where} gammas must lie in [0, 1].")
    _check(method.interpolation in INTERPOLATIONS, f"{where} interpolation must be one of {INTERPOLATIONS}.")
    if method.schedule:
        parse_keyframes(method.schedule, f"{where} schedule")
