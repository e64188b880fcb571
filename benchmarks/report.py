"""Figures as JSON lines on stdout: {"name", "value", "unit", "target", "met"[, "note"]}, then a summary."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured figure; `met` is None for report-only figures (target "report")."""

    name: str
    value: Any
    unit: str
    target: str
    met: bool | None = None
    note: str = ""

    def as_json(self) -> str:
        value = self.value
        if isinstance(value, float) and math.isfinite(value):
            value = round(value, 6)
        entry = {"name": self.name, "value": value, "unit": self.unit, "target": self.target, "met": self.met}
        if self.note:
            entry["note"] = self.note
        return json.dumps(entry, ensure_ascii=False)


@dataclass
class Report:
    """Prints each figure as it is measured and the summary line last."""

    figures: list[Figure] = field(default_factory=list)
    out: Any = sys.stdout

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.as_json(), file=self.out, flush=True)
        return figure

    def summary(self, seconds: float, device: str) -> dict:
        judged = [f for f in self.figures if f.met is not None]
        missed = [f.name for f in judged if not f.met]
        entry = {
            "name": "summary",
            "value": len(judged) - len(missed),
            "unit": "targets met",
            "target": len(judged),
            "met": not missed,
            "missed": missed,
            "report_only": [f.name for f in self.figures if f.met is None],
            "wall_s": round(seconds, 1),
            "device": device,
        }
        print(json.dumps(entry, ensure_ascii=False), file=self.out, flush=True)
        return entry
