"""The pack as the Comfy Registry and pip see it: the registry fields of pyproject.toml, the icon,
the archive `comfy node pack` builds (what ComfyUI-Manager unpacks into custom_nodes/), and the
editable install of the trainer and the evaluation (`python -m pip install -e ".[train]"`).

comfy-cli and pip run offline, as subprocesses, on copies of the working tree: nothing is
written into the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
REPOSITORY = "https://github.com/comfyui-flexip/ComfyUI-FlexIP"
RAW_MAIN = "https://raw.githubusercontent.com/comfyui-flexip/ComfyUI-FlexIP/main/"

# What the archive must carry: the nodes, the packages the trainer and the evaluation import,
# the workflows with their template thumbnails, and the install files.
SHIPPED = (
    "__init__.py",
    "nodes/*.py",
    "flexip_model/**/*.py",
    "flexip_host/*.py",
    "flexip_train/*.py",
    "flexip_train/*.toml",
    "flexip_eval/*.py",
    "flexip_eval/*.toml",
    "workflows/*.json",
    "workflows/*.jpg",
    "workflows/api/*.json",
    "docs/*.md",
    "pyproject.toml",
    "requirements.txt",
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
)
# Git-ignored files every working clone has (make setup, tests, ComfyUI runs), planted in the copy.
CLUTTER = (
    ".cache/comfyui/nodes.py",
    ".venv/bin/python",
    "output/ComfyUI_00001_.png",
    "nodes/__pycache__/apply.cpython-311.pyc",
    "flexip_model/__pycache__/gate.cpython-311.pyc",
    ".pytest_cache/v/cache/lastfailed",
    "stray.pyc",
)
# Never in the archive: caches and outputs, and what needs a clone and `make setup` (.comfyignore).
LEFT_OUT = (".cache/", ".venv/", "output/", ".pytest_cache/", "tests/", "tools/", "benchmarks/", ".ci/", ".github/")
LEFT_OUT_FILES = ("Makefile", ".comfyignore")


def without_git_overrides(**extra: str) -> dict[str, str]:
    """This process's environment minus GIT_* (a git hook sets GIT_DIR, which would point git at this
    repository instead of the copy) and PYTHONPATH, no prompts or telemetry, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_") and key != "PYTHONPATH"}
    env.update(DO_NOT_TRACK="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


def run(command: list[str], cwd: Path, **extra: str) -> str:
    done = subprocess.run(
        command,
        cwd=cwd,
        env=without_git_overrides(**extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} failed in {cwd}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def git_files(tree: Path, *options: str) -> list[str]:
    listed = run(["git", "ls-files", "-z", *options], tree)
    return [name for name in listed.split("\0") if name]


def working_tree_copy(destination: Path) -> Path:
    """What a commit of this working tree would hold (tracked and new files, minus .gitignore), copied
    to `destination`: a fresh clone of it, without the history."""
    for name in git_files(REPO, "--cached", "--others", "--exclude-standard"):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def icon_path() -> str:
    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    assert icon.startswith(RAW_MAIN), f"Icon {icon} is not a file of the repository's main branch"
    return icon.removeprefix(RAW_MAIN)


@dataclass(frozen=True)
class Packed:
    names: frozenset[str]  # the archive's members
    tracked: frozenset[str]  # what git tracks in the packed copy
    tree: Path


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    """`comfy node pack` (it zips what `git ls-files` lists, minus .comfyignore) run in a copy of the
    working tree added to a new git repository, with the git-ignored clutter of a used clone in it."""
    root = tmp_path_factory.mktemp("packaging")
    tree = working_tree_copy(root / "ComfyUI-FlexIP")
    for name in CLUTTER:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"not for users\n")
    no_user_config = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}  # e.g. a global excludes file
    run(["git", "init", "-q"], tree, **no_user_config)
    run(["git", "add", "-A"], tree, **no_user_config)
    (root / "home").mkdir()
    # HOME: comfy-cli keeps its config under ~/.config
    run(
        [sys.executable, "-m", "comfy_cli", "--skip-prompt", "--no-json", "node", "pack"], tree, HOME=str(root / "home")
    )
    with zipfile.ZipFile(tree / "node.zip") as archive:
        names = frozenset(archive.namelist())
    return Packed(names, frozenset(git_files(tree)), tree)


