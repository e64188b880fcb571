"""The two-subject workflows hold what their Note promises: two Apply nodes chained into the sampler,
each subject with its own image, gate and mask, and masks that split the latent into a left and a
right half. Reads the API files only (the ui layer checks that each UI file converts to its API file).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tools.harness.workflows import load_api, nodes_of

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Shape:
    """What a two-subject workflow chains: the Apply class, the input it chains on, its mask input, its latent."""

    apply: str
    chained: str
    mask: str
    latent: str
    subject: str  # the Apply input that takes the subject (or identity)


WORKFLOWS = {
    "flexip_two_subjects_sd15": Shape("FlexIPApply", "model", "attn_mask", "EmptyLatentImage", "subject"),
    "flexip_two_identities_flux": Shape(
        "FlexIPInfiniteYouApply", "positive", "mask", "EmptySD3LatentImage", "identity"
    ),
}


def upstream(prompt: dict, node_id: str) -> set[str]:
    """Every node a node reads from, directly or not."""
    seen, todo = set(), [node_id]
    while todo:
        for value in prompt[todo.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in seen:
                seen.add(value[0])
                todo.append(value[0])
    return seen


def chained_applies(prompt: dict, shape: Shape) -> tuple[str, str]:
    """(first, second): the sampler reads the second Apply, which reads the first on the chained input."""
    sampler = nodes_of(prompt, "KSampler")[0]
    second = prompt[sampler]["inputs"][shape.chained][0]
    first = prompt[second]["inputs"][shape.chained][0]
    return first, second


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_two_apply_nodes_are_chained_into_the_sampler(name):
    prompt, shape = load_api(name), WORKFLOWS[name]
    first, second = chained_applies(prompt, shape)
    assert sorted(nodes_of(prompt, shape.apply)) == sorted((first, second))
    assert prompt[first]["class_type"] == prompt[second]["class_type"] == shape.apply
    assert prompt[prompt[first]["inputs"][shape.chained][0]]["class_type"] != shape.apply


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_each_subject_has_its_own_image_and_its_own_gate(name):
    prompt, shape = load_api(name), WORKFLOWS[name]
    first, second = chained_applies(prompt, shape)
    loads = set(nodes_of(prompt, "LoadImage"))
    images = [upstream(prompt, prompt[apply]["inputs"][shape.subject][0]) & loads for apply in (first, second)]
    assert len(images[0]) == len(images[1]) == 1 and images[0] != images[1], images
    # one subject follows a Gate Schedule, the other a constant preservation
    gates = [prompt[apply]["inputs"].get("gate") for apply in (first, second)]
    assert prompt[gates[0][0]]["class_type"] == "FlexIPGateSchedule" and gates[1] is None, gates
    assert isinstance(prompt[second]["inputs"]["preservation"], float)


def covered(prompt: dict, composite: str) -> tuple[range, range, tuple[int, int]]:
    """The columns and rows a MaskComposite lights (a white SolidMask added onto a black one, clipped to it),
    and the black one's size."""
    inputs = prompt[composite]["inputs"]
    assert (prompt[composite]["class_type"], inputs["operation"]) == ("MaskComposite", "add")
    canvas, white = (prompt[inputs[slot][0]] for slot in ("destination", "source"))
    assert canvas["class_type"] == white["class_type"] == "SolidMask"
    assert (canvas["inputs"]["value"], white["inputs"]["value"]) == (0.0, 1.0)
    x, y = inputs["x"], inputs["y"]
    width, height = canvas["inputs"]["width"], canvas["inputs"]["height"]
    columns = range(x, min(x + white["inputs"]["width"], width))
    rows = range(y, min(y + white["inputs"]["height"], height))
    return columns, rows, (width, height)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_the_masks_are_the_left_and_right_halves_of_the_latent(name):
    prompt, shape = load_api(name), WORKFLOWS[name]
    latent = prompt[nodes_of(prompt, shape.latent)[0]]["inputs"]
    (left_columns, left_rows, left_size), (right_columns, right_rows, right_size) = (
        covered(prompt, prompt[apply]["inputs"][shape.mask][0]) for apply in chained_applies(prompt, shape)
    )
    assert left_size == right_size == (latent["width"], latent["height"]), "masks drawn at the latent's size"
    assert left_rows == right_rows == range(latent["height"]), "each mask spans the latent's height"
    assert left_columns == range(latent["width"] // 2), "subject A: the left half"
    assert right_columns == range(latent["width"] // 2, latent["width"]), "subject B: the right half"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_the_prompt_names_both_subjects_left_and_right(name):
    prompt = load_api(name)
    texts = [node["inputs"]["text"] for node in prompt.values() if node["class_type"] == "CLIPTextEncode"]
    assert any("left" in text and "right" in text for text in texts), texts
