"""From pixels and captions to model inputs, live or through the on-disk feature cache.

Features of one pair: the target latent (the model's latent space, after `process_latent_in`)
and its size conditioning (original size, crop offset), the text context and pooled text
embedding from the checkpoint's text encoder (SDXL's UNet reads the pooled one and the sizes),
and the reference's CLIP [CLS] embedding and DINOv2 tokens. The cache
stores them in safetensors shards, one per `shard_size` packed pairs; every shard carries a
fingerprint of its inputs (the settings, and the digests of the packed chunks holding its pairs: no pair is
read to check it) and is rebuilt when they change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flexip_host.frozen_models import FrozenModels
from flexip_host.loaded_pack import Pack
from flexip_model.errors import FlexIPError

from .config import TrainConfig
from .data import CANONICAL, PairImages, PairImageSource, training_variant

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 2: pooled text embeddings; 3: target size conditioning
CACHE_DTYPE = torch.float16


@dataclass(frozen=True)
class NullConditions:
    """What condition dropout substitutes: the empty prompt's context [L, d] and pooled embedding [P],
    the black reference's features."""

    context: torch.Tensor
    clip: torch.Tensor
    dino: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class Features:
    """One micro-batch of model inputs on the CPU. contexts may differ in length (long captions)."""

    indices: tuple[int, ...]
    kinds: tuple[str, ...]
    latents: torch.Tensor  # [B, 4, h, w]
    contexts: tuple[torch.Tensor, ...]  # each [L, d]
    clip: torch.Tensor  # [B, C]
    dino: torch.Tensor  # [B, T, D]
    pooled: torch.Tensor  # [B, P] pooled text embeddings
    sizes: torch.Tensor  # [B, 4] original height, width, crop top, left of each target (data.size_conditions)


