"""One import identity: ComfyUI's loader imports the pack, and the core exists once per process.

What import-linter checks from the source (who imports whom: `make lint`, the contracts in
pyproject.toml) is not repeated here; these are the rules only a running process or a reading of
assignments shows.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import flexip_model
import flexip_model.errors
from flexip_host.bootstrap import PACK_ROOT, load_pack

# Where sys.path may change: the one host module, and the pack's __init__ (inside ComfyUI)
SYS_PATH_OWNERS = {PACK_ROOT / "flexip_host" / "bootstrap.py", PACK_ROOT / "__init__.py"}


def python_files() -> list[Path]:
    skip = {".venv", ".cache", ".git"}
    return [path for path in PACK_ROOT.rglob("*.py") if not skip & set(path.relative_to(PACK_ROOT).parts)]


def test_the_node_layer_and_the_tests_share_one_flexip_model():
    pack = load_pack()
    assert pack.nodes.patch.FlexIPError is flexip_model.errors.FlexIPError
    assert pack.nodes.bundles.SubjectAdapter is flexip_model.SubjectAdapter
    copies = [
        name for name, module in sys.modules.items() if name.endswith(".flexip_model") or ".flexip_model." in name
    ]
    assert copies == []


def test_the_pack_is_the_module_comfyuis_loader_registered():
    import nodes  # ComfyUI's nodes.py

    pack = load_pack()
    assert Path(pack.package.__file__) == PACK_ROOT / "__init__.py"
    assert nodes.NODE_CLASS_MAPPINGS["FlexIPApply"] is pack.node_classes["FlexIPApply"]
    assert load_pack() is pack


def test_no_code_assigns_sys_modules_and_only_the_host_changes_sys_path():
    offenders = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules" for t in targets):
                offenders.append(f"{path}: sys.modules[...] =")
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).startswith("sys.path.")
                and path not in SYS_PATH_OWNERS
            ):
                offenders.append(f"{path}: {ast.unparse(node.func)}")
    assert offenders == []
