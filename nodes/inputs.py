"""One-line input declarations for ComfyUI's classic `INPUT_TYPES`: each function returns the
`(type, options)` pair ComfyUI reads, with the tooltip every input of the pack carries.

Options are ComfyUI's own keys (`default`, `min`, `max`, `step`, `multiline`, `forceInput` ...);
anything a function does not name goes through `**extra` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# (type name or list of choices, options): one entry of an INPUT_TYPES section
InputSpec = tuple[str | Sequence[str], dict[str, Any]]


def typed_input(type_name: str, tooltip: str, **extra: Any) -> InputSpec:
    """A socket of `type_name` (MODEL, IMAGE, FLEXIP ...), or a widget type linked with forceInput=True."""
    return (type_name, {**extra, "tooltip": tooltip})


def float_input(
    default: float, minimum: float, maximum: float, tooltip: str, *, step: float, **extra: Any
) -> InputSpec:
    """A FLOAT widget in [minimum, maximum]; `step` is required, so no input falls back to the widget's default step."""
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": step, **extra, "tooltip": tooltip})


def int_input(
    default: int, minimum: int, maximum: int, tooltip: str, *, step: int | None = None, **extra: Any
) -> InputSpec:
    """An INT widget in [minimum, maximum], in steps of `step` (ComfyUI's 1 when None)."""
    options: dict[str, Any] = {"default": default, "min": minimum, "max": maximum}
    if step is not None:
        options["step"] = step
    return ("INT", {**options, **extra, "tooltip": tooltip})


def choice_input(options: Sequence[str], tooltip: str, *, default: str | None = None) -> InputSpec:
    """A combo box over `options` (passed to ComfyUI as given); without `default`, ComfyUI shows the first."""
    return (options, {"tooltip": tooltip} if default is None else {"default": default, "tooltip": tooltip})


def text_input(default: str, tooltip: str, **extra: Any) -> InputSpec:
    """A STRING widget; multiline=True for a text box."""
    return ("STRING", {"default": default, **extra, "tooltip": tooltip})


def boolean_input(default: bool, tooltip: str) -> InputSpec:
    """A BOOLEAN toggle."""
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})
