"""FlexIP InfiniteYou Keypoints: InfiniteYou's 5-keypoint control image from a pose photo.

The drawing is checked against OpenCV drawing the same shapes the way InfiniteYou's pipeline calls
it (integer centres, cv2.ellipse2Poly + fillConvexPoly for the sticks, cv2.circle for the points):
our torch rasterisation samples pixel centres, so pixels on a shape's edge may differ; at least
99 % of the pixels must agree and every colour's region must overlap OpenCV's by 90 % (IoU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flexip_model.errors import FlexIPError
from flexip_model.flux.keypoints import POINT_COLOURS, STICKS, draw_keypoints, fit_to_size
from tools.fixtures.faces import draw_faces, face_at

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # insightface's skimage call
POINTS = torch.tensor([[90.0, 80.0], [150.0, 84.0], [121.0, 118.0], [98.0, 152.0], [146.0, 155.0]])


def opencv_drawing(points: np.ndarray, width: int, height: int) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    out = np.zeros([height, width, 3])
    for start, end in STICKS:
        x, y = points[[start, end], 0], points[[start, end], 1]
        length = math.hypot(x[0] - x[1], y[0] - y[1])
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(x.mean()), int(y.mean())), (int(length / 2), 4), int(angle), 0, 360, 1)
        out = cv2.fillConvexPoly(out.copy(), polygon, POINT_COLOURS[start])
    out = (out * 0.6).astype(np.uint8)
    for (x, y), colour in zip(points, POINT_COLOURS):
        out = cv2.circle(out.copy(), (int(x), int(y)), 10, colour, -1)
    return out


def test_the_drawing_matches_opencv_drawing_the_same_keypoints():
    ours = (draw_keypoints(POINTS, 256, 224) * 255).round().to(torch.uint8).numpy()
    theirs = opencv_drawing(POINTS.numpy(), 256, 224)
    assert ours.shape == theirs.shape == (224, 256, 3)
    agree = (ours == theirs).all(axis=-1)
    assert agree.mean() >= 0.99, f"{agree.mean():.4f} of the pixels agree"
    dimmed = [tuple(int(c * 0.6) for c in POINT_COLOURS[start]) for start, _ in STICKS]
    for colour in (*POINT_COLOURS, *dimmed):
        mine, reference = (ours == colour).all(axis=-1), (theirs == colour).all(axis=-1)
        assert reference.any()
        assert (mine & reference).sum() / (mine | reference).sum() >= 0.9, colour


def test_fitting_scales_the_shorter_target_side_and_centres_on_white():
    photo = torch.zeros(100, 200, 3)  # landscape, black
    tall = fit_to_size(photo, 64, 128)  # width is the shorter side: 64 x 32, centred
    assert tall.shape == (128, 64, 3)
    assert torch.equal(tall[48:80], torch.zeros(32, 64, 3)) and bool((tall[:48] == 1).all())
    wide = fit_to_size(photo, 256, 64)  # height is the shorter side: 128 x 64, centred
    assert bool((wide[:, 64:192] == 0).all()) and bool((wide[:, :64] == 1).all())


def test_the_node_draws_the_face_it_finds_at_its_landmarks(flexip_pack, insightface):
    import comfy.sample  # noqa: F401  (the conftest has set ComfyUI up)

    node = flexip_pack.node_classes["FlexIPInfiniteYouKeypoints"]()
    photo = draw_faces(192, 192, [face_at(96, 90, 80)])
    keypoints, fitted = node.draw(insightface, photo, 192, 192)
    assert keypoints.shape == fitted.shape == (1, 192, 192, 3)
    torch.testing.assert_close(fitted[0], photo[0], atol=2e-3, rtol=0)  # same size: the photo itself
    faces = flexip_pack.nodes.faces_runtime.detect_faces(insightface, fitted[0], (640, 320, 160))[0]
    assert len(faces) == 1
    for (x, y), colour in zip(faces[0].landmarks, POINT_COLOURS):
        pixel = (keypoints[0, int(y), int(x)] * 255).round().tolist()
        assert pixel == list(colour)


def test_a_photo_without_a_face_is_one_sentence(flexip_pack, insightface):
    node = flexip_pack.node_classes["FlexIPInfiniteYouKeypoints"]()
    with pytest.raises(FlexIPError, match="FlexIPInfiniteYouKeypoints found no face in its image"):
        node.draw(insightface, draw_faces(128, 128, []), 128, 128)
