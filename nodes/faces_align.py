"""Face alignment math: 5 landmarks -> a similarity transform onto ArcFace's template, and the warp.

Plain numpy and torch, no insightface: the same template and estimator (Umeyama) that
insightface's `norm_crop` uses, so at `crop_scale` 1 and a size that is a multiple of 112 a
crop here is the crop ArcFace was trained on. Matrices map image pixels to crop pixels,
[2, 3], like OpenCV's `warpAffine`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# ArcFace's 5 points (left eye, right eye, nose tip, left and right mouth corner) in a 112 px crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def template_points(size: int, scale: float = 1.0) -> np.ndarray:
    """The template in a `size` px crop, zoomed out `scale` times around the crop centre; [5, 2]."""
    centre = size / 2
    return (ARCFACE_TEMPLATE * (size / 112.0) - centre) / scale + centre


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking `source` [K, 2] to `target` [K, 2].

    Umeyama (1991), as skimage's SimilarityTransform.estimate; returns [2, 3].
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:  # a reflection would fit better; keep a proper rotation
        signs[-1] = -1
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / source_centred.var(0).sum()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def face_crop_matrix(landmarks: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """Image -> crop matrix [2, 3] that puts the 5 `landmarks` [5, 2] on the (zoomed-out) template."""
    return similarity_transform(landmarks, template_points(size, scale))


def centre_crop_matrix(height: int, width: int, size: int) -> np.ndarray:
    """Image -> crop matrix [2, 3] of the largest centred square, resized to `size`."""
    side = min(height, width)
    factor = size / side
    return np.array(
        [
            [factor, 0.0, -(width - side) / 2 * factor + (factor - 1) / 2],
            [0.0, factor, -(height - side) / 2 * factor + (factor - 1) / 2],
        ]
    )


def warp(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """[H, W, C] image (pixel centres at integer coordinates) -> [size, size, C] crop; black outside.

    Bilinear sampling; when the crop shrinks the image, it is first resized with antialiasing
    to about the crop's scale, so small crops of large photos do not alias.
    """
    matrix = np.asarray(matrix, np.float64)
    height, width = image.shape[:2]
    pixels = image.permute(2, 0, 1).unsqueeze(0).float()
    shrink = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if shrink < 0.5:
        new_height, new_width = max(round(height * shrink), 1), max(round(width * shrink), 1)
        pixels = F.interpolate(
            pixels, size=(new_height, new_width), mode="bilinear", antialias=True, align_corners=False
        )
        # pixel centres move with the resize: x_new = (x + 0.5) * w_new / w - 0.5
        to_resized = np.array(
            [
                [new_width / width, 0, 0.5 * new_width / width - 0.5],
                [0, new_height / height, 0.5 * new_height / height - 0.5],
                [0, 0, 1],
            ]
        )
        matrix = np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_resized)
        matrix, height, width = matrix[:2], new_height, new_width
    source = image_coordinates(matrix, size)
    grid = torch.stack(
        [source[..., 0] * 2 / max(width - 1, 1) - 1, source[..., 1] * 2 / max(height - 1, 1) - 1], dim=-1
    ).unsqueeze(0)
    crop = F.grid_sample(pixels, grid.to(pixels), mode="bilinear", padding_mode="zeros", align_corners=True)
    return crop[0].permute(1, 2, 0).to(image.dtype)


def image_coordinates(matrix: np.ndarray, size: int) -> torch.Tensor:
    """Where each crop pixel comes from in the image: [size, size, 2] (x, y)."""
    inverse = np.linalg.inv(np.vstack([np.asarray(matrix, np.float64), [0, 0, 1]]))[:2]
    v, u = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    crop_points = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    return (crop_points @ torch.from_numpy(inverse).T).float()


def ellipse_mask(box: np.ndarray, matrix: np.ndarray, size: int) -> torch.Tensor:
    """[size, size] mask, 1 inside the ellipse inscribed in the face `box` (x1, y1, x2, y2), in crop space."""
    x1, y1, x2, y2 = (float(value) for value in box[:4])
    source = image_coordinates(matrix, size)
    half_width, half_height = max((x2 - x1) / 2, 1e-3), max((y2 - y1) / 2, 1e-3)
    distance = ((source[..., 0] - (x1 + x2) / 2) / half_width) ** 2 + (
        (source[..., 1] - (y1 + y2) / 2) / half_height
    ) ** 2
    return (distance <= 1).float()
