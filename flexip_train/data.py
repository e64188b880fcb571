"""Training pairs: the JSONL manifest, the invariant-pair reference, and pairs decoded for training.

One pair a line: {"reference": ..., "reference_mask": ..., "target": ..., "caption": ..., "kind": ...},
paths relative to the manifest. Invariant pairs build their reference from the target (a
subject crop with flip, scale and colour jitter, so the adapter cannot paste pixels back);
variant pairs use the given reference (another frame or view of the subject).
Images here are ComfyUI IMAGE tensors: [H, W, 3] float in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, UnidentifiedImageError

from flexip_host.images import decode_image, fit_square, resize_image, square_crop
from flexip_model.errors import FlexIPError

from .config import AugmentConfig

if TYPE_CHECKING:
    from .shards import ShardPairs

KINDS = ("invariant", "variant")
FIELDS = ("reference", "reference_mask", "target", "caption", "kind")
CANONICAL = 0  # reference variant 0 is the un-augmented one (evaluation, samples)


@dataclass(frozen=True)
class Pair:
    """One manifest line. For invariant pairs `reference` is the target unless the line names one."""

    line: int
    target: Path
    reference: Path
    reference_mask: Path | None
    caption: str
    kind: str

    def files(self) -> tuple[tuple[str, Path], ...]:
        named = [("target", self.target)] + ([("reference", self.reference)] if self.reference != self.target else [])
        if self.reference_mask is not None:
            named.append(("reference_mask", self.reference_mask))
        return tuple(named)


def read_manifest(path: Path, check_images: bool = False) -> tuple[list[Pair], list[str]]:
    """All good pairs and one sentence per problem (with the line number); never raises for a bad line.

    `check_images` decodes every image (what --check-data does); otherwise only existence is checked.
    """
    path = Path(path)
    if not path.is_file():
        raise FlexIPError(f"the manifest {path} was not found: set [data] manifest to your JSONL file.")
    pairs: list[Pair] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            pair, found = _parse_line(text, number, path)
            if pair is not None and not found:
                found = [f"{path.name} line {number}: {message}" for message in _check_files(pair, check_images)]
            if found:
                problems.extend(found)
            elif pair is not None:
                pairs.append(pair)
    return pairs, problems


def _parse_line(text: str, number: int, manifest: Path) -> tuple[Pair | None, list[str]]:
    where = f"{manifest.name} line {number}"
    try:
        item = json.loads(text.strip())
    except json.JSONDecodeError as error:
        return None, [
            f"{where} is not valid JSON ({error.msg} at column {error.colno}): write one JSON object per line."
        ]
    if not isinstance(item, dict):
        return None, [f'{where} is not a JSON object: write {{"target": ..., "caption": ..., "kind": ...}}.']
    problems = []
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        problems.append(f"{where} has unknown field {unknown[0]!r}: use {', '.join(FIELDS)}.")
    kind = item.get("kind")
    if kind not in KINDS:
        problems.append(f'{where} has kind {kind!r}: use "invariant" or "variant".')
    caption = item.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        problems.append(f"{where} has an empty or missing caption: write what the target image shows.")
    paths = {}
    for name in ("target", "reference", "reference_mask"):
        value = item.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            problems.append(f"{where} has a {name} that is not a path string: write it in quotes.")
            continue
        paths[name] = (manifest.parent / value).resolve()
    if "target" not in paths and not any("target" in p for p in problems):
        problems.append(f'{where} has no target image: add "target": "path/to/image.png".')
    if kind == "variant" and "reference" not in paths:
        problems.append(f'{where} is a variant pair without a reference: add the other frame or view as "reference".')
    if problems:
        return None, problems
    return Pair(
        line=number,
        target=paths["target"],
        reference=paths.get("reference", paths["target"]),
        reference_mask=paths.get("reference_mask"),
        caption=caption.strip(),
        kind=kind,
    ), []


def _check_files(pair: Pair, decode: bool) -> list[str]:
    problems = []
    for name, path in pair.files():
        if not path.is_file():
            problems.append(
                f"{name} {path.name} was not found in {path.parent}: fix the path (it is relative to the manifest)."
            )
        elif decode:
            try:
                with Image.open(path) as image:
                    image.load()
            except (UnidentifiedImageError, OSError, ValueError) as error:
                reason = str(error).replace(f"'{path}'", "").replace(str(path), "").strip()
                problems.append(f"{name} {path.name} is not a readable image ({reason}): re-save it as PNG or JPEG.")
    return problems


def size_conditions(height: int, width: int, size: int) -> torch.Tensor:
    """SDXL's size conditioning of an H×W target fitted by `fit_square`: [original height, original
    width, crop top, crop left] in pixels, the crop offset in the resized image (as SDXL was trained)."""
    _, _, top, left = square_crop(height, width, size)
    return torch.tensor([height, width, top, left], dtype=torch.float32)


def _subject_box(
    mask: torch.Tensor | None, height: int, width: int, margin: float
) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of the subject: the mask's bounding box plus a margin, else the image."""
    if mask is None or not bool((mask > 0.5).any()):
        return 0.0, 0.0, float(height), float(width)
    rows = torch.nonzero((mask > 0.5).any(dim=1)).flatten()
    cols = torch.nonzero((mask > 0.5).any(dim=0)).flatten()
    top, bottom = float(rows[0]), float(rows[-1] + 1)
    left, right = float(cols[0]), float(cols[-1] + 1)
    pad = margin * max(bottom - top, right - left)
    return top - pad, left - pad, bottom + pad, right + pad


