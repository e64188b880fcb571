"""Gate schedule: keyframe interpolation, window, per-block overrides, parsing, no host sync."""

from __future__ import annotations

import math

import pytest
import torch

from flexip_model import (
    BlockOverride,
    FlexIPError,
    GateSchedule,
    constant_schedule,
    default_layers,
    gate_table,
    gates_at,
    parse_keyframes,
    parse_layer_indices,
    progress_from_sigma,
    static_gate_range,
    validate_schedule,
    window_at,
)
from flexip_model.gate_schedule import MAX_LAYER_INDICES
from tests.support.assertions import assert_one_sentence
from tests.unit.flexip_unit_helpers import OpRecorder

pytestmark = pytest.mark.unit

LAYERS = default_layers("sd15")  # 16 layers; index 6 is middle_0_0
KEYFRAMES = ((0.0, 1.0), (0.5, 0.3), (1.0, 0.0))
# γ is evaluated in float32: a handful of roundings of values ≤ 1
ATOL = 1e-6
EASE_QUARTER = (1 - math.cos(math.pi / 4)) / 2  # cosine easing at t = 0.25: 0.1464...


def _gammas(schedule: GateSchedule, points: list[float]) -> torch.Tensor:
    return gates_at(gate_table(schedule, LAYERS), torch.tensor(points))[0]  # first layer, [B]


@pytest.mark.parametrize(
    "interpolation,points,expected",
    [
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 0.65, 0.3, 0.15, 0.0]),
        ("cosine", [0.125, 0.25, 0.625, 1.0], [1.0 - 0.7 * EASE_QUARTER, 0.65, 0.3 - 0.3 * EASE_QUARTER, 0.0]),
        ("step", [0.0, 0.25, 0.5, 0.99, 1.0], [1.0, 1.0, 0.3, 0.3, 0.0]),
    ],
)
def test_keyframes_interpolate_to_hand_computed_values(interpolation, points, expected):
    got = _gammas(GateSchedule(KEYFRAMES, interpolation), points)
    torch.testing.assert_close(got, torch.tensor(expected), atol=ATOL, rtol=0)


def test_outside_the_keyframes_the_end_values_hold():
    got = _gammas(GateSchedule(((0.2, 0.8), (0.6, 0.4))), [0.0, 0.1, 0.4, 0.9, 1.0])
    torch.testing.assert_close(got, torch.tensor([0.8, 0.8, 0.6, 0.4, 0.4]), atol=ATOL, rtol=0)


def test_gates_are_vectorised_over_layers_and_batch():
    table = gate_table(GateSchedule(KEYFRAMES), LAYERS)
    assert table.positions.shape == table.values.shape == (16, 3)
    assert gates_at(table, torch.tensor(0.25)).shape == (16,)
    assert gates_at(table, torch.tensor([0.25, 0.5, 0.9])).shape == (16, 3)


def test_overrides_apply_by_block_and_by_index_and_later_ones_win():
    schedule = GateSchedule(
        KEYFRAMES,
        overrides=(
            BlockOverride(((0.0, 0.1),), blocks=("middle",)),
            BlockOverride(((0.0, 0.9), (1.0, 0.5)), layer_indices=(0, 6)),
            BlockOverride(((0.0, 0.2),), blocks=("output",)),
        ),
    )
    table = gate_table(schedule, LAYERS)
    assert table.positions.shape == (16, 3)  # padded to the longest keyframe list
    gammas = gates_at(table, torch.tensor(0.5))
    expected = [0.7] + [0.3] * 5 + [0.7] + [0.2] * 9  # index 6 is the middle layer, overridden by index
    torch.testing.assert_close(gammas, torch.tensor(expected), atol=ATOL, rtol=0)
    ranges = static_gate_range(schedule, LAYERS)
    assert (ranges["input_1_0"], ranges["input_2_0"], ranges["output_3_0"]) == ((0.5, 0.9), (0.0, 1.0), (0.2, 0.2))


def test_window_is_one_inside_start_and_end_only():
    window = window_at(0.2, 0.8, torch.tensor([0.1, 0.2, 0.5, 0.8, 0.9]))
    assert torch.equal(window, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    assert window_at(0.2, 0.8, torch.tensor(0.5)).shape == ()


def test_progress_from_sigma_interpolates_a_decreasing_grid():
    sigma_grid = torch.tensor([14.0, 6.0, 2.0, 0.5, 0.0])
    progress_grid = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    got = progress_from_sigma(torch.tensor([20.0, 14.0, 6.0, 4.0, 0.0]), sigma_grid, progress_grid)
    # 4.0 lies halfway between 6.0 (0.25) and 2.0 (0.5); beyond the grid the end progress holds
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.25, 0.375, 1.0]), atol=ATOL, rtol=0)
    assert progress_from_sigma(torch.tensor(4.0), sigma_grid, progress_grid).shape == ()


