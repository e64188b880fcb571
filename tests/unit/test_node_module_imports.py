"""nodes/ layering: a node module imports flexip_model and helper modules, never another node module.

Read from the source (ast), so the rule holds without importing ComfyUI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

NODES = Path(__file__).resolve().parents[2] / "nodes"


def _tree(name: str) -> ast.Module:
    return ast.parse((NODES / f"{name}.py").read_text(encoding="utf-8"))


def node_modules() -> set[str]:
    """Modules defining a node class: a class with a FUNCTION or an execute method, as ComfyUI calls them."""
    found = set()
    for path in NODES.glob("*.py"):
        for item in _tree(path.stem).body:
            if isinstance(item, ast.ClassDef) and any(
                (isinstance(part, ast.Assign) and any(getattr(t, "id", "") == "FUNCTION" for t in part.targets))
                or (isinstance(part, ast.FunctionDef) and part.name == "execute")
                for part in item.body
            ):
                found.add(path.stem)
    return found


def sibling_imports(name: str) -> set[str]:
    """The nodes/ modules that `name` imports (relative imports of level 1)."""
    return {
        item.module.split(".")[0]
        for item in ast.walk(_tree(name))
        if isinstance(item, ast.ImportFrom) and item.level == 1 and item.module
    }


def test_the_node_modules_are_the_eleven_registered_families():
    assert node_modules() == {
        "apply",
        "encode",
        "faces_crop",
        "faces_loader",
        "faces_similarity",
        "loader",
        "pair_loader",
        "plot",
        "schedule",
        "similarity",
        "sweep",
    }


@pytest.mark.parametrize("name", sorted(path.stem for path in NODES.glob("*.py") if path.stem != "__init__"))
def test_no_nodes_module_imports_a_node_module(name):
    crossing = sibling_imports(name) & node_modules()
    assert not crossing, f"nodes/{name}.py imports node module(s) {sorted(crossing)}: move the shared logic to a helper"