class Encoders:
    """The frozen encoders, called the way ComfyUI's nodes call them; outputs are float32 on the CPU."""

    def __init__(self, models: FrozenModels, pack: Pack, dino_resolution: int) -> None:
        self.models = models
        self.pack = pack
        self.dino_resolution = dino_resolution

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, 3] -> latents [B, 4, H/8, W/8] in the model's space (as the sampler sees them)."""
        raw = self.models.vae.encode(pixels)
        return self.models.unet.model.process_latent_in(raw).float().cpu()

    @torch.no_grad()
    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption -> (text context [77·k, d], pooled embedding [P]): the CLIPTextEncode node's output."""
        clip = self.models.clip
        context, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        return context.float().cpu()[0], pooled.float().cpu()[0]

    @torch.no_grad()
    def image(self, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """IMAGE [B, r, r, 3] -> (CLIP image_embeds [B, C], DINOv2 tokens [B, T, D]), as FlexIPEncodeSubject does."""
        clip = self.pack.clip_image_embeds(self.models.clip_vision, references)
        dino = self.pack.dino_tokens(self.models.dino, references, self.dino_resolution)
        return clip.float().cpu(), dino.float().cpu()

    def null(self, reference_resolution: int) -> NullConditions:
        """Empty prompt and black reference (never zeros: the encoders never saw them)."""
        clip, dino = self.image(torch.zeros(1, reference_resolution, reference_resolution, 3))
        context, pooled = self.text("")
        return NullConditions(context, clip[0], dino[0], pooled)

    def encode(self, items: list[PairImages]) -> Features:
        latents = self.latents(torch.stack([item.target for item in items]))
        clip, dino = self.image(torch.stack([item.reference for item in items]))
        texts = [self.text(item.caption) for item in items]
        return Features(
            indices=tuple(item.index for item in items),
            kinds=tuple(item.kind for item in items),
            latents=latents,
            contexts=tuple(context for context, _ in texts),
            clip=clip,
            dino=dino,
            pooled=torch.stack([pooled for _, pooled in texts]),
            sizes=torch.stack([item.sizes for item in items]),
        )


def _file_stamp(path: Path | None) -> object:
    if path is None:
        return None
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Shards `shard-NNNNN.safetensors` plus `null.safetensors` in `directory`."""

    def __init__(self, config: TrainConfig, source: PairImageSource, dino_resolution: int) -> None:
        self.directory = config.cache_dir
        self.source = source
        self.shard_size = config.cache.shard_size
        self.variants = config.cache.variants
        model = config.model
        self._settings = {
            "format": CACHE_FORMAT,
            "checkpoint": _file_stamp(model.checkpoint),
            "clip_vision": model.clip_vision_factory or _file_stamp(model.clip_vision),
            "dino": model.dino_factory or _file_stamp(model.dino),
            "unet": model.unet_factory,
            "resolution": config.data.resolution,
            "reference_resolution": config.data.reference_resolution,
            "dino_resolution": dino_resolution,
            "augment": config.data.augment,
            "variants": self.variants,
            "seed": config.train.seed,
        }
        self._handles: dict[int, object] = {}

    @property
    def shard_count(self) -> int:
        return -(-len(self.source) // self.shard_size)

    def shard_path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.safetensors"

    @property
    def null_path(self) -> Path:
        return self.directory / "null.safetensors"

    def _fingerprint(self, shard: int | None) -> str:
        if shard is None:
            return _digest(self._settings)
        indices = self._indices(shard)
        return _digest([self._settings, self.source.pairs.content_key(indices.start, indices.stop)])

    def _indices(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.source)))

    @staticmethod
    def _stored_fingerprint(path: Path) -> str | None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                return (handle.metadata() or {}).get("fingerprint")
        except Exception:  # missing, truncated, not safetensors: all mean "rebuild"
            return None

    def stale(self) -> list[int | None]:
        """Shards (None = the null conditions) whose file is missing or was made from other inputs."""
        out: list[int | None] = []
        if self._stored_fingerprint(self.null_path) != self._fingerprint(None):
            out.append(None)
        out += [
            shard
            for shard in range(self.shard_count)
            if self._stored_fingerprint(self.shard_path(shard)) != self._fingerprint(shard)
        ]
        return out

    def build(self, encoders: Encoders, shards: list[int | None], progress: bool) -> None:
        """Encode and write `shards` (each atomically: a temporary file renamed into place)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for shard in shards:
            tensors = self._encode_null(encoders) if shard is None else self._encode_shard(encoders, shard)
            path = self.null_path if shard is None else self.shard_path(shard)
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file(tensors, str(temp), metadata={"fingerprint": self._fingerprint(shard)})
            os.replace(temp, path)
            if progress:
                log.info("feature cache: wrote %s", path.name)

    def _encode_null(self, encoders: Encoders) -> dict[str, torch.Tensor]:
        null = encoders.null(self.source.reference_resolution)
        return {
            "context": null.context.to(CACHE_DTYPE),
            "clip": null.clip.to(CACHE_DTYPE),
            "dino": null.dino.to(CACHE_DTYPE).contiguous(),
            "pooled": null.pooled.to(CACHE_DTYPE),
        }

    def _encode_shard(self, encoders: Encoders, shard: int) -> dict[str, torch.Tensor]:
        tensors, sizes = {}, {}
        for index in self._indices(shard):
            sample = self.source.pairs.sample(index)
            variants = [CANONICAL] + (list(range(1, self.variants + 1)) if sample["kind"] == "invariant" else [])
            references = torch.stack([self.source.reference(index, sample, v) for v in variants])
            clip, dino = encoders.image(references)
            target, sizes[f"{index}.sizes"] = self.source.target(sample)
            tensors[f"{index}.latent"] = encoders.latents(target[None])[0]
            tensors[f"{index}.context"], tensors[f"{index}.pooled"] = encoders.text(sample["caption"])
            tensors[f"{index}.clip"] = clip
            tensors[f"{index}.dino"] = dino
        # sizes stay float32: pixel counts above 2048 are not exact in float16
        return {**{name: tensor.to(CACHE_DTYPE).contiguous() for name, tensor in tensors.items()}, **sizes}

    def _handle(self, shard: int):
        if shard not in self._handles:  # opened lazily, so each data-loader worker gets its own
            self._handles[shard] = safe_open(str(self.shard_path(shard)), framework="pt")
        return self._handles[shard]

    def null(self) -> NullConditions:
        with safe_open(str(self.null_path), framework="pt") as handle:
            return NullConditions(*(handle.get_tensor(name).float() for name in ("context", "clip", "dino", "pooled")))

    def item(self, index: int, variant: int) -> dict:
        """One pair's cached features; `variant` picks the reference (0 = canonical)."""
        handle = self._handle(index // self.shard_size)
        kind = self.source.pairs.kind(index)
        row = variant if kind == "invariant" else CANONICAL
        return {
            "index": index,
            "kind": kind,
            "latent": handle.get_tensor(f"{index}.latent").float(),
            "context": handle.get_tensor(f"{index}.context").float(),
            "pooled": handle.get_tensor(f"{index}.pooled").float(),
            "clip": handle.get_slice(f"{index}.clip")[row].float(),
            "dino": handle.get_slice(f"{index}.dino")[row].float(),
            "sizes": handle.get_tensor(f"{index}.sizes"),
        }

    def __getstate__(self) -> dict:  # data-loader workers reopen the shards themselves
        return {**self.__dict__, "_handles": {}}


class PairItems:
    """Turns a packed pair into what a micro-batch holds: pixels to encode (live) or cached features.

    The trainer's `Prepare`: called in the data-loader workers with the epoch (None: the canonical,
    un-augmented reference, for evaluation).
    """

    def __init__(self, source: PairImageSource, cache: FeatureCache | None, seed: int) -> None:
        self.source = source
        self.cache = cache
        self.seed = seed

    def __call__(self, index: int, epoch: int | None, sample: dict | None = None):
        variant = CANONICAL
        if epoch is not None:
            variant = training_variant(self.seed, epoch, index, None if self.cache is None else self.cache.variants)
        if self.cache is None:
            return self.source.load(index, variant, sample)
        return self.cache.item(index, variant)


@dataclass(frozen=True)
class BadPair:
    """A pair that could not be read, as a value: a data-loader worker hands it to the main process,
    which stops with its one sentence (an exception would cross the process boundary as a traceback)."""

    message: str


def collate(items: list) -> object:
    """PairImages stay a list (encoded in the main process); cached items become Features."""
    bad = next((item for item in items if isinstance(item, BadPair)), None)
    if bad is not None:
        return bad
    if isinstance(items[0], PairImages):
        return list(items)
    return Features(
        indices=tuple(item["index"] for item in items),
        kinds=tuple(item["kind"] for item in items),
        latents=torch.stack([item["latent"] for item in items]),
        contexts=tuple(item["context"] for item in items),
        clip=torch.stack([item["clip"] for item in items]),
        dino=torch.stack([item["dino"] for item in items]),
        pooled=torch.stack([item["pooled"] for item in items]),
        sizes=torch.stack([item["sizes"] for item in items]),
    )


def check_cache_complete(cache: FeatureCache) -> None:
    """After building: every shard must be current (another rank may have failed silently)."""
    stale = cache.stale()
    if stale:
        names = ", ".join("null" if shard is None else str(shard) for shard in stale[:3])
        raise FlexIPError(
            f"the feature cache in {cache.directory} is incomplete after building (shards {names}): "
            "make sure all ranks see the same cache directory (a shared file system), then run again."
        )
