"""Assertions every test layer shares: what a user-facing message and a shipped example config must be.

tests/support/ holds the helpers more than one layer imports; it belongs to no layer (tests/conftest.py
marks and collects nothing here) and imports no layer's folder (import contract `test-support-neutral`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path


def assert_one_sentence(message: str, *mentions: str) -> None:
    """A user-facing error: one line, one sentence ending in '.', naming what it must name."""
    assert "\n" not in message and message.endswith("."), message
    assert re.search(r"[.!?]\s+[A-Z]", message) is None, f"more than one sentence: {message}"
    for mention in mentions:
        assert mention in message, f"{mention!r} not in: {message}"


def assert_example_shows_defaults(config: object, example: str) -> None:
    """Every key of the loaded example config `config` that has a default equals it (paths are examples)."""
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for key in dataclasses.fields(value):
            shown = getattr(value, key.name)
            if key.default is not dataclasses.MISSING and not isinstance(shown, Path):
                assert shown == key.default, f"{example} [{section.name}] {key.name}"
