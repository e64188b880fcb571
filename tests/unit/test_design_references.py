"""The design lives in the repository: every design reference in the code and the docs names a section
of docs/design.md that exists, nothing points at design notes outside the repository, and
docs/architecture.md names every top-level package.

Pure Python: the repository's .py and .md files are read as text, nothing is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
DESIGN = REPO_ROOT / "docs" / "design.md"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
# generated or installed, not the repository's own text
SKIPPED_FOLDERS = {".cache", ".venv", ".git", ".pytest_cache", "__pycache__"}
# a reference: "design" or "<path>design.md", a space, "§", a section number and optionally ".<subsection>"
REFERENCE = re.compile(r"(\S*design(?:\.md)?) §(\d+)(?:\.(\d+))?")
# where the design notes lived before they were in the repository
OUTSIDE = re.compile(r"FLEXIP\.md|shared/design", re.IGNORECASE)
SECTION = re.compile(r"^## (\d+)\. \S", re.MULTILINE)
SUBSECTION = re.compile(r"^### (\d+)\.(\d+) \S", re.MULTILINE)


def repository_texts() -> list[tuple[Path, str]]:
    """(path, text) of every .py and .md file of the repository, this file excepted (it spells the
    patterns it looks for)."""
    found = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix in (".py", ".md") and path != Path(__file__).resolve():
                found.append((path, path.read_text(encoding="utf-8")))
    return found


def references() -> list[tuple[str, str, int, int | None]]:
    """(where, the name before '§', section, subsection or None) of every design reference."""
    found = []
    for path, text in repository_texts():
        for number, line in enumerate(text.splitlines(), start=1):
            for match in REFERENCE.finditer(line):
                subsection = int(match.group(3)) if match.group(3) else None
                found.append(
                    (f"{path.relative_to(REPO_ROOT)}:{number}", match.group(1), int(match.group(2)), subsection)
                )
    return found


def design_sections() -> tuple[list[int], set[tuple[int, int]]]:
    text = DESIGN.read_text(encoding="utf-8")
    return (
        [int(number) for number in SECTION.findall(text)],
        {(int(section), int(sub)) for section, sub in SUBSECTION.findall(text)},
    )


def test_design_sections_are_numbered_one_to_n_in_order():
    sections, _ = design_sections()
    assert sections and sections == list(range(1, len(sections) + 1))


def test_every_design_reference_names_a_section_that_exists():
    sections, subsections = design_sections()
    found = references()
    # the layer equation's module cites the design: a scan that finds nothing is broken, not clean
    assert any(where.startswith(os.path.join("flexip_model", "attention.py")) for where, *_ in found)
    missing = [
        f"{where}: §{section}" + (f".{sub}" if sub is not None else "")
        for where, _, section, sub in found
        if section not in sections or (sub is not None and (section, sub) not in subsections)
    ]
    assert missing == [], "references to sections docs/design.md does not have"


def test_every_design_reference_names_the_file_in_the_repository():
    unnamed = [
        f"{where}: {name} §{section}" for where, name, section, _ in references() if not name.endswith("design.md")
    ]
    assert unnamed == [], "write the reference as 'docs/design.md §N' so a reader can find it"


def test_nothing_points_at_design_notes_outside_the_repository():
    outside = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:100]}"
        for path, text in repository_texts()
        for number, line in enumerate(text.splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert outside == [], "cite docs/design.md instead"


def test_architecture_names_every_top_level_package():
    packages = sorted(
        path.parent.name for path in REPO_ROOT.glob("*/__init__.py") if path.parent.name not in SKIPPED_FOLDERS
    )
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = [name for name in [*packages, "tests", "workflows"] if f"`{name}/`" not in text]
    assert "`__init__.py`" in text, "docs/architecture.md should describe the root __init__.py"
    assert named == [], "docs/architecture.md should name these packages"