def test_per_step_gate_functions_never_sync_with_the_host():
    schedule = GateSchedule(KEYFRAMES, "cosine", 0.1, 0.9, (BlockOverride(((0.0, 0.5),), blocks=("middle",)),))
    table = gate_table(schedule, LAYERS)
    sigma_grid, progress_grid = torch.linspace(14.0, 0.0, 11), torch.linspace(0.0, 1.0, 11)
    with OpRecorder(forbid_host_sync=True):
        progress = progress_from_sigma(torch.tensor([7.0, 7.0]), sigma_grid, progress_grid)
        gates_at(table, progress)
        window_at(schedule.start_at, schedule.end_at, progress)


def test_parse_keyframes_accepts_commas_newlines_and_a_bare_number():
    assert parse_keyframes("0:1.0, 0.5:0.3, 1:0", "keyframes") == KEYFRAMES
    assert parse_keyframes("1:0\n0:1.0\n0.5 : 0.3\n", "keyframes") == KEYFRAMES
    assert parse_keyframes(" 0.7 ", "keyframes") == ((0.0, 0.7),)


@pytest.mark.parametrize("text", ["", "abc", "0:1:2", "0.5:", "1.5:0.5", "0:1.2", "0:-0.1", "0:1, 0:0.5", "nan:0.5"])
def test_parse_keyframes_rejects_malformed_text_with_one_sentence(text):
    with pytest.raises(FlexIPError) as error:
        parse_keyframes(text, "FlexIPGateSchedule keyframes")
    assert_one_sentence(str(error.value), "FlexIPGateSchedule keyframes")


def test_parse_layer_indices_accepts_commas_newlines_and_spaces():
    assert parse_layer_indices("0, 1,5\n 7 ", "layer_indices") == (0, 1, 5, 7)


@pytest.mark.parametrize("text", ["1,a", "1 2", "0.5", "1,,x"])
def test_parse_layer_indices_rejects_non_integers_with_one_sentence(text):
    with pytest.raises(FlexIPError) as error:
        parse_layer_indices(text, "FlexIPGateSchedule layer_indices")
    assert_one_sentence(str(error.value), "FlexIPGateSchedule layer_indices", "not a list of integers")


def test_parse_layer_indices_refuses_more_items_than_its_limit_before_reading_any():
    at_limit = ", ".join(["0"] * MAX_LAYER_INDICES)
    assert len(parse_layer_indices(at_limit, "layer_indices")) == MAX_LAYER_INDICES
    # items that are not even integers: the count is checked first, so no item of a huge text is converted
    with pytest.raises(FlexIPError) as error:
        parse_layer_indices(", ".join(["x"] * (MAX_LAYER_INDICES + 1)), "FlexIPGateSchedule layer_indices")
    assert_one_sentence(
        str(error.value),
        "FlexIPGateSchedule layer_indices",
        f"{MAX_LAYER_INDICES + 1} items, more than the {MAX_LAYER_INDICES} accepted",
    )


@pytest.mark.parametrize(
    "schedule,mention",
    [
        (GateSchedule(KEYFRAMES, "cubic"), "interpolation"),
        (GateSchedule(KEYFRAMES, start_at=0.8, end_at=0.2), "start_at"),
        (GateSchedule(((0.5, 0.3), (0.0, 1.0))), "out of order"),
        (GateSchedule(()), "no keyframes"),
        (GateSchedule(KEYFRAMES, overrides=(BlockOverride(((0.0, 1.0),), blocks=("down",)),)), "down"),
    ],
)
def test_validate_schedule_names_the_problem(schedule, mention):
    with pytest.raises(FlexIPError) as error:
        validate_schedule(schedule, "the gate input")
    assert_one_sentence(str(error.value), "the gate input", mention)


def test_override_index_beyond_the_layer_list_is_an_error():
    schedule = GateSchedule(KEYFRAMES, overrides=(BlockOverride(((0.0, 1.0),), layer_indices=(16,)),))
    with pytest.raises(FlexIPError, match="16 layers"):
        gate_table(schedule, LAYERS)


def test_gate_table_moves_to_a_device():
    table = gate_table(constant_schedule(0.4), LAYERS).to("cpu")
    assert table.positions.device.type == "cpu"
    torch.testing.assert_close(gates_at(table, torch.tensor(0.3)), torch.full((16,), 0.4), atol=ATOL, rtol=0)
