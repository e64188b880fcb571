"""FlexIPSubjectSimilarity (real ComfyUI encoders, tiny, random weights) and FlexIPTradeoffPlot."""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import flexip_model
from tests.comfy.tiny_world import node

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_thread")]

GAMMAS = [0.0, 0.25, 0.5, 0.75, 1.0]
COLOURS = [(230, 60, 60), (60, 180, 60), (60, 60, 230), (230, 200, 40), (150, 60, 200)]


def as_image(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


def subject(shift: int = 0, disc=(220, 30, 30), square=(30, 30, 220)) -> torch.Tensor:
    """The server tests' drawn subject: a disc and a square on grey, IMAGE [1, 96, 96, 3]."""
    picture = Image.new("RGB", (96, 96), (128, 128, 128))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((10 + shift, 10, 60 + shift, 60), fill=disc)
    draw.rectangle((50, 50, 86, 86), fill=square)
    return as_image(picture)


def unrelated() -> torch.Tensor:
    """Uniform noise and a flat blue field: nothing of the subject."""
    noise = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(0))
    flat = torch.zeros(1, 96, 96, 3) + torch.tensor([0.1, 0.5, 0.9])
    return torch.cat([noise, flat])


# What random weights can and cannot show. They can show that the node compares the right
# embeddings the right way: the same image scores 1 (cosine of identical vectors), each
# generated image gets its own score in batch order, references are averaged, and inputs that
# differ get different embeddings, so unrelated images score below 1 (measured with these tiny
# encoders: CLIP-I 0.93 / 0.43, DINO-I 0.81 / 0.83 for noise / flat field; the generated
# full-size CLIP-H and DINOv2-L give 0.77 / 0.41 and 0.51 / 0.35). They cannot show that the
# scores rank images the way people judge likeness (a recoloured subject is not "more similar"
# than noise for a random network); that needs trained encoders.
def test_identical_images_score_one_and_unrelated_images_score_lower(flexip_pack, tiny_clip_vision, tiny_dino):
    reference = subject()
    images = torch.cat([reference, unrelated()])
    clip_i, dino_i, table = node(flexip_pack, "FlexIPSubjectSimilarity").measure(
        tiny_clip_vision, tiny_dino, reference, images
    )
    assert len(clip_i) == len(dino_i) == 3
    # cosine of two identical float32 vectors: 1 up to rounding (~1e-7)
    assert clip_i[0] == pytest.approx(1.0, abs=1e-5) and dino_i[0] == pytest.approx(1.0, abs=1e-5)
    for index in (1, 2):
        assert clip_i[index] < 0.95 and dino_i[index] < 0.95, table
    assert table.splitlines()[0] == "image  CLIP-I  DINO-I" and table.splitlines()[-1].startswith("mean")


def test_each_image_is_scored_alone_and_several_references_are_averaged(flexip_pack, tiny_clip_vision, tiny_dino):
    similarity = node(flexip_pack, "FlexIPSubjectSimilarity")
    first, second = subject(), subject(shift=20, disc=(30, 200, 30))
    images = torch.cat([subject(shift=8), unrelated()])
    one = similarity.measure(tiny_clip_vision, tiny_dino, first, images)
    other = similarity.measure(tiny_clip_vision, tiny_dino, second, images)
    both = similarity.measure(tiny_clip_vision, tiny_dino, torch.cat([first, second]), images)
    alone = similarity.measure(tiny_clip_vision, tiny_dino, first, images[2:])
    for metric in (0, 1):
        expected = [(a + b) / 2 for a, b in zip(one[metric], other[metric])]
        assert both[metric] == pytest.approx(expected, abs=1e-5)
        assert alone[metric][0] == pytest.approx(one[metric][2], abs=1e-5)  # batch neighbours do not matter


def test_swapped_encoders_are_a_readable_error(flexip_pack, tiny_clip_vision, tiny_dino):
    with pytest.raises(flexip_model.FlexIPError, match="clip_vision and dino inputs are swapped"):
        node(flexip_pack, "FlexIPSubjectSimilarity").measure(tiny_dino, tiny_clip_vision, subject(), subject())


def sweep_images(size: int = 64) -> torch.Tensor:
    """Five flat images, one colour each, so each contact-sheet cell can be found by its colour."""
    return torch.cat([torch.ones(1, size, size, 3) * torch.tensor(colour) / 255.0 for colour in COLOURS])


