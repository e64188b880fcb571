"""Test-only ComfyUI pack: a text or number constant on a wildcard ("*") output, as third-party "Any" nodes make them.

Their AnyType is a str that never compares unequal, so ComfyUI's link type check accepts it
for any input, combo lists included, and the combo-list check is skipped for linked values.
Linked values also skip ComfyUI's min/max check. The server tests link these nodes to
FlexIP's file, pack and FLOAT inputs to prove the nodes check their inputs themselves. Never shipped.
"""

from __future__ import annotations


class AnyType(str):
    def __ne__(self, other):
        return False


class FlexIPTestAnyText:
    DESCRIPTION = "TEST ONLY: returns `text` on a wildcard output."
    CATEGORY = "testing"
    RETURN_TYPES = (AnyType("*"),)
    FUNCTION = "constant"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})}}

    def constant(self, text):
        return (text,)


class FlexIPTestAnyNumber:
    DESCRIPTION = "TEST ONLY: returns `number` (no range: inf passes) on a wildcard output."
    CATEGORY = "testing"
    RETURN_TYPES = (AnyType("*"),)
    FUNCTION = "constant"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"number": ("FLOAT", {"default": 0.0})}}

    def constant(self, number):
        return (number,)


NODE_CLASS_MAPPINGS = {"FlexIPTestAnyText": FlexIPTestAnyText, "FlexIPTestAnyNumber": FlexIPTestAnyNumber}
