"""Face alignment math (nodes/faces_align.py) against insightface's own template crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]  # insightface's skimage call


@pytest.fixture(scope="module")
def align(flexip_pack):
    return flexip_pack.nodes.faces_align


def _rotation(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift(align):
    points = np.array([[10.0, 20.0], [50.0, 22.0], [30.0, 40.0], [15.0, 60.0], [45.0, 61.0]])
    moved = 1.7 * points @ _rotation(23).T + [5.0, -8.0]
    matrix = align.similarity_transform(points, moved)
    np.testing.assert_allclose(matrix[:, :2], 1.7 * _rotation(23), atol=1e-9)  # exact data: float64 round-off only
    np.testing.assert_allclose(matrix[:, 2], [5.0, -8.0], atol=1e-9)


def test_crop_matrix_matches_insightface_estimate_norm(align):
    from insightface.utils.face_align import estimate_norm

    noise = np.random.default_rng(0).normal(0, 2, (5, 2))
    landmarks = (align.ARCFACE_TEMPLATE * 2.3 @ _rotation(-12).T + [140.0, 95.0] + noise).astype(np.float32)
    for size in (112, 224):
        # the same Umeyama estimate; 1e-6 relative leaves room for skimage's float32 template only
        np.testing.assert_allclose(
            align.face_crop_matrix(landmarks, size), estimate_norm(landmarks, size), rtol=1e-6, atol=1e-6
        )


def test_warp_matches_opencv_warp_affine_of_norm_crop(align):
    from insightface.utils.face_align import norm_crop

    image = torch.rand(120, 160, 3, generator=torch.Generator().manual_seed(0))
    landmarks = align.ARCFACE_TEMPLATE * 0.9 + [30.0, 10.0]
    ours = align.warp(image, align.face_crop_matrix(landmarks, 112), 112).numpy()
    theirs = norm_crop((image.numpy() * 255).astype(np.float32), landmarks.astype(np.float32), 112) / 255
    # both bilinear; OpenCV quantises the sample position to 1/32 px, hence a few 1e-2 at most on noise
    assert np.abs(ours - theirs)[4:-4, 4:-4].mean() < 5e-3


def test_crop_scale_zooms_out_around_the_crop_centre(align):
    tight, loose = align.template_points(224, 1.0), align.template_points(224, 2.0)
    np.testing.assert_allclose(loose - 112, (tight - 112) / 2)


def test_centre_crop_matrix_takes_the_middle_square(align):
    image = torch.zeros(40, 80, 3)
    image[:, 20:60] = 1.0  # the centred 40x40 square is white, the sides black
    crop = align.warp(image, align.centre_crop_matrix(40, 80, 40), 40)
    assert crop.min().item() == pytest.approx(1.0, abs=1e-4)  # bilinear weights in float32


def test_large_shrinks_are_antialiased(align):
    stripes = torch.zeros(800, 800, 3)
    stripes[:, ::2] = 1.0  # one-pixel stripes: point sampling would give pure 0 or 1
    crop = align.warp(stripes, align.centre_crop_matrix(800, 800, 100), 100)
    assert crop.min().item() > 0.4 and crop.max().item() < 0.6


def test_ellipse_mask_fills_the_inscribed_ellipse_of_the_box(align):
    mask = align.ellipse_mask(np.array([0.0, 0.0, 100.0, 100.0]), align.centre_crop_matrix(100, 100, 100), 100)
    assert mask[50, 50] == 1 and mask[2, 2] == 0 and mask[98, 98] == 0
    assert mask.mean().item() == pytest.approx(np.pi / 4, abs=0.02)  # area of a disc in its square, pixelised
