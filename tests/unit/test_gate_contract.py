"""The Gate contract, run over every implementation: a schedule (constant, keyframed, per block) and a sweep.

FlexIPApply only calls `with_window` and `plan`; the patch only calls the plan's `call_gates`.
"""

from __future__ import annotations

import pytest
import torch

from flexip_model import (
    BlockOverride,
    FlexIPError,
    GateSchedule,
    GateSweep,
    constant_schedule,
    default_layers,
    range_gammas,
)
from tests.support.assertions import assert_one_sentence
from tests.unit.flexip_unit_helpers import OpRecorder

pytestmark = pytest.mark.unit

LAYERS = default_layers("sd15")  # 16 layers; index 6 is middle_0_0
MIDDLE = 6
KEYFRAMES = ((0.0, 1.0), (0.5, 0.3), (1.0, 0.0))
ITEMS = (0.0, 0.5, 1.0)
# Progress comes back from sigma through a 1001-point float32 grid: about 1e-6 off, times a
# keyframe slope of at most 2.8 per unit progress; 1e-5 bounds that with room for other CPUs.
ATOL = 1e-5


def sigma_at(progress: float) -> float:
    """A model whose sigma falls linearly from 14 (progress 0) to 0 (progress 1)."""
    return 14.0 * (1.0 - progress)


def sigmas_of(progress: float) -> torch.Tensor:
    """A call's `sigmas` ([rows per chunk]) at `progress`."""
    return torch.full((3,), sigma_at(progress))


GATES = {
    "constant": constant_schedule(0.3),
    "keyframed": GateSchedule(KEYFRAMES),
    "per block": GateSchedule(((0.0, 0.4),), overrides=(BlockOverride(KEYFRAMES, blocks=("middle",)),)),
    "sweep": GateSweep(ITEMS),
}


