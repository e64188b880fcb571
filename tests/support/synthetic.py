"""Synthetic training data and configs for the trainer tests (seeded; nothing downloaded).

Each subject is a coloured shape; a pair's target and reference show the same subject
(for variant pairs at another place and size), so the reference carries information about
the target that the adapter can learn to use.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

SUBJECTS = [
    ("red", (220, 40, 40), "circle"),
    ("green", (40, 200, 60), "square"),
    ("blue", (40, 80, 230), "triangle"),
    ("yellow", (230, 210, 40), "diamond"),
    ("purple", (150, 50, 200), "circle"),
    ("orange", (240, 140, 30), "square"),
    ("cyan", (40, 210, 220), "triangle"),
    ("white", (245, 245, 245), "diamond"),
]
BACKGROUNDS = [(90, 90, 90), (30, 40, 60), (70, 50, 40), (20, 60, 30)]


def draw_subject(
    size: int, colour: tuple, shape: str, center: tuple[float, float], radius: float, background: tuple
) -> tuple[Image.Image, Image.Image]:
    """The image and its subject mask (white = subject)."""
    image = Image.new("RGB", (size, size), background)
    mask = Image.new("L", (size, size), 0)
    x, y = center
    if shape == "circle":
        box = [x - radius, y - radius, x + radius, y + radius]
        for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask), 255)):
            canvas.ellipse(box, fill=fill)
        return image, mask
    if shape == "square":
        points = [
            (x - radius, y - radius),
            (x + radius, y - radius),
            (x + radius, y + radius),
            (x - radius, y + radius),
        ]
    elif shape == "triangle":
        angles = (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        points = [(x + radius * math.cos(a), y + radius * math.sin(a)) for a in angles]
    else:
        points = [(x, y - radius), (x + radius, y), (x, y + radius), (x - radius, y)]
    for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask), 255)):
        canvas.polygon(points, fill=fill)
    return image, mask


def write_pairs(folder: Path, count: int = 8, size: int = 64, seed: int = 0) -> Path:
    """`count` pairs (alternating invariant / variant, invariant ones with a mask) and their manifest."""
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        name, colour, shape = SUBJECTS[index % len(SUBJECTS)]
        background = BACKGROUNDS[index % len(BACKGROUNDS)]
        center = (rng.uniform(0.35, 0.65) * size, rng.uniform(0.35, 0.65) * size)
        target, mask = draw_subject(size, colour, shape, center, rng.uniform(0.2, 0.3) * size, background)
        target.save(images / f"{index}_target.png")
        caption = f"a {name} {shape} on a plain background"
        if index % 2 == 0:
            mask.save(images / f"{index}_mask.png")
            lines.append(
                {
                    "target": f"images/{index}_target.png",
                    "reference_mask": f"images/{index}_mask.png",
                    "caption": caption,
                    "kind": "invariant",
                }
            )
        else:
            other = (rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size)
            reference, _ = draw_subject(size, colour, shape, other, rng.uniform(0.15, 0.35) * size, (128, 128, 128))
            reference.save(images / f"{index}_reference.jpg", quality=95)
            lines.append(
                {
                    "reference": f"images/{index}_reference.jpg",
                    "target": f"images/{index}_target.png",
                    "caption": caption,
                    "kind": "variant",
                }
            )
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict]) -> Path:
    """A TOML file from {"section": {key: value}} (sub-tables as "data.augment")."""
    text = []
    for section, values in sections.items():
        text.append(f"[{section}]")
        text += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        text.append("")
    Path(path).write_text("\n".join(text))
    return Path(path)


def random_model_inputs(context_dim: int, batch: int = 2, pooled_dim: int | None = None, sizes=None, seed: int = 0):
    """Seeded ModelInputs of one training step on the tiny models: latents [B, 4, 8, 8], text context
    [B, 77, context_dim], CLIP [CLS] [B, 64], DINOv2 tokens [B, 257, 64]; γ and σ from a high and a low end."""
    import torch

    from flexip_train.objective import ModelInputs

    g = torch.Generator().manual_seed(seed)
    return ModelInputs(
        latents=torch.randn(batch, 4, 8, 8, generator=g),
        context=torch.randn(batch, 77, context_dim, generator=g),
        clip=torch.randn(batch, 64, generator=g),
        dino=torch.randn(batch, 257, 64, generator=g),
        gates=torch.tensor([0.9, 0.1][:batch]),
        noise=torch.randn(batch, 4, 8, 8, generator=g),
        sigmas=torch.tensor([0.5, 8.0][:batch]),
        pooled=None if pooled_dim is None else torch.randn(batch, pooled_dim, generator=g),
        sizes=None if sizes is None else torch.tensor(sizes, dtype=torch.float32),
    )
