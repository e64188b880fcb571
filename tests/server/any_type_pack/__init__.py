"""Test-only ComfyUI pack: text and number constants on wildcard ("*") outputs, as third-party "Any" nodes make them.

Their AnyType is a str that never compares unequal, so ComfyUI's link type check accepts it
for any input, combo lists included, and the combo-list check is skipped for linked values.
Linked values also skip ComfyUI's min/max check. The server tests link this node to FlexIP's
file, pack and FLOAT inputs to prove the nodes check their inputs themselves. Never shipped.
"""

from __future__ import annotations


class AnyType(str):
    def __ne__(self, other):
        return False


class FlexIPTestAnyConstants:
    DESCRIPTION = "TEST ONLY: returns `text` and `number` (no range: inf passes) on wildcard outputs."
    CATEGORY = "testing"
    RETURN_TYPES = (AnyType("*"), AnyType("*"))
    RETURN_NAMES = ("text", "number")
    FUNCTION = "constants"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""}), "number": ("FLOAT", {"default": 0.0})}}

    def constants(self, text, number):
        return (text, number)


NODE_CLASS_MAPPINGS = {"FlexIPTestAnyConstants": FlexIPTestAnyConstants}
