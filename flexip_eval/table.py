"""The Table-1-style summary: per-image metric records -> one row per (method, γ) with its mean metrics and mRank.

mRank (FlexIP's Table 1) is the plain mean of a row's ranks on the five metric columns, higher being better
in each and rank 1 the best.
"""

from __future__ import annotations

import csv
import io
import math

from flexip_model.errors import FlexIPError

METRICS = ("clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic")
HEADINGS = {
    "clip_t": "CLIP-T",
    "clip_i": "CLIP-I",
    "dino_i": "DINO-I",
    "clip_iqa": "CLIP-IQA",
    "aesthetic": "Aesthetic",
}
CSV_COLUMNS = ("method", "gamma", "n", "mrank", *METRICS)


def mean_rows(records: list[dict]) -> list[dict]:
    """Per (method, gamma), in order of first appearance: {"method", "gamma", each metric's mean, "n"}.

    A record is one image's {"method": str, "gamma": float or None, metric: float, ...}; other keys are ignored.
    """
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for record in records:
        missing = [metric for metric in METRICS if metric not in record]
        if missing:
            raise FlexIPError(
                f"a metric record of {record.get('method')!r} at γ {record.get('gamma')} lacks "
                f"{', '.join(missing)}: delete that line of the records file and run again to rescore."
            )
        groups.setdefault((record["method"], record["gamma"]), []).append(record)
    return [
        {
            "method": method,
            "gamma": gamma,
            **{metric: math.fsum(r[metric] for r in group) / len(group) for metric in METRICS},
            "n": len(group),
        }
        for (method, gamma), group in groups.items()
    ]


def _average_ranks(values: list[float]) -> list[float]:
    """Rank 1 for the highest; tied values share the mean of the ranks they span."""
    return [
        1 + sum(other > value for other in values) + (sum(other == value for other in values) - 1) / 2
        for value in values
    ]


def with_mrank(rows: list[dict]) -> list[dict]:
    """The rows with "mrank" added: the mean of each row's ranks (1 = best) on the METRICS columns.

    Ties: rows tied on a column are ordered by their overall standing, the sum of their average ranks over all
    columns (the better-placed row ranks better); rows tied on that too keep their order (the earlier row
    ranks better). Table 1 rounds its metrics to 3 decimals, which ties ELITE and MoMA on Aesthetic (5.437):
    only MoMA 7, ELITE 8 reproduces both their mRanks (6.2 and 5.8; averaged 7.5 each gives 6.1 and 5.9, the
    earlier row first gives 6.0 and 6.0), and MoMA is the better-placed of the two elsewhere (rank sum 22
    against ELITE's 23), as its unrounded Aesthetic presumably was too.
    """
    columns = [[row[metric] for row in rows] for metric in METRICS]
    standing = [sum(ranks) for ranks in zip(*(_average_ranks(column) for column in columns))]
    rank_sums = [0] * len(rows)
    for column in columns:
        order = sorted(range(len(rows)), key=lambda i: (-column[i], standing[i], i))
        for rank, index in enumerate(order, start=1):
            rank_sums[index] += rank
    # a sum of whole ranks over 5 columns divided once: the same float as Table 1's one-decimal values
    return [{**row, "mrank": rank_sum / len(METRICS)} for row, rank_sum in zip(rows, rank_sums)]


def _gamma(gamma: float | None) -> str:
    return "—" if gamma is None else f"{gamma:g}"


def markdown_table(rows: list[dict]) -> str:
    """Rows from `with_mrank` as a Markdown table like the paper's Table 1 (metrics to 3 decimals)."""
    lines = [
        "| Method | γ | n | mRank↓ | " + " | ".join(HEADINGS[m] + "↑" for m in METRICS) + " |",
        "|---|---|---|---|" + "---|" * len(METRICS),
    ]
    for row in rows:
        cells = [row["method"], _gamma(row["gamma"]), str(row["n"]), f"{row['mrank']:.1f}"]
        lines.append("| " + " | ".join(cells + [f"{row[m]:.3f}" for m in METRICS]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict]) -> str:
    """Rows from `with_mrank` as CSV with full-precision numbers; gamma is empty for a method without γ."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "gamma": "" if row["gamma"] is None else row["gamma"]})
    return buffer.getvalue()