def expected_gammas(kind: str, progress: float, rows: int) -> torch.Tensor:
    """[L, rows]: γ of every layer and call row at `progress` (rows = chunks x latent items)."""
    keyframed = 1.0 - 1.4 * progress if progress <= 0.5 else 0.6 - 0.6 * progress
    if kind == "constant":
        per_layer = [0.3] * len(LAYERS)
    elif kind == "keyframed":
        per_layer = [keyframed] * len(LAYERS)
    elif kind == "per block":
        per_layer = [keyframed if index == MIDDLE else 0.4 for index in range(len(LAYERS))]
    else:
        return torch.tensor(ITEMS).repeat(rows // len(ITEMS)).expand(len(LAYERS), -1)
    return torch.tensor(per_layer).unsqueeze(1).expand(-1, rows)


def call_gates(gate, progress: float, chunks: int = 2, strength: float = 0.8):
    rows = chunks * len(ITEMS)
    plan = gate.plan(LAYERS, sigma_at)
    return plan.call_gates(sigmas_of(progress), chunks, rows, strength, torch.zeros(rows, 4, 8))


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("progress", [0.0, 0.25, 0.7])
def test_every_gate_gives_each_layer_and_row_its_gamma(kind, progress):
    gates, strength = call_gates(GATES[kind], progress)
    assert len(gates) == len(LAYERS) and strength == 0.8  # no window: s stays a Python float
    rows = 2 * len(ITEMS)
    got = torch.stack([torch.as_tensor(gate, dtype=torch.float32).expand(rows) for gate in gates])
    torch.testing.assert_close(got, expected_gammas(kind, progress, rows), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kind, constant_layers",
    [
        ("constant", set(range(16))),
        ("keyframed", set()),
        ("per block", set(range(16)) - {MIDDLE}),
        ("sweep", set()),
    ],
)
def test_layers_with_one_gamma_for_the_whole_run_get_a_python_float(kind, constant_layers):
    """A Python float lets the attention skip a dead branch statically; a tensor never can."""
    gates, _ = call_gates(GATES[kind], 0.25)
    assert {index for index, gate in enumerate(gates) if isinstance(gate, float)} == constant_layers


@pytest.mark.parametrize("kind", GATES)
def test_gates_depend_on_the_step_only_where_a_keyframe_changes(kind):
    plan = GATES[kind].plan(LAYERS, sigma_at)
    assert plan.needs_progress == (kind in ("keyframed", "per block"))


def test_a_gate_fixed_for_the_run_never_asks_the_model_for_sigmas():
    def no_sigmas(progress: float) -> float:
        raise AssertionError("sigma grid built for a gate that never reads the progress")

    for kind in ("constant", "sweep"):
        plan = GATES[kind].plan(LAYERS, no_sigmas)
        rows = 2 * len(ITEMS)
        plan.call_gates(None, 2, rows, 1.0, torch.zeros(rows, 4, 8))  # a call without sigmas is fine too


@pytest.mark.parametrize("kind", GATES)
def test_window_sets_the_strength_to_zero_outside_start_and_end_only(kind):
    gate = GATES[kind].with_window(0.2, 0.6, "FlexIPApply")
    assert (gate.start_at, gate.end_at) == (0.2, 0.6)
    outside_before, inside, outside_after = (call_gates(gate, p)[1] for p in (0.1, 0.4, 0.9))
    assert float(outside_before) == 0.0 and float(outside_after) == 0.0
    torch.testing.assert_close(inside, torch.tensor(0.8), atol=ATOL, rtol=0)
    # the window changes the strength only: γ stays what it is without one
    windowed, _ = call_gates(gate, 0.4)
    plain, _ = call_gates(GATES[kind], 0.4)
    for with_window, without in zip(windowed, plain):
        torch.testing.assert_close(torch.as_tensor(with_window), torch.as_tensor(without), atol=0, rtol=0)


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("start_at, end_at", [(0.8, 0.2), (-0.1, 0.5), (0.5, 1.5)])
def test_a_bad_window_is_one_sentence_naming_the_node(kind, start_at, end_at):
    with pytest.raises(FlexIPError) as error:
        GATES[kind].with_window(start_at, end_at, "FlexIPApply")
    assert_one_sentence(str(error.value), "FlexIPApply", f"start_at {start_at} and end_at {end_at}")


@pytest.mark.parametrize("kind", GATES)
def test_per_call_gates_never_sync_with_the_host(kind):
    gate = GATES[kind].with_window(0.1, 0.9, "FlexIPApply")
    plan = gate.plan(LAYERS, sigma_at).to(torch.device("cpu"))
    rows = 2 * len(ITEMS)
    with OpRecorder(forbid_host_sync=True):
        plan.call_gates(sigmas_of(0.5), 2, rows, 1.0, torch.zeros(rows, 4, 8))


@pytest.mark.parametrize("chunks, order", [(1, "cond only"), (2, "cond and uncond"), (3, "a regional cond")])
def test_sweep_repeats_its_items_once_per_chunk(chunks, order):
    gates, _ = call_gates(GATES["sweep"], 0.5, chunks=chunks)
    assert torch.equal(gates[0], torch.tensor(ITEMS * chunks)), order


def test_sweep_against_a_latent_batch_of_another_size_is_one_sentence():
    plan = GATES["sweep"].plan(LAYERS, sigma_at)
    with pytest.raises(FlexIPError) as error:
        plan.call_gates(None, 2, 10, 1.0, torch.zeros(10, 4, 8))
    assert_one_sentence(str(error.value), "has 3 gate values but the latent batch has 5 images")


def test_range_gammas_spaces_count_values_and_refuses_bad_ranges():
    assert range_gammas(1.0, 0.0, 5, "FlexIPGateSweep range") == (1.0, 0.75, 0.5, 0.25, 0.0)
    assert range_gammas(0.3, 0.9, 1, "FlexIPGateSweep range") == (0.3,)
    with pytest.raises(FlexIPError) as error:
        range_gammas(0.0, 1.5, 5, "FlexIPGateSweep range")
    assert_one_sentence(str(error.value), "FlexIPGateSweep range", "0.0..1.5 x 5")
