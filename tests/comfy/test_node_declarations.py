"""Each node is declared once (its class, with its display name): the ids saved workflows hold
stay the node ids, and the names in the README are the names ComfyUI shows."""

from __future__ import annotations

import json
import re

import pytest

from flexip_host.bootstrap import load_pack
from tools.fixtures import REPO_ROOT

pytestmark = pytest.mark.comfy

PACK = load_pack()


def shipped_node_types() -> set[str]:
    """Every node type in workflows/ (UI format) and workflows/api/ (API format)."""
    types = set()
    for path in (REPO_ROOT / "workflows").glob("*.json"):
        types |= {node["type"] for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]}
    for path in (REPO_ROOT / "workflows" / "api").glob("*.json"):
        types |= {node["class_type"] for node in json.loads(path.read_text(encoding="utf-8")).values()}
    return types


def test_every_pack_node_type_in_the_shipped_workflows_is_a_declared_node_id():
    used = {name for name in shipped_node_types() if name.startswith("FlexIP")}
    assert used, "no FlexIP node found in workflows/: the workflow reader is wrong"
    assert used <= set(PACK.node_classes), used - set(PACK.node_classes)


def test_display_names_come_from_the_node_classes_and_cover_every_node():
    assert set(PACK.package.NODE_DISPLAY_NAME_MAPPINGS) == set(PACK.node_classes)
    for node_id, node_class in PACK.node_classes.items():
        assert node_id == node_class.__name__
        assert PACK.package.NODE_DISPLAY_NAME_MAPPINGS[node_id] == node_class.DISPLAY_NAME


def test_readme_names_each_node_by_its_display_name_and_id():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    named = {node_id: display for display, node_id in re.findall(r"\*\*([^*]+)\*\* \(`(FlexIP\w+)`\)", readme)}
    assert len(named) >= 5, "the README's node table was not found"
    for node_id, display in named.items():
        assert PACK.package.NODE_DISPLAY_NAME_MAPPINGS.get(node_id) == display, node_id
