"""Frozen dataclasses from untrusted mappings: a checkpoint's JSON config, a TOML training config.

Every key and type is checked before anything is built from it; each problem is one sentence
naming the mapping (`Source`), the key and how to fix it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import FlexIPError, shown

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Source:
    """Where a mapping sits: `name` (a file, or "x.safetensors's FlexIP config") and the dotted table inside it."""

    name: str
    fix: str  # ends every sentence, e.g. "re-export the file"
    table: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} [{self.table}]" if self.table else self.name

    def child(self, key: str) -> Source:
        return dataclasses.replace(self, table=f"{self.table}.{key}" if self.table else key)

    def error(self, what: str) -> FlexIPError:
        return FlexIPError(f"{self.label} {what}: {self.fix}.")


@dataclass(frozen=True)
class Rules:
    """How one kind of mapping is read."""

    require_all: bool = False  # every field present, defaults or not (a file that lacks one is damaged)
    path: Callable[[str], Path] | None = None  # turns a string into a Path (relative to the file)
    check: Callable[[str, str, Any], None] | None = None  # check(label, key, value) after each conversion


def dataclass_from_mapping(
    cls: type[T], data: object, source: Source, rules: Rules = Rules(), given: Mapping[str, Any] | None = None
) -> T:
    """Instantiate dataclass `cls` from `data`; tuples are lists, nested dataclasses nested mappings.

    `given` are fields the caller supplies (never read from `data`). Optional[X] reads "" as None.
    """
    if not isinstance(data, dict):
        raise source.error(f"is {shown(data)}, expected a table of keys")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.name not in (given or {})}
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(key) for key in set(data) - set(fields))
    if unknown:
        raise source.error(f"has unknown key {shown(unknown[0])} (known: {', '.join(sorted(fields))})")
    values = dict(given or {})
    for name, field in fields.items():
        if name not in data:
            optional = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            if rules.require_all or not optional:
                table = dataclasses.is_dataclass(hints[name])
                raise source.error(
                    f"lacks the [{source.child(name).table}] table" if table else f"lacks the key {name!r}"
                )
            continue
        values[name] = _typed(hints[name], data[name], source, name, rules)
        if rules.check is not None:
            rules.check(source.label, name, values[name])
    return cls(**values)


def _typed(hint: Any, value: Any, source: Source, name: str, rules: Rules) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return dataclass_from_mapping(hint, value, source.child(name), rules)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: "" (or an absent key) means None
        inner = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        return None if value == "" else _typed(inner, value, source, name, rules)
    if origin is tuple:
        return _tuple(hint, value, source, name, rules)
    if hint is Path and rules.path is not None:
        if not isinstance(value, str) or not value:
            raise source.error(
                f"{name} is {shown(value)}, expected a path in quotes (relative to the file or absolute)"
            )
        return rules.path(value)
    if hint not in _KINDS:
        raise TypeError(f"unsupported config type {hint!r}")  # a programming error, not a user's
    # bool is an int subclass in Python; true is never a valid size, and a number is never a switch
    accepted = (int, float) if hint is float else hint
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise source.error(f"{name} is {shown(value)}, expected {_KINDS[hint]}")
    return float(value) if hint is float else value


def _tuple(hint: Any, value: Any, source: Source, name: str, rules: Rules) -> tuple[Any, ...]:
    args = typing.get_args(hint)
    fixed = args[-1] is not Ellipsis
    if not isinstance(value, list) or (fixed and len(value) != len(args)):
        item = "table" if dataclasses.is_dataclass(args[0]) else "number" if args[0] in (int, float) else "value"
        count = f"{len(args)} {item}s" if fixed else f"{item}s"
        raise source.error(f"{name} is {shown(value)}, expected a list of {count}")
    if isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        if rules.check is not None:  # the count is bounded before any item is read
            rules.check(source.label, name, value)
        return tuple(
            dataclass_from_mapping(args[0], item, source.child(f"{name}.{index}"), rules)
            for index, item in enumerate(value)
        )
    return tuple(_typed(args[0], item, source, name, rules) for item in value)
