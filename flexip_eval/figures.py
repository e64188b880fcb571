"""The figures of an evaluation: the γ trade-off chart and one contact sheet per subject."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw

from .benchmark import Subject
from .worklist import Item, gate_label

log = logging.getLogger(__name__)

THUMBNAIL = 128
LABEL_WIDTH = 160


def tradeoff_chart(rows: list[dict], path: Path) -> bool:
    """CLIP-T against DINO-I and against CLIP-I, one curve per method across γ (a single point for the
    base model and for a schedule); False (and one log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install matplotlib for the trade-off chart)", path.name)
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for axis, metric, title in ((axes[0], "dino_i", "DINO-I"), (axes[1], "clip_i", "CLIP-I")):
        for method in methods:
            own = sorted(
                (row for row in rows if row["method"] == method),
                key=lambda row: -1.0 if row["gamma"] is None else row["gamma"],
            )
            x, y = [row[metric] for row in own], [row["clip_t"] for row in own]
            axis.plot(x, y, marker="o", label=method)
            for row in own:
                if row["gamma"] is not None:
                    axis.annotate(
                        f"γ={row['gamma']:g}",
                        (row[metric], row["clip_t"]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )
        axis.set_xlabel(f"{title} (subject fidelity)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("CLIP-T (prompt following)")
    axes[1].legend(fontsize=8)
    figure.suptitle("Editability against identity across the gate γ")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def contact_sheet(subject: Subject, items: list[Item], output: Path, path: Path) -> None:
    """One row per method and γ: its label, then every image of `subject` (prompt by prompt, seed by seed);
    the first row shows the subject's photos."""
    rows: dict[str, list[Item]] = {}
    for item in items:
        if item.subject.name == subject.name:
            rows.setdefault(f"{item.method.name}\n{gate_label(item.method, item.gamma)}", []).append(item)
    columns = max([len(subject.images)] + [len(row) for row in rows.values()])
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * THUMBNAIL, (len(rows) + 1) * THUMBNAIL), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    cells = [(f"{subject.name}\n({subject.class_noun})", list(subject.images))]
    cells += [(label, [output / item.image for item in row]) for label, row in rows.items()]
    for index, (label, paths) in enumerate(cells):
        top = index * THUMBNAIL
        draw.multiline_text((6, top + 6), label, fill=(0, 0, 0))
        for column, image_path in enumerate(paths):
            with Image.open(image_path) as image:
                thumbnail = image.convert("RGB")
                thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
                sheet.paste(thumbnail, (LABEL_WIDTH + column * THUMBNAIL, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
