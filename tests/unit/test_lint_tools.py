"""`make lint`'s three tools fail on a planted fault: ruff (rules and format), basedpyright and
lint-imports, each on a tiny example in tmp_path, so a tool that silently checks nothing (a wrong
path, a config it does not read) shows up here rather than as a green lint.

Each tool runs as `make lint` runs it, from the .venv beside the test's Python (pinned in
tools/requirements-dev.txt); a missing tool fails the test, as `make setup` installs all three.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.fixtures import REPO_ROOT

pytestmark = pytest.mark.unit

# A tool on a folder of two files: ruff well under 1 s, basedpyright 1-3 s (it starts Node);
# 60 s is for a loaded 2-core machine and still stops a hung tool.
TIMEOUT_S = 60


def _tool(name: str) -> Path:
    """The console script `name` beside this Python (the .venv's bin/); a missing one fails the test."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: run make setup (or pip install -r tools/requirements-dev.txt).")
        path = Path(found)
    return path


def _run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _ruff(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """ruff with the repository's own [tool.ruff] config, its cache kept out of the way."""
    _tool("ruff")
    config = REPO_ROOT / "pyproject.toml"
    return _run([sys.executable, "-m", "ruff", *args, "--no-cache", "--config", config], cwd)


def test_ruff_check_fails_on_an_unused_import_naming_file_and_rule(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('import os\n\n\ndef name() -> str:\n    return "x"\n')
    result = _ruff("check", "--output-format", "concise", bad, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bad.py:1:8: F401" in result.stdout
    bad.write_text('def name() -> str:\n    return "x"\n')
    assert _ruff("check", bad, cwd=tmp_path).returncode == 0


def test_ruff_format_check_fails_on_unformatted_code_naming_the_file(tmp_path):
    bad = tmp_path / "ugly.py"
    bad.write_text("def name( ) -> str :\n  return 'x'\n")
    result = _ruff("format", "--check", bad, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ugly.py" in result.stdout and "reformatted" in result.stdout
    assert _ruff("format", bad, cwd=tmp_path).returncode == 0  # what `make format` does
    assert _ruff("format", "--check", bad, cwd=tmp_path).returncode == 0


def test_basedpyright_fails_on_a_str_passed_where_an_int_is_required(tmp_path):
    tool = _tool("basedpyright")
    (tmp_path / "typed").mkdir()
    module = tmp_path / "typed" / "sizes.py"
    module.write_text('def double(count: int) -> int:\n    return count * 2\n\n\ndouble("three")\n')
    # the repository's settings that matter here, in a config of the temp folder's own
    (tmp_path / "pyrightconfig.json").write_text(
        '{"include": ["typed"], "pythonVersion": "3.11", "typeCheckingMode": "standard"}'
    )
    result = _run([tool, "--project", tmp_path / "pyrightconfig.json"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sizes.py:5:8 - error" in result.stdout and "reportArgumentType" in result.stdout
    module.write_text("def double(count: int) -> int:\n    return count * 2\n\n\ndouble(3)\n")
    assert _run([tool, "--project", tmp_path / "pyrightconfig.json"], tmp_path).returncode == 0


IMPORT_CONTRACT = """\
[importlinter]
root_packages =
    lintcheck_model
    lintcheck_nodes

[importlinter:contract:model-without-nodes]
name = lintcheck_model never imports lintcheck_nodes
type = forbidden
source_modules =
    lintcheck_model
forbidden_modules =
    lintcheck_nodes
"""


def test_lint_imports_fails_on_a_forbidden_import_and_passes_without_it(tmp_path):
    tool = _tool("lint-imports")
    for package in ("lintcheck_model", "lintcheck_nodes"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "lintcheck_nodes" / "apply.py").write_text("import lintcheck_model\n")
    attention = tmp_path / "lintcheck_model" / "attention.py"
    attention.write_text("from lintcheck_nodes import apply\n")
    (tmp_path / ".importlinter").write_text(IMPORT_CONTRACT)
    command = [tool, "--no-cache", "--no-logo"]
    result = _run(command, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 1 broken." in result.stdout
    assert "lintcheck_model.attention -> lintcheck_nodes.apply (l.1)" in result.stdout
    attention.write_text("")  # the same packages and contract, the forbidden import gone
    result = _run(command, tmp_path)
    assert result.returncode == 0 and "Contracts: 1 kept, 0 broken." in result.stdout, result.stdout
