"""Every per-image loop of the nodes advances ComfyUI's progress bar once per image.

A real comfy.utils.ProgressBar reports to the global hook ComfyUI's server installs (it sends
the progress to the UI); here the conftest's `progress` hook records (value, total) for each
update. (Compatibility mode's encoding: tests/comfy/test_compat_pair.py.)
"""

from __future__ import annotations

import pytest
import torch

from tests.comfy.tiny_world import node
from tools.fixtures.faces import draw_faces, face_at

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]  # insightface's skimage call


def steps(count: int) -> list[tuple[int, int]]:
    """One bar of `count` steps, advanced one image at a time."""
    return [(value, count) for value in range(1, count + 1)]


def faces(count: int) -> torch.Tensor:
    return torch.cat([draw_faces(160, 160, [face_at(80, 76, 64)])] * count)


def test_encode_subject_advances_once_per_reference_and_once_for_the_black_reference(world, progress):
    references = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    node(world["pack"], "FlexIPEncodeSubject").encode(
        world["flexip"], world["clip"], references, "average", dino=world["dino"]
    )
    assert progress == steps(4)


def test_encode_subject_with_faces_shows_the_crop_then_the_encoding(world, insightface, progress):
    node(world["pack"], "FlexIPEncodeSubject").encode(
        world["flexip"], world["clip"], faces(2), "average", dino=world["dino"], insightface=insightface
    )
    assert progress == steps(2) + steps(3)


def test_subject_similarity_advances_once_per_generated_and_reference_image(world, progress):
    images = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(6))
    node(world["pack"], "FlexIPSubjectSimilarity").measure(world["clip"], world["dino"], images[:1], images)
    assert progress == steps(4)


def test_face_crop_advances_once_per_image(flexip_pack, insightface, progress):
    node(flexip_pack, "FlexIPFaceCrop").crop(faces(3), insightface, "largest", 0, 112, 1.0, "error")
    assert progress == steps(3)


def test_face_similarity_advances_once_per_reference_and_generated_image(flexip_pack, insightface, progress):
    node(flexip_pack, "FlexIPFaceSimilarity").measure(faces(2), faces(3), insightface)
    assert progress == steps(5)


def test_tradeoff_plot_advances_once_per_thumbnail(flexip_pack, progress):
    images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(7))
    node(flexip_pack, "FlexIPTradeoffPlot").plot(
        gammas=[0.0, 0.5, 1.0],
        images=[images],
        labels=["CLIP-I"],
        width=[320],
        height=[240],
        thumbnail=[64],
        columns=[3],
        metric_1=[0.9, 0.8, 0.7],
    )
    assert progress == steps(3)
