"""Every FLOAT input of every node refuses NaN and ±Inf in one sentence naming the node and the input.

The cases are read from the nodes' INPUT_TYPES, so a node or FLOAT input added later is covered
without editing this file. The other inputs are None: the check must refuse before the node
looks at any of them.
"""

from __future__ import annotations

import math

import pytest
import torch

import flexip_model
from flexip_host.bootstrap import load_pack
from tests.support.assertions import assert_one_sentence

pytestmark = pytest.mark.comfy

PACK = load_pack()
BAD = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


def declared_inputs(node_class: type) -> dict[str, tuple]:
    declared = node_class.INPUT_TYPES()
    return {**declared.get("required", {}), **declared.get("optional", {})}


FLOAT_INPUTS = [
    (key, name)
    for key, node_class in PACK.node_classes.items()
    for name, spec in declared_inputs(node_class).items()
    if spec[0] == "FLOAT"
]


def call(key: str, **overrides):
    """The node's FUNCTION with every input None (lists of one None for INPUT_IS_LIST nodes), `overrides` set."""
    node_class = PACK.node_classes[key]
    as_list = getattr(node_class, "INPUT_IS_LIST", False)
    inputs = {name: [None] if as_list else None for name in declared_inputs(node_class)}
    inputs.update({name: [value] if as_list else value for name, value in overrides.items()})
    return getattr(node_class(), node_class.FUNCTION)(**inputs)


def test_the_cases_cover_the_float_inputs_of_the_pack():
    # a guard against an empty parametrization: these FLOAT inputs exist today
    assert {
        ("FlexIPApply", "strength"),
        ("FlexIPApply", "preservation"),
        ("FlexIPApply", "start_at"),
        ("FlexIPApply", "end_at"),
        ("FlexIPFaceCrop", "crop_scale"),
        ("FlexIPGateSweep", "start"),
        ("FlexIPGateSweep", "stop"),
        ("FlexIPTradeoffPlot", "gammas"),
        ("FlexIPTradeoffPlot", "metric_4"),
    } <= set(FLOAT_INPUTS)


@pytest.mark.parametrize("bad", BAD, ids=BAD)
@pytest.mark.parametrize("key, name", FLOAT_INPUTS, ids=[f"{key}.{name}" for key, name in FLOAT_INPUTS])
def test_a_non_finite_float_input_is_refused_naming_the_node_and_the_input(key, name, bad):
    with pytest.raises(flexip_model.FlexIPError) as error:
        call(key, **{name: BAD[bad]})
    message = str(error.value)
    assert_one_sentence(message, PACK.package.NODE_DISPLAY_NAME_MAPPINGS[key], f" {name} ", bad.lstrip("+"))
    options = declared_inputs(PACK.node_classes[key])[name][1]
    if "min" in options:
        assert f"between {options['min']:g} and {options['max']:g}" in message


def test_the_preservation_message_names_the_input_not_a_keyframe():
    with pytest.raises(flexip_model.FlexIPError) as error:
        call("FlexIPApply", strength=1.0, preservation=math.nan, start_at=0.0, end_at=1.0)
    assert str(error.value) == "Apply FlexIP: preservation is nan: give a finite number between 0 and 1."


def test_a_non_finite_item_of_a_list_input_is_refused_with_its_index():
    node_class = PACK.node_classes["FlexIPTradeoffPlot"]
    with pytest.raises(flexip_model.FlexIPError) as error:
        node_class().plot(
            gammas=[0.0, 0.5, 1.0],
            images=[None],
            metric_1=[0.9, math.inf, 0.1],
            labels=["a"],
            width=[768],
            height=[512],
            thumbnail=[256],
            columns=[5],
        )
    assert_one_sentence(str(error.value), "FlexIP Trade-off Plot", "metric_1 item 1", "inf")


def test_positional_arguments_are_checked_too():
    node_class = PACK.node_classes["FlexIPGateSweep"]
    with pytest.raises(flexip_model.FlexIPError, match="FlexIP Gate Sweep: stop is -inf"):
        node_class().sweep(None, "range", "", 0.0, -math.inf, 5, True)


def test_finite_floats_reach_the_node():
    # the sweep runs on plain Python values, so a finite call must come back with its result
    node_class = PACK.node_classes["FlexIPGateSweep"]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    _, gammas, _ = node_class().sweep(
        latent=latent, mode="range", values="", start=0.0, stop=1.0, count=3, same_noise=True
    )
    assert gammas == [0.0, 0.5, 1.0]
