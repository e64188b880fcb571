"""FlexIPTradeoffPlot: identity metrics against γ as a chart, and the images as an annotated contact sheet.

matplotlib is optional for the pack: it is imported when the node runs, and a missing
install is reported as one sentence instead of failing the pack's import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from flexip_model.errors import FlexIPError

from .inputs import int_input, text_input, typed_input
from .progress import with_progress

METRIC_SLOTS = 4
DEFAULT_LABELS = "CLIP-I, DINO-I, face similarity, metric 4"
_DPI = 100
_INSTALL = (
    "FlexIPTradeoffPlot needs matplotlib, an optional dependency of ComfyUI-FlexIP: run "
    "'python -m pip install matplotlib' with ComfyUI's Python and restart ComfyUI."
)


class FlexIPTradeoffPlot:
    DISPLAY_NAME = "FlexIP Trade-off Plot"
    DESCRIPTION = (
        "The identity/editability trade-off of a gate sweep: each metric (CLIP-I, DINO-I, face "
        "similarity, any list of numbers) against γ, and the generated images labelled with their γ."
    )
    CATEGORY = "FlexIP/sweep"
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("chart", "contact_sheet")
    OUTPUT_TOOLTIPS = (
        "The chart: metrics against γ, labelled axes and legend.",
        "The images side by side, each captioned with its γ and metric values.",
    )
    FUNCTION = "plot"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        metric_help = (
            "A list of numbers, one per image (e.g. FlexIPSubjectSimilarity's clip_i); its name comes from labels."
        )
        return {
            "required": {
                "gammas": typed_input("FLOAT", "FlexIPGateSweep's gammas: the x axis.", forceInput=True),
                "images": typed_input("IMAGE", "The generated images, one per γ, in sweep order."),
                "metric_1": typed_input("FLOAT", metric_help, forceInput=True),
                "labels": text_input(DEFAULT_LABELS, "Legend names of metric_1 .. metric_4, comma separated."),
                "width": int_input(768, 256, 4096, "Chart width in pixels.", step=16),
                "height": int_input(512, 192, 4096, "Chart height in pixels.", step=16),
                "thumbnail": int_input(256, 64, 1024, "Contact sheet: width of each image in pixels.", step=16),
                "columns": int_input(5, 1, 16, "Contact sheet: images per row."),
            },
            "optional": {
                f"metric_{slot}": typed_input("FLOAT", metric_help, forceInput=True)
                for slot in range(2, METRIC_SLOTS + 1)
            },
        }

    def plot(
        self,
        gammas: list[float],
        images: list[torch.Tensor],
        labels: list[str],
        width: list[int],
        height: list[int],
        thumbnail: list[int],
        columns: list[int],
        **metrics: list[float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gammas = [float(gamma) for gamma in gammas]
        names = [name.strip() for name in labels[0].split(",")]
        series = {}
        for slot in range(1, METRIC_SLOTS + 1):
            values = metrics.get(f"metric_{slot}")
            if values is None:
                continue
            if len(values) != len(gammas):
                raise FlexIPError(
                    f"FlexIPTradeoffPlot's metric_{slot} has {len(values)} values but gammas has {len(gammas)}: "
                    "give one value per γ (score the images of this sweep)."
                )
            name = names[slot - 1] if slot <= len(names) and names[slot - 1] else f"metric {slot}"
            series[name] = [float(value) for value in values]
        batch = torch.cat([image[..., :3] for image in images])
        if batch.shape[0] != len(gammas):
            raise FlexIPError(
                f"FlexIPTradeoffPlot got {batch.shape[0]} images but {len(gammas)} γ values: connect the images "
                "this sweep generated (one per γ)."
            )
        chart = render_chart(gammas, series, width[0], height[0])
        sheet = render_contact_sheet(batch, gammas, series, thumbnail[0], columns[0])
        return _as_image(chart), _as_image(sheet)


def _matplotlib():
    try:
        from matplotlib import font_manager
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FlexIPError(_INSTALL) from None
    return Figure, FigureCanvasAgg, font_manager


def _fonts(size: int) -> tuple[ImageFont.FreeTypeFont, ImageFont.FreeTypeFont]:
    """Regular and bold DejaVu Sans, bundled with matplotlib: it has γ and needs no system fonts."""
    font_manager = _matplotlib()[2]
    regular = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    bold = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"))
    return ImageFont.truetype(regular, size), ImageFont.truetype(bold, size)


def render_chart(gammas: list[float], series: dict[str, list[float]], width: int, height: int) -> np.ndarray:
    """Metrics against γ, one line each, sorted by γ -> uint8 [height, width, 3] on white."""
    Figure, FigureCanvasAgg, _ = _matplotlib()
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    canvas = FigureCanvasAgg(figure)  # no pyplot: no global figure state shared between prompts
    axes = figure.add_subplot()
    order = sorted(range(len(gammas)), key=gammas.__getitem__)
    x = [gammas[i] for i in order]
    for name, values in series.items():
        axes.plot(x, [values[i] for i in order], marker="o", linewidth=2, label=name)
    axes.set_title("FlexIP trade-off: similarity to the subject against the gate γ")
    axes.set_xlabel("γ  (0 = editability / personalization, 1 = identity / preservation)")
    axes.set_ylabel("similarity to the reference")
    axes.set_xlim(min(0.0, x[0]) - 0.03, max(1.0, x[-1]) + 0.03)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_contact_sheet(
    images: torch.Tensor, gammas: list[float], series: dict[str, list[float]], thumbnail: int, columns: int
) -> np.ndarray:
    """IMAGE [N, H, W, 3] -> uint8 sheet: `columns` per row, each image captioned with γ and its metrics."""
    count, height, width = images.shape[:3]
    thumb_height = max(1, round(height * thumbnail / width))
    font_size = max(10, thumbnail // 14)
    font, bold = _fonts(font_size)
    line = round(font_size * 1.3)
    caption = line * (1 + len(series)) + line // 2
    gap = max(4, thumbnail // 32)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (gap + columns * (thumbnail + gap), gap + rows * (thumb_height + caption + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for index in with_progress(range(count)):
        left = gap + (index % columns) * (thumbnail + gap)
        top = gap + (index // columns) * (thumb_height + caption + gap)
        picture = Image.fromarray(pixels[index]).resize((thumbnail, thumb_height), Image.Resampling.LANCZOS)
        sheet.paste(picture, (left, top))
        text_top = top + thumb_height + line // 4
        draw.text((left, text_top), f"γ = {gammas[index]:.3g}", fill="black", font=bold)
        for row, (name, values) in enumerate(series.items(), start=1):
            draw.text((left, text_top + row * line), f"{name} {values[index]:.3f}", fill=(60, 60, 60), font=font)
    return np.asarray(sheet)


def _as_image(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(0)
