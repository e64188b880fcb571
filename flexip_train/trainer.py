"""The training loop: setup, optimizer steps with accumulation, evaluation, logging, checkpoints.

The data order is litdata's seeded shuffle, and its loader position is saved with every
checkpoint; every other random draw comes from a generator keyed by (seed, micro-batch
position, rank) or (seed, epoch, pair): the augmentation, γ, dropout, timesteps and noise
depend only on where training is, never on what ran before. Resuming therefore reproduces
the uninterrupted run exactly (on the deterministic CPU path bit for bit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from flexip_host import distributed
from flexip_host.bootstrap import import_comfy, load_pack
from flexip_host.comfy_models import load_fully
from flexip_host.frozen_models import load_frozen, resolve_factories
from flexip_model.errors import FlexIPError

from . import state
from .config import TrainConfig
from .data import KINDS, PairImageSource, keyed_generator, read_manifest
from .features import BadPair, Encoders, FeatureCache, Features, PairItems, check_cache_complete, collate
from .objective import DenoisingLoss, evaluation_inputs, training_inputs
from .shards import ShardPairs
from .trainable_adapter import build_adapter
from .training_patch import TRAINING_INPUTS, enable_gradient_checkpointing, install_training_patch

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
_UNET_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


@dataclass(frozen=True)
class TrainResult:
    step: int
    checkpoint: Path | None
    eval_losses: dict[int, float]


class EMA:
    """Exponential moving average of the adapter weights (float32, on the training device)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.weights = {name: tensor.detach().float().clone() for name, tensor in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        current = module.state_dict()
        names = list(self.weights)
        torch._foreach_lerp_([self.weights[n] for n in names], [current[n].float() for n in names], 1.0 - self.decay)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _summary_line(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class Trainer:
    """One training run on this rank; `run()` trains to [train] max_steps."""

    def __init__(self, config: TrainConfig, topology: distributed.Topology, resume: str | None = None) -> None:
        self.config = config
        train = config.train
        self.topology = topology
        self.device = topology.device
        self.on_gpu = self.device.type == "cuda"
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(train.seed)  # for anything not drawn from a keyed generator

        self.output = config.output.dir
        if not resume and state.saved_checkpoints(self.output, config.output.name):
            raise FlexIPError(
                f"{self.output} already holds checkpoints of {config.output.name}: pass --resume to "
                "continue that run, or set another [output] dir or name."
            )
        stream_cache = config.data.stream_cache
        self.shards = ShardPairs(self._packed_pairs(), None if stream_cache is None else str(stream_cache))
        _check_pairs(self.shards, config, topology.world_size)
        damage = self.shards.damage() if topology.is_main else None  # one stat per chunk: once, not on every rank
        if damage:
            raise FlexIPError(damage)

        factories = resolve_factories(config.model)
        import_comfy(cpu=not self.on_gpu)
        self.pack = load_pack()
        precision = train.mixed_precision if self.on_gpu else "no"
        self.autocast = None if precision == "no" else _UNET_DTYPES[precision]
        self.models = load_frozen(config.model, factories, _UNET_DTYPES[precision], self.pack)
        self.adapter = build_adapter(self.models, self.pack, config.adapter, train.seed).to(self.device)
        self.model, _ = install_training_patch(self.pack, self.models.unet, self.adapter, self.device)
        if train.gradient_checkpointing:
            count = enable_gradient_checkpointing(self.models.diffusion_model)
            log.info("gradient checkpointing on %d UNet blocks", count)

        self.source = PairImageSource(
            self.shards, config.data.resolution, config.data.reference_resolution, config.data.augment, train.seed
        )
        self.encoders = Encoders(self.models, self.pack, self.adapter.config.dino_resolution)
        self.cache = self._prepare_cache() if config.cache.enabled else None
        self.null = self.cache.null() if self.cache else self.encoders.null(config.data.reference_resolution)
        self.items = PairItems(self.source, self.cache, train.seed)
        self.eval_features = self._features(list(range(min(config.output.eval_pairs, len(self.shards)))))

        self.loss = DenoisingLoss(self.adapter, self.model, TRAINING_INPUTS, self.autocast)
        self.forward = self.loss
        if self.topology.distributed:
            # gradients live in DDP's buckets: no second copy of them
            self.forward = DistributedDataParallel(
                self.loss, device_ids=[self.device.index] if self.on_gpu else None, gradient_as_bucket_view=True
            )
        self.optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=train.learning_rate, betas=train.betas, weight_decay=train.weight_decay
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(train.warmup_steps))
        self.scaler = torch.amp.GradScaler("cuda") if self.on_gpu and precision == "fp16" else None
        self.ema = EMA(self.adapter, train.ema_decay) if train.ema_decay > 0 else None
        self.step = 0
        self.position = 0  # micro-batches this rank has consumed
        self.loader: Any = None
        self.data_state: tuple[dict, int] | None = None  # the loader position to resume from, its rank count
        if resume:
            self._restore(state.find_resume(resume, self.output, config.output.name))

    # setup ------------------------------------------------------------------------------
    def _packed_pairs(self) -> str:
        """[data] shards, or the manifest packed into <output>/shards by rank 0 (again only when it changed)."""
        data = self.config.data
        if data.shards:
            return data.shards
        pairs, problems = read_manifest(data.manifest)
        if problems:
            more = f"; {len(problems) - 1} more problems" if len(problems) > 1 else ""
            raise FlexIPError(f"{problems[0].rstrip('.')}{more} (--check-data lists them all, decoding every image).")
        folder = self.output / "shards"
        if self.topology.is_main:
            from .pack import pack_manifest

            folder.parent.mkdir(parents=True, exist_ok=True)
            if pack_manifest(data.manifest, pairs, folder):
                log.info("packed %d pairs of %s into %s", len(pairs), data.manifest.name, folder)
        distributed.barrier(self.topology)
        return str(folder)

    def _prepare_cache(self) -> FeatureCache:
        cache = FeatureCache(self.config, self.source, self.adapter.config.dino_resolution)
        stale = cache.stale()
        mine = stale[self.topology.rank :: self.topology.world_size]  # each shard is written by one rank
        if stale and self.topology.is_main:
            log.info(
                "feature cache: building %d of %d shards in %s", len(stale), cache.shard_count + 1, cache.directory
            )
        cache.build(self.encoders, mine, progress=self.topology.is_main)
        distributed.barrier(self.topology)
        check_cache_complete(cache)
        return cache

    def _features(self, indices: list[int]) -> list[Features]:
        """Canonical (un-augmented) features of `indices`, in batches of [train] batch_size."""
        size = self.config.train.batch_size
        batches = []
        for start in range(0, len(indices), size):
            items = collate([self.items(index, None) for index in indices[start : start + size]])
            batches.append(items if isinstance(items, Features) else self.encoders.encode(items))
        return batches

    def _restore(self, path: Path) -> None:
        saved = state.load_state(path, self.adapter.config)
        self.adapter.load_state_dict(saved["adapter"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        if self.scaler is not None and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved["ema"]:
            self.ema.weights = {name: tensor.to(self.device) for name, tensor in saved["ema"].items()}
        self.step = saved["step"]
        # positions are counted over all ranks, so another world size continues after the same samples
        self.position = saved["position"] // self.topology.world_size
        self.data_state = saved["data"], saved["world_size"]
        state.restore_rng(saved["rng"])
        log.info("resumed from %s at step %d", path.name, self.step)

    # loop -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm import tqdm

        config, train, topology = self.config, self.config.train, self.topology
        if self.step >= train.max_steps:
            log.info("already at step %d of %d: nothing to train", self.step, train.max_steps)
            return TrainResult(self.step, None, {})
        if topology.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        from .stream import training_loader

        self.loader = training_loader(
            self.shards,
            self.items,
            train.seed,
            train.batch_size,
            config.data.num_workers,
            config.data.variant_fraction,
            collate,
            self.on_gpu,
            topology.distributed,
        )
        if self.data_state is not None:
            _resume_data(self.loader, *self.data_state, topology.world_size)
        batches = _endless(self.loader, self._empty_epoch())
        order = self.output / f"order-rank{topology.rank}.jsonl" if config.output.record_order else None
        sampling = self.model.model.model_sampling
        evals: dict[int, float] = {}
        if self.step == 0 and self.eval_features:
            evals[0] = self._evaluate()
        progress = tqdm(
            total=train.max_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (topology.is_main and config.output.progress),
        )
        running, count, started = torch.zeros((), device=self.device), 0, time.perf_counter()
        last_checkpoint = None
        while self.step < train.max_steps:
            for micro in range(train.grad_accumulation):
                batch = self._next_batch(batches)
                if isinstance(batch, BadPair):  # a damaged shard or image, found in a data-loader worker
                    raise FlexIPError(batch.message)
                if order is not None:
                    _summary_line(order, {"position": self.position, "pairs": _pair_indices(batch)})
                features = batch if isinstance(batch, Features) else self.encoders.encode(batch)
                self._load_unet()  # after encoding: loading the encoders may have pushed the UNet out
                generator = keyed_generator("step", train.seed, self.position, topology.rank)
                inputs = training_inputs(features, self.null, config.data, sampling, generator).to(self.device)
                last = micro == train.grad_accumulation - 1
                sync = contextlib.nullcontext() if last or not topology.distributed else self.forward.no_sync()
                with sync:
                    loss = self.forward(inputs) / train.grad_accumulation
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                running += loss.detach()
                self.position += 1
            self._optimizer_step()
            self.step += 1
            count += 1
            progress.update(1)
            at_end = self.step == train.max_steps
            if self.step % config.output.log_every == 0 or at_end:
                mean = float(distributed.all_sum(topology, running)) / (count * topology.world_size)
                elapsed = time.perf_counter() - started
                record = {
                    "step": self.step,
                    "loss": mean,
                    "lr": self.schedule.get_last_lr()[0],
                    "steps_per_s": count / elapsed,
                }
                if self.on_gpu:
                    record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                progress.set_postfix(loss=f"{mean:.4f}")
                if topology.is_main:
                    _summary_line(self.output / LOG_NAME, record)
                running.zero_()
                count, started = 0, time.perf_counter()
            eval_due = config.output.eval_every and self.step % config.output.eval_every == 0
            if self.eval_features and (at_end or eval_due):
                evals[self.step] = self._evaluate()
            if config.samples.every and (self.step % config.samples.every == 0 or at_end):
                self._samples()
            if at_end or self.step % config.output.checkpoint_every == 0:
                last_checkpoint = self._checkpoint()
        progress.close()
        return TrainResult(self.step, last_checkpoint, evals)

    def _empty_epoch(self) -> str:
        data, topology = self.config.data, self.topology
        return (
            f"{self.shards.root} gives no batch of {self.config.train.batch_size} on {topology.world_size} GPU(s) "
            f"with {data.num_workers} data-loader workers (each kind fills whole batches per GPU and worker under "
            "torchrun): add pairs, or lower [train] batch_size or [data] num_workers."
        )

    def _next_batch(self, batches: Iterator[Any]) -> Any:
        """The next micro-batch; a chunk damaged while training (litdata reads ahead) ends in one sentence."""
        try:
            return next(batches)
        except Exception:
            damage = self.shards.damage()
            if damage:
                raise FlexIPError(damage) from None
            raise

    def _load_unet(self) -> None:
        """The UNet fully on the training device (again, if sampling or encoding moved it)."""
        load_fully([self.model])

    def _optimizer_step(self) -> None:
        train = self.config.train
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), train.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.adapter)

    @torch.no_grad()
    def _evaluate(self) -> float:
        """The fixed evaluation loss: same pairs, noise and timesteps every time; shared over ranks."""
        config, topology = self.config, self.topology
        self._load_unet()
        sampling = self.model.model.model_sampling
        total = torch.zeros(2, dtype=torch.float64)
        for number, features in enumerate(self.eval_features):
            if number % topology.world_size != topology.rank:
                continue
            for inputs in evaluation_inputs(
                features, config.data, sampling, config.train.seed, config.output.eval_timesteps
            ):
                errors = self.loss.per_sample(inputs.to(self.device))
                total += torch.tensor([float(errors.double().sum()), errors.numel()], dtype=torch.float64)
        total = distributed.all_sum(topology, total.to(self.device)).cpu()
        value = float(total[0] / total[1])
        if topology.is_main:
            _summary_line(self.output / LOG_NAME, {"step": self.step, "eval_loss": value})
            log.info("step %d: evaluation loss %.5f", self.step, value)
        return value

    def _published_weights(self) -> dict[str, torch.Tensor]:
        return self.ema.weights if self.ema is not None else self.adapter.state_dict()

    def _samples(self) -> None:
        if not self.topology.is_main:
            return
        from .samples import sample_grid

        adapter = state.export_adapter(self.adapter.config, self._published_weights(), torch.float32)
        indices = list(range(min(self.config.samples.pairs, len(self.source))))
        path = sample_grid(
            self.pack,
            self.models,
            adapter,
            self.source,
            indices,
            self.config.samples,
            self.output / "samples" / f"{self.config.output.name}-{self.step:06d}.png",
        )
        log.info("step %d: sample grid %s", self.step, path)

    def _checkpoint(self) -> Path | None:
        topology, output = self.topology, self.config.output
        digests = distributed.gather_strings(topology, distributed.weights_digest(self.adapter.state_dict()))
        if len(set(digests)) > 1:
            log.error(
                "the ranks' adapter weights differ at step %d (digests %s): training is not in sync", self.step, digests
            )
        path = None
        if topology.is_main:
            ema = self.ema.weights if self.ema is not None else None
            payload = {
                "step": self.step,
                "position": self.position * topology.world_size,  # micro-batches over all ranks
                "world_size": topology.world_size,
                "adapter": {k: v.detach().cpu() for k, v in self.adapter.state_dict().items()},
                "ema": None if ema is None else {k: v.detach().cpu() for k, v in ema.items()},
                "data": self.loader.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": state.rng_states(),
                "adapter_config": self.adapter.config.to_json(),
                "rank_digests": digests,
            }
            path = state.save(
                self.output,
                output.name,
                self.step,
                self.adapter.config,
                self._published_weights(),
                output.save_dtype,
                payload,
            )
            state.prune(self.output, output.name, output.keep_last)
            log.info("step %d: wrote %s", self.step, path)
        distributed.barrier(topology)
        return path


def _check_pairs(shards: ShardPairs, config: TrainConfig, world_size: int) -> None:
    """Enough pairs for one step, and both kinds where [data] variant_fraction asks for them."""
    per_step = config.train.batch_size * world_size
    if len(shards) < per_step:
        raise FlexIPError(
            f"{shards.root} has {len(shards)} pairs but one step needs batch_size x GPUs = {per_step}: "
            "add pairs or lower [train] batch_size."
        )
    fraction = config.data.variant_fraction
    for kind, share in zip(KINDS, (None if fraction is None else 1.0 - fraction, fraction)):
        if share and kind not in shards.kinds:
            raise FlexIPError(
                f"[data] variant_fraction = {fraction} asks for {kind} pairs but {shards.root} has none: "
                "pack some, or set variant_fraction to " + ("0." if kind == "variant" else "1.")
            )


def _endless(loader, empty: str) -> Iterator[Any]:
    """Micro-batches epoch after epoch (each pass over the loader is one reshuffled epoch); FlexIPError(`empty`)
    if a whole epoch gives none."""
    while True:
        epoch_empty = True
        for batch in loader:
            epoch_empty = False
            yield batch
        if epoch_empty:
            raise FlexIPError(empty)


def _resume_data(loader, saved: dict, saved_ranks: int, ranks: int) -> None:
    """Put `loader` where the checkpoint's was; on another number of ranks, at the start of the next epoch
    (litdata resumes a mix of subsets only on the same number of ranks)."""
    if saved_ranks != ranks:
        log.warning(
            "resuming with %d ranks from a checkpoint written by %d: the data starts a new epoch here",
            ranks,
            saved_ranks,
        )
        loader.current_epoch = int(saved["current_epoch"])  # the next pass is the next epoch, freshly shuffled
        return
    try:
        loader.load_state_dict(saved)
    except (ValueError, KeyError, TypeError) as error:
        raise FlexIPError(
            f"the checkpoint's data position does not fit this run ({error}): resume with the same "
            "shards, [train] batch_size and [data] num_workers."
        ) from None


def _pair_indices(batch) -> list[int]:
    return list(batch.indices) if isinstance(batch, Features) else [item.index for item in batch]


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Train per `config` (resuming from `resume`: 'latest' or a checkpoint path) and return the summary."""
    topology = distributed.setup(config.train.device, config.train.timeout_minutes)
    try:
        return Trainer(config, topology, resume).run()
    finally:
        distributed.teardown()
