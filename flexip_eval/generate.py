"""The images of an evaluation, made with the pack's own nodes on ComfyUI's own model code.

Per method: FlexIPLoader (a FlexIP checkpoint) or FlexIPAdapterPairLoader (compatibility mode,
two IP-Adapter files), FlexIPEncodeSubject once per subject, FlexIPApply (or FlexIPGateSchedule)
per γ; the base model is sampled unpatched. Text goes through ComfyUI's CLIPTextEncode and
latents through VAEDecode, sampling through comfy.sample as KSampler does, with each image's
noise drawn from its own seed (so an image does not depend on which seeds share its batch;
ancestral samplers draw their step noise from the batch's first seed).

Each PNG holds its settings as JSON in the text chunk "flexip_eval"; an existing PNG is never
made again, and one made with other settings stops the run (mixing them would skew the table).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from flexip_host.frozen_models import FrozenModels
from flexip_host.loaded_pack import Pack
from flexip_host.model_folders import put_model_folder_first
from flexip_host.sampling import decode, encode_text, fix_empty_latent_channels, prepare_noise, sample
from flexip_model.errors import FlexIPError

from .benchmark import Subject, subject_images
from .config import EvalConfig, MethodConfig
from .worklist import Item, batches

log = logging.getLogger(__name__)

METADATA_KEY = "flexip_eval"


def image_settings(config: EvalConfig, method: MethodConfig) -> dict:
    """Everything besides the item itself that decides an image: a changed value means another image."""
    gen, model = config.generation, config.model
    files = {
        key: getattr(method, key).name
        for key in ("file", "preservation", "personalization")
        if getattr(method, key) is not None
    }
    return {
        "checkpoint": model.checkpoint.name,
        "unet_factory": model.unet_factory,
        "clip_vision": model.clip_vision.name if model.clip_vision else model.clip_vision_factory,
        "dino": model.dino.name if model.dino else model.dino_factory,
        "method_files": files,
        "interpolation": method.interpolation if method.schedule else "",
        "condition_images": config.benchmark.condition_images,
        "steps": gen.steps,
        "cfg": gen.cfg,
        "sampler": gen.sampler,
        "scheduler": gen.scheduler,
        "resolution": gen.resolution,
        "negative": gen.negative,
        "strength": gen.strength,
    }


def check_existing(path: Path, item: Item, settings: dict) -> None:
    """FlexIPError if the PNG at `path` was made for another item or with other settings."""
    try:
        with Image.open(path) as image:
            stored = json.loads(image.text.get(METADATA_KEY, "{}"))
    except (OSError, ValueError, SyntaxError):
        stored = {}
    if stored.get("item") == item.record() and stored.get("settings") == settings:
        return
    old = stored.get("settings") or {}
    changed = sorted(key for key in settings if old.get(key) != settings[key]) or ["the image's item"]
    raise FlexIPError(
        f"{path} was made with other settings ({', '.join(changed)} differ from this config): "
        "set another [output] dir, or delete the old images to make them again."
    )


def write_png(path: Path, pixels: torch.Tensor, item: Item, settings: dict) -> None:
    """[H, W, 3] in [0, 1] -> PNG with the item and settings as metadata; written whole or not at all."""
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps({"item": item.record(), "settings": settings}, sort_keys=True))
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    Image.fromarray(array).save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)  # an interrupted run leaves no PNG that a later run would take as done


@dataclass
class ImageMaker:
    """Loaded models and what is built once per run: methods, encoded subjects, text conditionings."""

    config: EvalConfig
    pack: Pack
    models: FrozenModels
    _methods: dict[str, Any] = field(default_factory=dict)
    _subjects: dict[tuple[str, str], Any] = field(default_factory=dict)
    _texts: dict[str, list] = field(default_factory=dict)

    def make(self, items: list[Item], output: Path, done: Callable[[Item], None] = lambda item: None) -> None:
        """Sample and write the PNG of every item, batched over seeds; `done(item)` after each image."""
        settings = {method.name: image_settings(self.config, method) for method in self.config.methods}
        for batch in batches(items, self.config.generation):
            first = batch[0]
            images = self._sample(first.method, first.gamma, first.subject, first.prompt, [i.seed for i in batch])
            for item, pixels in zip(batch, images):
                write_png(output / item.image, pixels, item, settings[item.method.name])
                done(item)

    def _sample(
        self, method: MethodConfig, gamma: float | None, subject: Subject, prompt: str, seeds: list[int]
    ) -> torch.Tensor:
        gen = self.config.generation
        model = self._patched(method, gamma, subject)
        size = gen.resolution // 8
        latent = fix_empty_latent_channels(model, torch.zeros(len(seeds), 4, size, size))
        noise = torch.cat([prepare_noise(latent[:1], seed) for seed in seeds])
        samples = sample(
            model,
            noise,
            gen.steps,
            gen.cfg,
            gen.sampler,
            gen.scheduler,
            self._text(prompt),
            self._text(gen.negative),
            latent,
            seed=seeds[0],
        )
        return decode(self.models.vae, samples)[..., :3].float().cpu()

    def _patched(self, method: MethodConfig, gamma: float | None, subject: Subject) -> Any:
        """The UNet for one row and subject: unpatched for the base model, else FlexIPApply's clone."""
        if method.kind == "base":
            return self.models.unet
        loaded = self._method(method)
        key = (method.name, subject.name)
        if key not in self._subjects:
            references = subject_images(
                subject.condition(self.config.benchmark.condition_images), self.config.generation.resolution
            )
            dino = self.models.dino if method.kind == "flexip" else None  # an IP-Adapter pair uses CLIP-H only
            (self._subjects[key],) = self.pack.encode_subject_node().encode(
                loaded, self.models.clip_vision, references, "average", dino=dino
            )
        gate = None
        if method.schedule:
            (gate,) = self.pack.gate_schedule_node().build(method.schedule, method.interpolation)
        (model,) = self.pack.apply_node().apply(
            self.models.unet,
            loaded,
            self._subjects[key],
            self.config.generation.strength,
            0.0 if gamma is None else gamma,
            0.0,
            1.0,
            gate=gate,
        )
        return model

    def _method(self, method: MethodConfig) -> Any:
        """The method's FLEXIP from the pack's loader node, its file's folder registered first."""
        if method.name not in self._methods:
            if method.kind == "flexip":
                # is_default puts the folder first: a same-named file elsewhere is not picked instead
                put_model_folder_first("flexip", method.file.parent)
                (loaded,) = self.pack.loader_node().load(method.file.name)
            else:
                for path in (method.preservation, method.personalization):
                    put_model_folder_first("ipadapter", path.parent)
                if (
                    method.preservation.name == method.personalization.name
                    and method.preservation != method.personalization
                ):
                    raise FlexIPError(
                        f"[[methods]] {method.name!r} names two IP-Adapter files called "
                        f"{method.preservation.name} in different folders: rename one of them."
                    )
                (loaded,) = self.pack.pair_loader_node().load(
                    self.models.unet, method.preservation.name, method.personalization.name
                )
            log.info("method %s: %s", method.name, loaded.name)
            self._methods[method.name] = loaded
        return self._methods[method.name]

    def _text(self, text: str) -> list:
        if text not in self._texts:
            self._texts[text] = encode_text(self.models.clip, text)
        return self._texts[text]
