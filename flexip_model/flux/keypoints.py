"""InfiniteYou's control image: a pose photo fitted to the output size, and its face's 5 keypoints drawn.

As InfiniteYou's reference pipeline draws them (InstantID's style): on black, a stick from each
eye and mouth corner to the nose (a filled ellipse 8 px thick, in the colour of its outer point,
at 60 % brightness), then a filled disc of radius 10 px at each point in its full colour. The
drawing is rasterised here with torch, not with OpenCV, so edge pixels may differ from the
reference's; the InfuseNet reads the VAE-encoded image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# the 5 points in InsightFace's order: left eye, right eye, nose, left and right mouth corner
POINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
STICKS = ((0, 2), (1, 2), (3, 2), (4, 2))  # to the nose; a stick takes its first point's colour
STICK_HALF_WIDTH, STICK_BRIGHTNESS, POINT_RADIUS = 4, 0.6, 10


def fit_to_size(image: Tensor, width: int, height: int) -> Tensor:
    """IMAGE [H, W, C] scaled to `width` (or `height`, whichever side of the target is shorter) and
    centred on white at [height, width, C], as InfiniteYou's resize_and_pad; overflow is cropped."""
    source_height, source_width = image.shape[0], image.shape[1]
    if width <= height:
        size = (int(width * source_height / source_width), width)
    else:
        size = (height, int(height * source_width / source_height))
    scaled = F.interpolate(
        image.movedim(-1, 0).unsqueeze(0).float(), size=size, mode="bicubic", antialias=True, align_corners=False
    )[0].movedim(0, -1)
    canvas = torch.ones(height, width, image.shape[-1], dtype=scaled.dtype)
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    rows = slice(max(top, 0), min(top + size[0], height))
    columns = slice(max(left, 0), min(left + size[1], width))
    canvas[rows, columns] = scaled[rows.start - top : rows.stop - top, columns.start - left : columns.stop - left]
    return canvas.clamp(0.0, 1.0)


def draw_keypoints(points: Tensor, width: int, height: int) -> Tensor:
    """The keypoint drawing [height, width, 3] in 0..1 of `points` [5, 2] (x, y in pixels).

    Centres, lengths and angles are truncated to integers as the reference passes them to OpenCV,
    whose pixel (i, j) sits at (i, j), so a shape covers what OpenCV's covers up to its edge pixels.
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    canvas = torch.zeros(height, width, 3)
    for start, end in STICKS:
        (x0, y0), (x1, y1) = points[start].tolist(), points[end].tolist()
        centre_x, centre_y = int((x0 + x1) / 2), int((y0 + y1) / 2)
        half_length = max(int(math.hypot(x1 - x0, y1 - y0) / 2), 1)
        angle = math.radians(int(math.degrees(math.atan2(y0 - y1, x0 - x1))))
        along = (xs - centre_x) * math.cos(angle) + (ys - centre_y) * math.sin(angle)
        across = -(xs - centre_x) * math.sin(angle) + (ys - centre_y) * math.cos(angle)
        # OpenCV fills a polygon with its edge pixels: half a pixel more on each side
        inside = (along / (half_length + 0.5)) ** 2 + (across / (STICK_HALF_WIDTH + 0.5)) ** 2 <= 1.0
        canvas[inside] = torch.tensor(POINT_COLOURS[start], dtype=torch.float32) / 255
    canvas = (canvas * 255 * STICK_BRIGHTNESS).floor() / 255  # the reference's uint8 cast of the dimmed sticks
    for (x, y), colour in zip(points.tolist(), POINT_COLOURS):
        inside = (xs - int(x)) ** 2 + (ys - int(y)) ** 2 <= POINT_RADIUS**2
        canvas[inside] = torch.tensor(colour, dtype=torch.float32) / 255
    return canvas
