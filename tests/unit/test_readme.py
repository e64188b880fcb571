"""The user-facing documents: a README short enough to read, written for readers outside the team,
whose links all lead somewhere and whose node table names every node the pack declares."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
MAX_README_WORDS = 2000

# Words that only make sense inside the team that wrote the pack: the machine it was built on, how
# its sessions ran, its tracker. Readers outside the team cannot follow any of them.
TEAM_PHRASES = ("this machine", "local wheel store", "not run yet", "these sessions", "huggingface-cli")
TRACKER_NUMBER = re.compile(r"\bissues?\s*#?\d+|(?<![\w&/#])#\d+\b", re.IGNORECASE)

FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
NODE_ROW = re.compile(r"^\|\s*\*\*[^*]+\*\* \(`(FlexIP\w+)`\)", re.MULTILINE)


def user_documents() -> list[Path]:
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "benchmarks" / "README.md"]


def linking_documents() -> list[Path]:
    return [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]


def link_targets(markdown: str) -> list[str]:
    """The targets of Markdown links and images outside code, less URLs (`scheme:`)."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", markdown))
    targets = [match.group(1) for match in LINK.finditer(prose)]
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def relative_links(markdown: str) -> list[str]:
    """The link targets that name a file (in-page anchors left out)."""
    return [target for target in link_targets(markdown) if not target.startswith("#")]


def anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens."""
    headings = HEADING.findall(FENCED_CODE.sub("", markdown))
    return {
        re.sub(r"[^\w\- ]", "", INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading).lower()).replace(" ", "-")
        for heading in headings
    }


def declared_node_ids() -> list[str]:
    """The names in `NODES = (...)` of nodes/__init__.py, read without importing it (that imports ComfyUI)."""
    tree = ast.parse((REPO_ROOT / "nodes" / "__init__.py").read_text(encoding="utf-8"))
    for statement in tree.body:
        target = getattr(statement, "target", None) or (getattr(statement, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == "NODES" and isinstance(statement.value, ast.Tuple):
            return [element.id for element in statement.value.elts if isinstance(element, ast.Name)]
    raise AssertionError("nodes/__init__.py has no NODES tuple")


def test_readme_is_at_most_2000_words():
    words = len(README.read_text(encoding="utf-8").split())  # as `wc -w` counts: whitespace-separated
    assert words <= MAX_README_WORDS, f"README.md has {words} words; move detail into docs/"


@pytest.mark.parametrize("document", user_documents(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_user_documents_use_no_words_only_the_team_understands(document):
    text = document.read_text(encoding="utf-8")
    found = [phrase for phrase in TEAM_PHRASES if phrase in text.lower()]
    found += [match.group(0) for match in TRACKER_NUMBER.finditer(text)]
    assert not found, f"{document.relative_to(REPO_ROOT)} says {found}: write for readers outside the team"


@pytest.mark.parametrize("document", linking_documents(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_points_at_an_existing_file(document):
    links = relative_links(document.read_text(encoding="utf-8"))
    broken = [link for link in links if not (document.parent / link.split("#")[0]).exists()]
    assert not broken, f"{document.relative_to(REPO_ROOT)} links to missing files: {broken}"


@pytest.mark.parametrize("document", linking_documents(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_anchor_in_a_link_names_a_heading_of_its_page(document):
    broken = []
    for link in link_targets(document.read_text(encoding="utf-8")):
        path, _, anchor = link.partition("#")
        page = (document.parent / path) if path else document
        if (
            anchor
            and page.suffix == ".md"
            and page.exists()
            and anchor not in anchors(page.read_text(encoding="utf-8"))
        ):
            broken.append(link)
    assert not broken, f"{document.relative_to(REPO_ROOT)} links to missing headings: {broken}"


def test_readme_node_table_names_every_declared_node_and_no_other():
    declared = declared_node_ids()
    assert len(declared) >= 11, declared
    in_table = NODE_ROW.findall(README.read_text(encoding="utf-8"))
    assert sorted(in_table) == sorted(declared)


def test_link_reader_skips_code_urls_and_anchors():
    markdown = (
        '[a](docs/a.md) ![b](b.png#x) [c](https://x.org) [d](#top) `[e](e.md)`\n```\n[f](f.md)\n```\n[g](g.md "title")'
    )
    assert relative_links(markdown) == ["docs/a.md", "b.png#x", "g.md"]


def test_anchors_follow_github_heading_slugs():
    markdown = "# Faces (InsightFace)\n## GPU memory (estimates)\n### `make bench`: figures\n```\n# not a heading\n```"
    assert anchors(markdown) == {"faces-insightface", "gpu-memory-estimates", "make-bench-figures"}


def test_tracker_number_pattern_finds_issue_references_but_not_anchors():
    assert TRACKER_NUMBER.findall("see issue 17, Issue #16 and #16.") == ["issue 17", "Issue #16", "#16"]
    assert not TRACKER_NUMBER.findall("[x](faces.md#cuda) ## Heading 2 x#1 &#39;")
