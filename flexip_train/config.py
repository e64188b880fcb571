"""The training config: a TOML file read into frozen dataclasses, every key checked up front.

Paths in the file are relative to the file itself. See flexip_train/train.example.toml for every key
with its default and meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexip_host.distributed import DEVICES
from flexip_host.model_section import ModelConfig, check_model_section
from flexip_host.toml_files import read_toml
from flexip_model.errors import FlexIPError
from flexip_model.gate_sweep import MAX_SWEEP_GAMMAS
from flexip_model.mapping import Rules, Source, dataclass_from_mapping
from flexip_model.vocabulary import GATE_MODES

PRECISIONS = ("bf16", "fp16", "no")
SAVE_DTYPES = ("fp16", "bf16", "fp32")
ADAPTER_SIZES = ("full", "tiny")
# Upper ends of the keys that choose sizes (tensors, processes, files): far above any real run,
# low enough that a typo (an extra digit or three) is an error, not an out-of-memory crash.
SIZE_LIMITS = {
    ("data", "resolution"): 4096,
    ("data", "reference_resolution"): 4096,
    ("data", "num_workers"): 256,
    ("cache", "variants"): 1024,
    ("cache", "shard_size"): 65536,
    ("train", "batch_size"): 4096,
    ("train", "grad_accumulation"): 4096,
    ("output", "eval_pairs"): 100_000,
    ("output", "eval_timesteps"): 1000,
    ("samples", "pairs"): 64,
    ("samples", "steps"): 1000,
}


@dataclass(frozen=True)
class AdapterConfig:
    """What is trained: the FlexIP adapter's size and gate mode, or an existing file to continue from."""

    size: str = "full"
    gate_mode: str = "output"
    init_from: Path | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """How invariant pairs turn the target into a reference the model cannot copy pixel for pixel."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.5, 1.0)
    jitter: float = 0.2
    mask_margin: float = 0.1


def is_url(location: str) -> bool:
    """Whether a [data] shards value is streamed through litdata's downloaders (object stores, and
    litdata's `local:` form of a folder read like one) rather than read in place."""
    return "://" in location or location.startswith("local:")


@dataclass(frozen=True)
class DataConfig:
    """Where the pairs are (a JSONL manifest, packed by the trainer, or a pack's folder or URL) and how
    they become training inputs."""

    manifest: Path | None = None
    shards: str = ""
    stream_cache: Path | None = None  # where chunks streamed from a URL are kept (default: litdata's)
    variant_fraction: float | None = None
    resolution: int = 512
    reference_resolution: int = 224
    invariant_gate: tuple[float, float] = (0.7, 1.0)
    variant_gate: tuple[float, float] = (0.0, 0.3)
    text_dropout: float = 0.05
    image_dropout: float = 0.05
    both_dropout: float = 0.05
    num_workers: int = 4
    augment: AugmentConfig = AugmentConfig()


@dataclass(frozen=True)
class CacheConfig:
    """Encoder outputs and target latents precomputed once into safetensors shards."""

    enabled: bool = False
    dir: Path | None = None
    variants: int = 4
    shard_size: int = 256


@dataclass(frozen=True)
class OptimConfig:
    seed: int = 0
    batch_size: int = 4
    grad_accumulation: int = 1
    max_steps: int = 10000
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0
    device: str = "auto"
    deterministic: bool = False
    timeout_minutes: int = 60


@dataclass(frozen=True)
class OutputConfig:
    dir: Path
    name: str = "flexip_sd15"
    checkpoint_every: int = 1000
    keep_last: int = 0
    save_dtype: str = "fp16"
    log_every: int = 10
    eval_every: int = 500
    eval_pairs: int = 8
    eval_timesteps: int = 4
    progress: bool = True
    record_order: bool = False


