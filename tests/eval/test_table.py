"""The Table-1-style summary: per-image records averaged per (method, γ), ranked into mRank, written as Markdown
and CSV; mRank reproduces the paper's Table 1 (docs/design.md §9) from its five metric columns exactly."""

from __future__ import annotations

import csv
import io

import pytest

from flexip_eval.table import METRICS, csv_table, markdown_table, mean_rows, with_mrank
from flexip_model.errors import FlexIPError
from tests.support.assertions import assert_one_sentence

pytestmark = pytest.mark.eval

# FlexIP Table 1, verbatim: method, mRank, CLIP-T, CLIP-I, DINO-I, CLIP-IQA, Aesthetic
TABLE_1 = [
    ("BLIP-Diffusion", 8.8, 0.166, 0.681, 0.374, 0.486, 5.234),
    ("ELITE", 6.2, 0.269, 0.793, 0.657, 0.522, 5.437),
    ("MoMA", 5.8, 0.265, 0.830, 0.656, 0.546, 5.437),
    ("SSR-Encoder", 5.2, 0.277, 0.802, 0.581, 0.568, 5.578),
    ("IP-Adapter", 4.2, 0.209, 0.855, 0.728, 0.581, 5.594),
    ("IP-Adapter-Instruct", 4.8, 0.234, 0.833, 0.701, 0.584, 5.459),
    ("λ-Eclipse", 4.4, 0.296, 0.747, 0.467, 0.589, 5.597),
    ("DisEnVisioner", 4.4, 0.255, 0.851, 0.732, 0.470, 5.658),
    ("FlexIP", 1.2, 0.284, 0.873, 0.739, 0.598, 6.039),
]


def _row(method: str, gamma: float | None, *values: float, n: int = 1) -> dict:
    return {"method": method, "gamma": gamma, **dict(zip(METRICS, values)), "n": n}


def test_mrank_reproduces_table_1_exactly():
    rows = with_mrank([_row(method, None, *values) for method, _, *values in TABLE_1])
    # exact: a sum of whole ranks divided by 5 is the float nearest the one-decimal value, as the literal is
    assert [row["mrank"] for row in rows] == [mrank for _, mrank, *_ in TABLE_1]


def test_mrank_ranks_higher_as_better_and_keeps_the_order_of_full_ties():
    rows = with_mrank(
        [
            _row("low", None, 0.1, 0.1, 0.1, 0.1, 1.0),
            _row("high", None, 0.2, 0.2, 0.2, 0.2, 2.0),
            _row("high again", None, 0.2, 0.2, 0.2, 0.2, 2.0),
        ]
    )
    assert [row["mrank"] for row in rows] == [3.0, 1.0, 2.0]


def test_mean_rows_average_each_method_and_gamma_in_order_of_appearance():
    records = [
        {"method": "flexip", "gamma": 0.5, "subject": "dog", **dict(zip(METRICS, (0.2, 0.6, 0.4, 0.5, 5.0)))},
        {"method": "base", "gamma": None, "subject": "dog", **dict(zip(METRICS, (0.3, 0.5, 0.3, 0.4, 4.0)))},
        {"method": "flexip", "gamma": 0.5, "subject": "cat", **dict(zip(METRICS, (0.4, 0.8, 0.6, 0.7, 6.0)))},
        {"method": "flexip", "gamma": 1.0, "subject": "cat", **dict(zip(METRICS, (0.1, 0.9, 0.8, 0.6, 5.5)))},
    ]
    rows = mean_rows(records)
    assert [(row["method"], row["gamma"], row["n"]) for row in rows] == [
        ("flexip", 0.5, 2),
        ("base", None, 1),
        ("flexip", 1.0, 1),
    ]
    assert [rows[0][metric] for metric in METRICS] == pytest.approx([0.3, 0.7, 0.5, 0.6, 5.5], abs=1e-12)


def test_a_record_without_a_metric_is_one_sentence():
    with pytest.raises(FlexIPError) as error:
        mean_rows([{"method": "flexip", "gamma": 0.5, "clip_t": 0.2}])
    assert_one_sentence(str(error.value), "flexip", "clip_i")


def test_markdown_and_csv_tables_hold_every_row_and_column():
    rows = with_mrank(
        [_row("flexip", 0.5, 0.28412, 0.87, 0.74, 0.6, 6.0391, n=8), _row("base", None, 0.3, 0.5, 0.3, 0.4, 4.0, n=8)]
    )
    markdown = markdown_table(rows).splitlines()
    assert markdown[0] == ("| Method | γ | n | mRank↓ | CLIP-T↑ | CLIP-I↑ | DINO-I↑ | CLIP-IQA↑ | Aesthetic↑ |")
    assert markdown[2] == "| flexip | 0.5 | 8 | 1.2 | 0.284 | 0.870 | 0.740 | 0.600 | 6.039 |"
    assert markdown[3] == "| base | — | 8 | 1.8 | 0.300 | 0.500 | 0.300 | 0.400 | 4.000 |"

    parsed = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert list(parsed[0]) == ["method", "gamma", "n", "mrank", *METRICS]
    assert parsed[0]["gamma"] == "0.5" and parsed[1]["gamma"] == ""
    assert float(parsed[0]["clip_t"]) == 0.28412 and float(parsed[0]["aesthetic"]) == 6.0391  # full precision
