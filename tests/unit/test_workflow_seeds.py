"""Images a shipped workflow compares side by side come from one seed, on the first Run and every Run after.

A sampler's own seed widget with "randomize" draws a new seed per sampler after each Run, so a
workflow with several samplers links them all to one seed source, or gives them one seed with "fixed".
Reads the JSON files only.
"""

from __future__ import annotations

import json

import pytest

from tools.harness.workflows import API, SEED_INPUTS, WORKFLOWS, ui_workflows

pytestmark = pytest.mark.unit

# Where a UI node's typed-in seed sits in its widgets_values; its control_after_generate value follows it
# (KSamplerAdvanced and SamplerCustom have add_noise first).
SEED_WIDGET_INDEX = {"KSampler": 0, "KSamplerAdvanced": 1, "SamplerCustom": 1, "RandomNoise": 0}


def ui_seed_sources(workflow: dict) -> list[tuple]:
    """Per seeded node: ("linked", origin node, origin slot) or ("typed", seed, control_after_generate)."""
    links = {link[0]: link for link in workflow["links"]}  # [id, origin, origin slot, target, target slot, type]
    sources = []
    for node in workflow["nodes"]:
        if node["type"] not in SEED_INPUTS:
            continue
        slot = next((slot for slot in node.get("inputs", []) if slot["name"] == SEED_INPUTS[node["type"]]), None)
        if slot is not None and slot.get("link") is not None:
            _, origin, origin_slot, *_ = links[slot["link"]]
            sources.append(("linked", origin, origin_slot))
        else:
            index = SEED_WIDGET_INDEX[node["type"]]
            seed, control = node["widgets_values"][index : index + 2]
            sources.append(("typed", seed, control))
    return sources


def api_seed_sources(prompt: dict) -> list[tuple]:
    """Per seeded node: ("linked", origin node, origin slot) or ("typed", seed); API files have no randomize."""
    sources = []
    for node in prompt.values():
        if node["class_type"] in SEED_INPUTS:
            seed = node["inputs"][SEED_INPUTS[node["class_type"]]]
            sources.append(("linked", *seed) if isinstance(seed, list) else ("typed", seed))
    return sources


def share_one_seed(sources: list[tuple]) -> bool:
    """One source for all; typed-in seeds stay one only while "fixed" (the API format's have no control)."""
    return len(set(sources)) <= 1 and all(source[0] == "linked" or source[2:] in ((), ("fixed",)) for source in sources)


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda path: path.stem)
def test_samplers_of_a_ui_workflow_share_one_seed_on_every_run(path):
    sources = ui_seed_sources(json.loads(path.read_text()))
    assert len(sources) < 2 or share_one_seed(sources), f"{path.name}: seeds come from {sources}"


@pytest.mark.parametrize("path", sorted(API.glob("*.json")), ids=lambda path: path.stem)
def test_samplers_of_an_api_workflow_share_one_seed(path):
    sources = api_seed_sources(json.loads(path.read_text()))
    assert len(sources) < 2 or share_one_seed(sources), f"api/{path.name}: seeds come from {sources}"


def test_the_range_workflow_draws_one_random_seed_per_run_for_its_three_samplers():
    workflow = json.loads((WORKFLOWS / "flexip_range_sd15.json").read_text())
    sources = ui_seed_sources(workflow)
    assert len(sources) == 3 and share_one_seed(sources)
    origin = next(node for node in workflow["nodes"] if node["id"] == sources[0][1])
    assert (origin["type"], origin["widgets_values"][1]) == ("PrimitiveNode", "randomize")


@pytest.mark.parametrize(
    "sources, shared",
    [
        ([("typed", 42, "randomize")] * 3, False),  # equal on the first Run only
        ([("typed", 42, "fixed")] * 3, True),
        ([("typed", 42, "fixed"), ("typed", 7, "fixed")], False),
        ([("linked", 40, 0)] * 3, True),
        ([("linked", 40, 0), ("linked", 41, 0)], False),
        ([("linked", 40, 0), ("typed", 42, "fixed")], False),
        ([("typed", 42)] * 2, True),  # API format
    ],
)
def test_one_seed_means_one_source_or_one_fixed_value(sources, shared):
    assert share_one_seed(sources) is shared
