"""Every FLOAT input of every node refuses NaN and ±Inf, widget values and linked values alike.

ComfyUI's min/max check lets NaN through (every comparison with NaN is false) and does not
look at linked values at all, so the check wraps each node's FUNCTION: it sees the values the
node actually receives, before the node does any work.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from flexip_model.errors import FlexIPError


def _float_inputs(node_class: type) -> dict[str, dict[str, Any]]:
    """name -> options of each FLOAT input (required and optional)."""
    declared = node_class.INPUT_TYPES()
    return {
        name: (spec[1] if len(spec) > 1 else {})
        for section in ("required", "optional")
        for name, spec in declared.get(section, {}).items()
        if spec[0] == "FLOAT"
    }


def _non_finite(value: object) -> tuple[int | None, float] | None:
    """(index in the list or None, the value) of the first non-finite number in `value`, else None."""
    items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
    for index, item in items:
        if isinstance(item, numbers.Real) and not math.isfinite(item):
            return index, float(item)
    return None


def check_finite(display_name: str, node_class: type, inputs: dict[str, Any]) -> None:
    """FlexIPError naming the node and the input when a FLOAT input (or an item of a list input) is not finite."""
    found = {name: hit for name, value in inputs.items() if (hit := _non_finite(value)) is not None}
    if not found:
        return  # the common case: INPUT_TYPES (which may list model files) is read only on a hit
    floats = _float_inputs(node_class)
    for name, (index, value) in found.items():
        if name not in floats:
            continue
        which = name if index is None else f"{name} item {index} (counting from 0)"
        low, high = floats[name].get("min"), floats[name].get("max")
        wanted = "a finite number"
        if low is not None and high is not None:
            wanted += f" between {low:g} and {high:g}"
        raise FlexIPError(f"{display_name}: {which} is {value}: give {wanted}.")


def refuse_non_finite_floats(node_classes: Iterable[type]) -> None:
    """Wrap each node class's FUNCTION so that check_finite runs on every call (once per class)."""
    for node_class in node_classes:
        run = getattr(node_class, node_class.FUNCTION)
        if not getattr(run, "checks_finite_floats", False):
            setattr(node_class, node_class.FUNCTION, _checked(run, node_class, node_class.DISPLAY_NAME))


def _checked(run: Callable[..., Any], node_class: type, display_name: str) -> Callable[..., Any]:
    positional = list(inspect.signature(run).parameters)[1:]  # after self; ComfyUI itself passes keywords

    @functools.wraps(run)
    def checked(self: object, *args: Any, **kwargs: Any) -> Any:
        check_finite(display_name, node_class, {**dict(zip(positional, args)), **kwargs})
        return run(self, *args, **kwargs)

    # a marker on the wrapper (so a class is wrapped once); typeshed's functools._Wrapped declares no such attribute
    checked.checks_finite_floats = True  # pyright: ignore[reportAttributeAccessIssue]
    return checked
