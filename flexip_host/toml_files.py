"""Reading a TOML config file, with the one-sentence errors the trainer and the evaluation share."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flexip_model.errors import FlexIPError


def read_toml(path: Path, what: str) -> dict:
    """The TOML file `path` as a dict; FlexIPError for a missing file or bad syntax, naming `what` it is."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FlexIPError(f"the {what} {path} was not found: pass an existing TOML file to --config.") from None
    except tomllib.TOMLDecodeError as error:
        raise FlexIPError(f"{path.name} is not valid TOML ({error}): fix the syntax.") from None
