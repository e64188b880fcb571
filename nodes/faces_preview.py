"""The face preview: detected boxes, their left-to-right numbers and the 5 landmarks, drawn on the images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .faces_runtime import DetectedFace

CHOSEN = (40, 220, 60)
OTHER = (250, 200, 40)
LANDMARK = (230, 40, 40)
NO_FACE = (230, 40, 40)


def draw_preview(images: torch.Tensor, faces: list[list[DetectedFace]], chosen: list[int | None]) -> torch.Tensor:
    """IMAGE [N, H, W, C] -> IMAGE [N, H, W, 3] with the faces of each image drawn (green: the chosen one)."""
    out = []
    for image, found, pick in zip(images, faces, chosen):
        canvas = Image.fromarray((image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
        draw = ImageDraw.Draw(canvas)
        line = max(round(min(canvas.size) / 200), 1)
        for index, face in enumerate(found):
            colour = CHOSEN if index == pick else OTHER
            x1, y1, x2, y2 = (float(value) for value in face.box)
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
            draw.text((x1 + line + 1, y1 + line + 1), str(index), fill=colour)
            radius = line + 1
            for x, y in face.landmarks:
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=LANDMARK)
        if not found:
            draw.text((line + 2, line + 2), "no face", fill=NO_FACE)
        out.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    return torch.stack(out)
