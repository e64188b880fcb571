"""The import contracts stay in step with the code they name.

import-linter (`make lint`, the contracts in pyproject.toml) checks who imports whom; these tests check
that its lists are complete: the independence contract over the node modules names every module of
nodes/ that defines a node class, and nothing else. Read from the source (ast), without ComfyUI.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
NODES = REPO / "nodes"


def contract(contract_id: str) -> dict:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return next(item for item in contracts["contracts"] if item.get("id") == contract_id)


def node_modules() -> set[str]:
    """Modules defining a node class: a class with a FUNCTION or an execute method, as ComfyUI calls them."""
    found = set()
    for path in NODES.glob("*.py"):
        for item in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(item, ast.ClassDef) and any(
                (isinstance(part, ast.Assign) and any(getattr(t, "id", "") == "FUNCTION" for t in part.targets))
                or (isinstance(part, ast.FunctionDef) and part.name == "execute")
                for part in item.body
            ):
                found.add(path.stem)
    return found


def test_the_node_modules_are_the_fifteen_registered_families():
    assert node_modules() == {
        "apply",
        "encode",
        "faces_crop",
        "faces_loader",
        "faces_similarity",
        "infiniteyou_apply",
        "infiniteyou_face",
        "infiniteyou_keypoints",
        "infiniteyou_loader",
        "loader",
        "pair_loader",
        "plot",
        "schedule",
        "similarity",
        "sweep",
    }


def test_the_independence_contract_names_every_node_module():
    named = set(contract("node-modules-independent")["modules"])
    assert named == {f"nodes.{name}" for name in node_modules()}