def _crop_square(image: torch.Tensor, center: tuple[float, float], side: float) -> torch.Tensor:
    """A square of `side` px around `center`; parts outside the image are black."""
    side = max(1, round(side))
    top, left = round(center[0] - side / 2), round(center[1] - side / 2)
    height, width = image.shape[:2]
    out = image.new_zeros((side, side, *tuple(image.shape[2:])))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def _jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each scaled by a factor in [1 - strength, 1 + strength]."""
    brightness, contrast, saturation = (1.0 + strength * (2.0 * torch.rand(3, generator=generator) - 1.0)).tolist()
    image = image * brightness
    gray = (image * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    image = (image - gray.mean()) * contrast + gray.mean()
    gray = (image * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    return ((image - gray) * saturation + gray).clamp(0.0, 1.0)


def subject_reference(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    size: int,
    augment: AugmentConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The reference [size, size, 3] cut from `image` around the subject, background black where masked.

    With `generator` None the crop is the canonical one (the whole subject, centred, no
    augmentation); otherwise a random square of `scale` of the subject's area, flipped with
    probability `flip`, colour-jittered by `jitter`.
    """
    height, width = image.shape[:2]
    if mask is not None:
        if tuple(mask.shape) != (height, width):
            mask = resize_image(mask.unsqueeze(-1), (height, width)).squeeze(-1)
        # the subject only, as FlexIPEncodeSubject does with a mask: the background becomes black
        image = image * (mask > 0.5).unsqueeze(-1).to(image)
    top, left, bottom, right = _subject_box(mask, height, width, augment.mask_margin if mask is not None else 0.0)
    side = max(bottom - top, right - left) if mask is not None else min(height, width)
    center = ((top + bottom) / 2, (left + right) / 2)
    if generator is not None:
        low, high = augment.scale
        area = low + (high - low) * float(torch.rand((), generator=generator))
        crop = side * math.sqrt(area)
        slack_y = max(0.0, (bottom - top) - crop) / 2
        slack_x = max(0.0, (right - left) - crop) / 2
        offset = (2.0 * torch.rand(2, generator=generator) - 1.0).tolist()
        center = (center[0] + offset[0] * slack_y, center[1] + offset[1] * slack_x)
        side = crop
    out = resize_image(_crop_square(image, center, side), (size, size))
    if generator is not None:
        if float(torch.rand((), generator=generator)) < augment.flip:
            out = out.flip(1)
        if augment.jitter > 0:
            black = out.sum(-1, keepdim=True) == 0
            out = _jitter(out, augment.jitter, generator).masked_fill(black, 0.0)
    return out


def keyed_generator(*key: object) -> torch.Generator:
    """A CPU generator seeded from `key` alone, so draws do not depend on what ran before (resume, workers)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class PairImages:
    """What the encoders need for one pair: target [R, R, 3], reference [r, r, 3], caption, and the
    target's size conditioning [4] (`size_conditions`)."""

    index: int
    target: torch.Tensor
    reference: torch.Tensor
    caption: str
    kind: str
    sizes: torch.Tensor


class PairImageSource:
    """Decodes packed pairs (shard samples, see flexip_train/shards.py) and builds their references;
    reference variant v > 0 of an invariant pair is an augmented draw keyed by (seed, pair, v)."""

    def __init__(
        self, pairs: ShardPairs, resolution: int, reference_resolution: int, augment: AugmentConfig, seed: int
    ) -> None:
        self.pairs = pairs
        self.resolution = resolution
        self.reference_resolution = reference_resolution
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def target(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The target fitted to the training resolution [R, R, 3], and its size conditioning [4]."""
        image = decode_image(sample["target"], f"the target of {sample['source']}")
        return fit_square(image, self.resolution), size_conditions(image.shape[0], image.shape[1], self.resolution)

    def reference(self, index: int, sample: dict, variant: int) -> torch.Tensor:
        """Variant CANONICAL is deterministic; other variants of invariant pairs are augmented draws."""
        where = sample["source"]
        own = sample["reference"]  # empty for an invariant pair cut from its target
        image = decode_image(own or sample["target"], f"the {'reference' if own else 'target'} of {where}")
        mask = (
            decode_image(sample["reference_mask"], f"the mask of {where}", mask=True)
            if sample["reference_mask"]
            else None
        )
        augmented = sample["kind"] == "invariant" and variant != CANONICAL
        generator = keyed_generator("reference", self.seed, index, variant) if augmented else None
        return subject_reference(image, mask, self.reference_resolution, self.augment, generator)

    def load(self, index: int, variant: int, sample: dict | None = None) -> PairImages:
        """Pair `index` decoded (from `sample` when the caller has read it already)."""
        sample = self.pairs.sample(index) if sample is None else sample
        target, sizes = self.target(sample)
        return PairImages(
            index, target, self.reference(index, sample, variant), sample["caption"], sample["kind"], sizes
        )


def training_variant(seed: int, epoch: int, index: int, cached_variants: int | None) -> int:
    """The augmented reference (>= 1) an invariant pair gets in `epoch`: a fresh draw per epoch, or with a
    feature cache one of its `cached_variants` precomputed draws. Variant pairs ignore it."""
    if cached_variants is None:
        return 1 + epoch
    return 1 + int(torch.randint(cached_variants, (), generator=keyed_generator("variant", seed, epoch, index)))
