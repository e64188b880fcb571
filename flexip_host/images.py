"""Image files as ComfyUI IMAGE tensors ([H, W, 3] float in [0, 1]): decoding and square fitting.

The trainer's pairs and the evaluation's benchmark images are read by this one decoder, so both
see a photo the same way (EXIF rotation applied, RGB) and refuse a bad file with one sentence.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from flexip_model.errors import FlexIPError


def decode_image(
    data: bytes,
    where: str,
    mask: bool = False,
    fix: str = "re-save it as PNG or JPEG and pack again, or run --check-data to list every bad line",
) -> torch.Tensor:
    """[H, W, 3] RGB (or [H, W] for a mask) float in [0, 1] from encoded bytes; FlexIPError naming `where`
    and how to `fix` it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image).convert("L" if mask else "RGB")
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            size = (image.height, image.width) if mask else (image.height, image.width, 3)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:  # PIL: SyntaxError = broken PNG
        raise FlexIPError(f"{where} is not a readable image ({error}): {fix}.") from None
    return pixels.reshape(size).float() / 255.0


def square_crop(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) of fitting an H×W image to size×size."""
    scale = size / min(height, width)
    resized_height, resized_width = max(size, round(height * scale)), max(size, round(width * scale))
    return resized_height, resized_width, (resized_height - size) // 2, (resized_width - size) // 2


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to `size` and center-crop: [H, W, C] -> [size, size, C]."""
    resized_height, resized_width, top, left = square_crop(image.shape[0], image.shape[1], size)
    resized = resize_image(image, (resized_height, resized_width))
    return resized[top : top + size, left : left + size]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize [H, W, C] -> [size[0], size[1], C], clamped to [0, 1]."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    chw = image.permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(chw, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(0).permute(1, 2, 0).clamp(0.0, 1.0)