@dataclass(frozen=True)
class SamplesConfig:
    """A grid of images made with the inference nodes every `every` steps (0 = never)."""

    every: int = 0
    pairs: int = 2
    gates: tuple[float, ...] = (0.0, 0.5, 1.0)
    steps: int = 20
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    negative: str = ""
    strength: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    source: Path
    model: ModelConfig
    data: DataConfig
    output: OutputConfig
    adapter: AdapterConfig = AdapterConfig()
    cache: CacheConfig = CacheConfig()
    train: OptimConfig = OptimConfig()
    samples: SamplesConfig = SamplesConfig()

    @property
    def cache_dir(self) -> Path:
        return self.cache.dir or self.output.dir / "feature_cache"

    def replace(self, section: str, **values: Any) -> TrainConfig:
        """A copy with some keys of one section changed (CLI overrides, tests)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


def load_config(path: str | Path) -> TrainConfig:
    """Read and check a TOML training config; FlexIPError naming the file and key on any problem."""
    path = Path(path)
    raw = read_toml(path, "training config")
    base = path.resolve().parent
    rules = Rules(path=lambda text: (base / Path(text).expanduser()).resolve())
    source = Source(path.name, "see flexip_train/train.example.toml for every key and its type")
    config = dataclass_from_mapping(TrainConfig, raw, source, rules, given={"source": path.resolve()})
    shards = config.data.shards
    if shards and not is_url(shards):  # a local pack, relative to the file like every other path
        config = config.replace("data", shards=str(rules.path(shards)))
    _validate(config, path.name)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise FlexIPError(message)


def _validate(config: TrainConfig, name: str) -> None:
    model, data, train, out, cache, samples = (
        config.model,
        config.data,
        config.train,
        config.output,
        config.cache,
        config.samples,
    )
    check_model_section(model, name)
    _check(config.adapter.size in ADAPTER_SIZES, f"{name} [adapter] size must be one of {ADAPTER_SIZES}.")
    _check(config.adapter.gate_mode in GATE_MODES, f"{name} [adapter] gate_mode must be one of {GATE_MODES}.")
    _check(
        (data.manifest is None) != (not data.shards),
        f"{name} [data] needs either manifest (a JSONL file, packed for you) or shards (a folder or URL written "
        "by `python -m flexip_train pack`), not both.",
    )
    _check(
        data.variant_fraction is None or 0.0 <= data.variant_fraction <= 1.0,
        f"{name} [data] variant_fraction is the share of variant pairs per batch, between 0 and 1 (e.g. 0.1).",
    )
    _check(
        data.resolution % 8 == 0 and data.resolution >= 16,
        f"{name} [data] resolution {data.resolution} must be a multiple of 8 (the VAE's factor), e.g. 512.",
    )
    _check(data.reference_resolution >= 14, f"{name} [data] reference_resolution must be at least 14 px.")
    for key in ("invariant_gate", "variant_gate"):
        low, high = getattr(data, key)
        _check(0.0 <= low <= high <= 1.0, f"{name} [data] {key} must be [low, high] with 0 <= low <= high <= 1.")
    dropout = (data.text_dropout, data.image_dropout, data.both_dropout)
    _check(
        all(p >= 0 for p in dropout) and sum(dropout) <= 1.0,
        f"{name} [data] text_dropout + image_dropout + both_dropout must be probabilities summing to at most 1.",
    )
    _check(data.num_workers >= 0, f"{name} [data] num_workers must be 0 or more.")
    low, high = data.augment.scale
    _check(0.0 < low <= high <= 1.0, f"{name} [data.augment] scale must be [low, high] with 0 < low <= high <= 1.")
    _check(0.0 <= data.augment.flip <= 1.0, f"{name} [data.augment] flip is a probability between 0 and 1.")
    _check(0.0 <= data.augment.jitter < 1.0, f"{name} [data.augment] jitter must be in [0, 1).")
    _check(cache.variants >= 1 and cache.shard_size >= 1, f"{name} [cache] variants and shard_size must be at least 1.")
    for key in ("batch_size", "grad_accumulation", "max_steps", "timeout_minutes"):
        _check(getattr(train, key) >= 1, f"{name} [train] {key} must be at least 1.")
    _check(
        train.learning_rate > 0 and train.weight_decay >= 0 and train.warmup_steps >= 0,
        f"{name} [train] learning_rate must be positive, weight_decay and warmup_steps 0 or more.",
    )
    _check(0.0 <= train.ema_decay < 1.0, f"{name} [train] ema_decay must be in [0, 1) (0 turns EMA off).")
    _check(train.mixed_precision in PRECISIONS, f"{name} [train] mixed_precision must be one of {PRECISIONS}.")
    _check(train.device in DEVICES, f"{name} [train] device must be one of {DEVICES}.")
    _check(out.save_dtype in SAVE_DTYPES, f"{name} [output] save_dtype must be one of {SAVE_DTYPES}.")
    for key in ("checkpoint_every", "log_every", "eval_timesteps"):
        _check(getattr(out, key) >= 1, f"{name} [output] {key} must be at least 1.")
    _check(
        out.eval_every >= 0 and out.eval_pairs >= 0 and out.keep_last >= 0,
        f"{name} [output] eval_every, eval_pairs and keep_last must be 0 or more.",
    )
    _check(
        out.name and "/" not in out.name, f"{name} [output] name must be a plain file name stem, e.g. 'flexip_sd15'."
    )
    _check(
        samples.every >= 0 and samples.pairs >= 1 and samples.steps >= 1 and samples.gates,
        f"{name} [samples] every must be 0 or more, pairs and steps at least 1, gates non-empty.",
    )
    _check(all(0.0 <= g <= 1.0 for g in samples.gates), f"{name} [samples] gates must lie in [0, 1].")
    _check(len(samples.gates) <= MAX_SWEEP_GAMMAS, f"{name} [samples] gates lists more than {MAX_SWEEP_GAMMAS} values.")
    for (section, key), high in SIZE_LIMITS.items():
        value = getattr(getattr(config, section), key)
        _check(value <= high, f"{name} [{section}] {key} = {value} is over {high}: use a smaller value.")