def test_archive_holds_the_nodes_packages_workflows_docs_icon_and_install_files(packed):
    for pattern in SHIPPED:
        expected = {path.relative_to(packed.tree).as_posix() for path in packed.tree.glob(pattern)} & packed.tracked
        assert expected, f"nothing in the working tree matches {pattern}"
        assert expected <= packed.names, f"{pattern}: not in the archive: {sorted(expected - packed.names)}"
    assert icon_path() in packed.names


def test_archive_leaves_out_caches_outputs_and_development_files(packed):
    unwanted = sorted(
        name
        for name in packed.names
        if name.startswith(LEFT_OUT)
        or name in LEFT_OUT_FILES
        or "__pycache__" in name.split("/")
        or name.endswith(".pyc")
    )
    assert not unwanted, f"{len(unwanted)} files in the archive, among them {unwanted[:8]}"
    assert packed.names <= packed.tracked, f"untracked files in the archive: {sorted(packed.names - packed.tracked)}"


def test_registry_links_name_one_repository_and_its_icon_is_a_shipped_file():
    urls = PYPROJECT["project"]["urls"]
    assert urls["Repository"] == REPOSITORY
    assert all(urls[key].startswith(REPOSITORY) for key in ("Documentation", "Issues"))
    assert (REPO / icon_path()).is_file()


def test_icon_is_a_square_png_of_at_most_400_pixels():
    """The Registry's limits (docs.comfy.org/registry/specifications): square, at most 400 x 400."""
    with Image.open(REPO / icon_path()) as icon:
        assert icon.format == "PNG"
        assert icon.width == icon.height <= 400


def test_changelog_opens_with_the_version_in_pyproject():
    versions = re.findall(
        r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$",
        (REPO / "CHANGELOG.md").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert versions and versions[0] == PYPROJECT["project"]["version"]


def test_train_extra_pins_the_data_engine_the_train_tests_run():
    """Resume state is litdata-version specific: users and the train layer run the same release."""
    extra = [pin for pin in PYPROJECT["project"]["optional-dependencies"]["train"] if pin.startswith("litdata")]
    dev = [
        line.strip()
        for line in (REPO / "tools" / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
        if line.startswith("litdata")
    ]
    assert extra == dev and re.fullmatch(r"litdata==[\d.]+", extra[0])


def test_train_extra_resolves_in_this_environment_without_changing_an_installed_package(tmp_path):
    """pip's resolver, offline, over ComfyUI's requirements and the pinned torch this venv holds: the
    editable install adds the pack's metadata and nothing else."""
    tree = working_tree_copy(tmp_path / "ComfyUI-FlexIP")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--no-build-isolation",
            "--report",
            str(tmp_path / "report.json"),
            "-c",
            "tools/constraints.txt",
            "-e",
            ".[train]",
        ],
        tree,
    )
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert [item["metadata"]["name"] for item in report["install"]] == ["comfyui-flexip"]


def test_editable_install_imports_the_packages_from_any_folder_and_only_them(tmp_path):
    """After the install, python -m flexip_train / flexip_eval work from anywhere; the pack's folder is
    not on sys.path, so its nodes/ and tools/ never shadow ComfyUI's `nodes` or another module."""
    tree = working_tree_copy(tmp_path / "ComfyUI-FlexIP")
    prefix = tmp_path / "prefix"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--prefix",
            str(prefix),
            "-e",
            ".",
        ],
        tree,
    )
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    probe = (
        "import importlib.util, json, site\n"
        f"site.addsitedir({site!r})\n"
        "import flexip_eval, flexip_host, flexip_model.ip_adapter, flexip_train\n"
        "files = [module.__file__ for module in (flexip_host, flexip_train, flexip_eval, flexip_model.ip_adapter)]\n"
        "others = {name: getattr(importlib.util.find_spec(name), 'origin', None)\n"
        "          for name in ('nodes', 'tools', 'benchmarks')}\n"
        "print(json.dumps({'files': files, 'others': others}))\n"
    )
    (tmp_path / "elsewhere").mkdir()
    found = json.loads(run([sys.executable, "-c", probe], tmp_path / "elsewhere"))
    assert all(Path(file).is_relative_to(tree) for file in found["files"]), found["files"]
    assert not any(origin and Path(origin).is_relative_to(tree) for origin in found["others"].values()), found["others"]
