"""The hot path stays cheap: no host sync, and one attention call per branch (two in output mode,
one over the joint K/V in token mode). Exact op counts belong to the benchmark (`make bench`)."""

from __future__ import annotations

import pytest
import torch

from flexip_model.attention import BranchKV, LayerKV, adapter_attention, join_branches
from tests.unit.flexip_unit_helpers import OpRecorder

pytestmark = pytest.mark.unit

B, H, N, DH = 2, 4, 16, 8


def _layer_kv() -> LayerKV:
    generator = torch.Generator().manual_seed(0)

    def branch(tokens: int) -> BranchKV:
        key, value = torch.randn(2, B, H, tokens, DH, generator=generator)
        return BranchKV(key, value)

    # token mode's concatenation is made once per run by FlexIPAdapter.layer_kv, as here
    return join_branches(LayerKV(branch(5), branch(7)))


CASES = {
    "output, float gate": ("output", 0.8, 0.3),
    "output, per-item gate": ("output", torch.tensor([1.0, 0.5]).view(B, 1, 1, 1), torch.tensor([0.0, 1.0])),
    "token, float gate": ("token", 0.8, 0.3),
    "token, per-item gate": ("token", 0.8, torch.tensor([0.0, 0.6]).view(B, 1, 1, 1)),
}


def test_op_recorder_catches_a_host_sync():
    with pytest.raises(AssertionError, match="host sync"), OpRecorder(forbid_host_sync=True):
        torch.ones(2).sum().item()


@pytest.mark.parametrize("name", CASES)
def test_adapter_attention_never_syncs_with_the_host(name):
    gate_mode, strength, gate = CASES[name]
    q, kv = torch.randn(B, H, N, DH), _layer_kv()
    with OpRecorder(forbid_host_sync=True):
        adapter_attention(q, kv, strength, gate, gate_mode)


@pytest.mark.parametrize("name", CASES)
def test_output_mode_attends_once_per_branch_and_token_mode_once_in_all(name):
    gate_mode, strength, gate = CASES[name]
    q, kv = torch.randn(B, H, N, DH), _layer_kv()
    with OpRecorder() as recorder:
        adapter_attention(q, kv, strength, gate, gate_mode)
    attention_calls = [op for op in recorder.ops if "scaled_dot_product" in op]
    assert len(attention_calls) == (2 if gate_mode == "output" else 1)