def plot(
    pack,
    metrics: dict[str, list[float]],
    images=None,
    gammas=GAMMAS,
    width=768,
    height=512,
    thumbnail=128,
    columns=5,
    labels="CLIP-I, DINO-I, face similarity, metric 4",
):
    """Call the node the way ComfyUI calls an INPUT_IS_LIST node: every input is a list."""
    images = sweep_images() if images is None else images
    return node(pack, "FlexIPTradeoffPlot").plot(
        gammas=list(gammas),
        images=[images],
        labels=[labels],
        width=[width],
        height=[height],
        thumbnail=[thumbnail],
        columns=[columns],
        **metrics,
    )


# Illustrative numbers with the shape the paper reports: identity rises with γ.
CLIP_I = [0.71, 0.76, 0.80, 0.84, 0.87]
DINO_I = [0.52, 0.60, 0.66, 0.71, 0.74]


def test_chart_has_the_requested_size_and_draws_every_metric(flexip_pack, cache_dir):
    chart, sheet = plot(flexip_pack, {"metric_1": CLIP_I, "metric_2": DINO_I})
    assert chart.shape == (1, 512, 768, 3) and chart.dtype == torch.float32
    pixels = (chart[0].numpy() * 255).round().astype(np.uint8)
    screenshots = cache_dir / "screenshots"
    screenshots.mkdir(exist_ok=True)
    Image.fromarray(pixels).save(screenshots / "tradeoff_plot.png")
    Image.fromarray((sheet[0].numpy() * 255).round().astype(np.uint8)).save(screenshots / "tradeoff_contact_sheet.png")
    drawn = (pixels != 255).any(axis=-1).mean()
    assert 0.02 < drawn < 0.5  # axes, ticks, labels, lines and legend on a white background
    # matplotlib's first two default colours: one line (and legend entry) per metric
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (np.abs(pixels.astype(int) - colour).max(axis=-1) <= 8).sum() > 200, colour


def test_contact_sheet_shows_each_image_in_order_with_a_caption(flexip_pack):
    _, sheet = plot(flexip_pack, {"metric_1": CLIP_I, "metric_2": DINO_I}, thumbnail=96, columns=3)
    pixels = (sheet[0].numpy() * 255).round().astype(int)
    height, width = pixels.shape[:2]
    assert width >= 3 * 96 and height >= 2 * 96  # 3 columns, 2 rows
    for index, (row, column) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]):  # batch order
        ys, xs = np.nonzero(np.abs(pixels - np.array(COLOURS[index])).max(axis=-1) <= 2)
        assert len(xs) > 0.9 * 96 * 96, f"image {index} is missing"
        # its pixels lie in its own cell: column `column` of 3, row `row` of 2
        assert int(xs.mean() * 3 / width) == column and int(ys.mean() * 2 / height) == row, f"image {index}"
        caption = pixels[ys.max() + 1 : ys.max() + 40, xs.min() : xs.max() + 1]
        assert (caption.max(axis=-1) < 100).sum() > 30, f"image {index} has no caption"  # dark text


def test_metric_with_a_value_per_image_missing_is_a_readable_error(flexip_pack):
    with pytest.raises(flexip_model.FlexIPError, match="metric_2 has 4 values but gammas has 5"):
        plot(flexip_pack, {"metric_1": CLIP_I, "metric_2": DINO_I[:4]})


def test_images_not_from_this_sweep_are_a_readable_error(flexip_pack):
    with pytest.raises(flexip_model.FlexIPError, match="got 3 images but 5 γ values"):
        plot(flexip_pack, {"metric_1": CLIP_I}, images=sweep_images()[:3])


class Hidden(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import <name>` fail as it does where the package is not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}")


def test_missing_matplotlib_is_a_one_sentence_install_message(flexip_pack, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    monkeypatch.setattr(sys, "meta_path", [Hidden("matplotlib"), *sys.meta_path])
    with pytest.raises(flexip_model.FlexIPError, match=r"needs matplotlib.*pip install matplotlib"):
        plot(flexip_pack, {"metric_1": CLIP_I})


def test_plot_module_imports_matplotlib_only_when_the_node_runs(repo_root):
    tree = ast.parse((repo_root / "nodes" / "plot.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [alias.name for n in top_level for alias in n.names] + [
        n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)
    ]
    assert not any(name.startswith("matplotlib") for name in names)
