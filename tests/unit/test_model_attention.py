"""The layer equation against an independent reference written from docs/design.md §2."""

from __future__ import annotations

import pytest
import torch

from flexip_model.attention import (
    BranchKV,
    LayerKV,
    adapter_attention,
    gated_attention,
    join_branches,
    sdpa_attention,
)
from tests.unit.flexip_unit_helpers import naive_attention

pytestmark = pytest.mark.unit

B, H, N, DH, TP, TY, L = 3, 4, 10, 8, 5, 7, 6
INNER = H * DH
# fp32 vs a float64 reference: a few roundings of 2^-24 on O(1) values summed over ≤ 20 tokens
FP32_ATOL = 1e-5
# bf16 keeps 8 mantissa bits (rounding 2^-9 relative); the result passes through ~6 roundings
# (weights, scaled K/V, two attention outputs, the blend) of values ≤ ~3 in size: 6·3·2^-9 ≈ 0.035
BF16_ATOL = 4e-2
# one fp32 computation against the same math over differently shaped tensors: see its use
SAME_MATH_ATOL = 2e-6


def _kv(tokens: int, generator: torch.Generator, dtype: torch.dtype) -> BranchKV:
    return BranchKV(
        torch.randn(B, H, tokens, DH, generator=generator).to(dtype),
        torch.randn(B, H, tokens, DH, generator=generator).to(dtype),
    )


@pytest.fixture()
def case():
    def make(dtype: torch.dtype = torch.float32):
        generator = torch.Generator().manual_seed(0)
        q = torch.randn(B, H, N, DH, generator=generator).to(dtype)
        return q, LayerKV(_kv(TP, generator, dtype), _kv(TY, generator, dtype))

    return make


def _weights(value, batch: int = B) -> list[float]:
    return [float(value)] * batch if not isinstance(value, torch.Tensor) else value.flatten().expand(batch).tolist()


def reference_term(q, kv: LayerKV, strength, gate, gate_mode: str) -> torch.Tensor:
    """s·(γ·A_p + (1−γ)·A_y) or s·Attn(q, [γK_p; (1−γ)K_y], ...), per item and head, float64."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    pres, pers = kv.preservation, kv.personalization
    for b, (s, g) in enumerate(zip(_weights(strength), _weights(gate))):
        for h in range(q.shape[1]):
            qh = q[b, h]
            kp, vp, ky, vy = (t[b, h].double() for t in (pres.key, pres.value, pers.key, pers.value))
            if gate_mode == "output":
                term = g * naive_attention(qh, kp, vp) + (1 - g) * naive_attention(qh, ky, vy)
            else:
                # a token of weight exactly 0 is not part of the sequence (docs/design.md §2: a dead branch is skipped)
                keys = [w * k for w, k in ((g, kp), (1 - g, ky)) if w != 0]
                values = [w * v for w, v in ((g, vp), (1 - g, vy)) if w != 0]
                term = naive_attention(qh, torch.cat(keys), torch.cat(values))
            out[b, h] = s * term
    return out


@pytest.mark.parametrize("gate_mode", ["output", "token"])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, FP32_ATOL), (torch.bfloat16, BF16_ATOL)])
@pytest.mark.parametrize("per_item", [False, True])
def test_adapter_term_matches_naive_reference(case, gate_mode, dtype, atol, per_item):
    q, kv = case(dtype)
    if per_item:  # includes exact 0 and 1 next to an inner value
        strength, gate = torch.tensor([0.7, 1.0, 1.3]).view(B, 1, 1, 1), torch.tensor([0.0, 0.4, 1.0])
    else:
        strength, gate = 0.8, 0.35
    got = adapter_attention(q, kv, strength, gate, gate_mode)
    assert got.shape == (B, H, N, DH) and got.dtype == dtype
    expected = reference_term(q, kv, strength, gate, gate_mode)
    torch.testing.assert_close(got.double(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("gate_mode", ["output", "token"])
def test_gate_one_and_zero_equal_single_branch(case, gate_mode):
    q, kv = case()
    pres_only = adapter_attention(q, LayerKV(kv.preservation, None), 0.9, 1.0, gate_mode)
    pers_only = adapter_attention(q, LayerKV(None, kv.personalization), 0.9, 0.0, gate_mode)
    # bit-for-bit by construction: a Python γ of 1 or 0 skips the other branch, so both sides make
    # the same kernel calls on the same tensors
    assert torch.equal(adapter_attention(q, kv, 0.9, 1.0, gate_mode), pres_only)
    assert torch.equal(adapter_attention(q, kv, 0.9, 0.0, gate_mode), pers_only)
    expected = 0.9 * reference_term(q, LayerKV(kv.preservation, kv.preservation), 1.0, 1.0, gate_mode)
    torch.testing.assert_close(pres_only.double(), expected, atol=FP32_ATOL, rtol=0)


def test_token_mode_tensor_gate_zero_and_one_agree_with_single_branch_per_item(case):
    q, kv = case()
    kv = join_branches(kv)
    gate = torch.tensor([1.0, 0.0, 0.5]).view(B, 1, 1, 1)
    got = adapter_attention(q, kv, 1.0, gate, "token")
    pres_only = adapter_attention(q, LayerKV(kv.preservation, None), 1.0, 1.0, "token")
    pers_only = adapter_attention(q, LayerKV(None, kv.personalization), 1.0, 0.0, "token")
    # The dead tokens have weight 0 and a -inf logit, so in exact arithmetic they add 0 to the
    # softmax sums; but the per-item call attends over TP+TY = 12 masked keys and the single-branch
    # calls over 5 or 7, and the CPU attention kernel blocks its sums by shape and by instruction
    # set (bit-equal on one Intel CPU, 1 ulp apart on an AMD EPYC with AVX2). Tolerance: ≤ 12
    # float32 roundings (2^-24 relative) of outputs ≤ ~3 in size, ≈ 2e-6; a leaked dead token
    # (no mask) moves the output by ~0.9 here.
    torch.testing.assert_close(got[0], pres_only[0], atol=SAME_MATH_ATOL, rtol=0)
    torch.testing.assert_close(got[1], pers_only[1], atol=SAME_MATH_ATOL, rtol=0)
    assert torch.isfinite(got).all()


def test_nothing_live_returns_none(case):
    q, kv = case()
    assert adapter_attention(q, kv, 0.0, 0.5, "output") is None
    assert adapter_attention(q, LayerKV(None, kv.personalization), 1.0, 1.0, "token") is None
    assert adapter_attention(q, LayerKV(None, None), 1.0, torch.tensor(0.5), "output") is None


def _text(generator: torch.Generator, dtype=torch.float32):
    return (
        torch.randn(B, N, INNER, generator=generator).to(dtype),
        torch.randn(B, L, INNER, generator=generator).to(dtype),
        torch.randn(B, L, INNER, generator=generator).to(dtype),
    )


def _reference_text(q, k, v) -> torch.Tensor:
    out = torch.zeros(B, N, INNER, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            cols = slice(h * DH, (h + 1) * DH)
            out[b, :, cols] = naive_attention(q[b, :, cols], k[b, :, cols], v[b, :, cols])
    return out


def test_strength_zero_or_no_adapter_tokens_returns_the_text_term_unchanged(case):
    _, kv = case()
    q, k, v = _text(torch.Generator().manual_seed(1))
    text = sdpa_attention(q, k, v, H)
    assert gated_attention(q, text, LayerKV(None, None), H, 1.0, 0.5) is text
    assert gated_attention(q, text, kv, H, 0.0, 0.5) is text
    torch.testing.assert_close(text.double(), _reference_text(q, k, v), atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("gate_mode", ["output", "token"])
@pytest.mark.parametrize("mask_shape", [(B, N), (B, N, 1)])
def test_gated_attention_adds_masked_adapter_term(case, gate_mode, mask_shape):
    _, kv = case()
    q, k, v = _text(torch.Generator().manual_seed(2))
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(3))
    mask[0, :3] = 0.0  # latent tokens outside the subject region get no adapter term
    gate = torch.tensor([0.2, 0.9, 0.5])
    got = gated_attention(q, sdpa_attention(q, k, v, H), kv, H, 0.75, gate, gate_mode, mask=mask)
    q_heads = q.view(B, N, H, DH).transpose(1, 2)
    term = reference_term(q_heads, kv, 0.75, gate, gate_mode).transpose(1, 2).reshape(B, N, INNER)
    expected = _reference_text(q, k, v) + mask.reshape(B, N, 1).double() * term
    torch.testing.assert_close(got.double(), expected, atol=FP32_ATOL, rtol=0)


def test_attn_precision_float32_upcasts_half_inputs(case):
    q, kv = case(torch.bfloat16)
    got = adapter_attention(q, kv, 1.0, 0.5, "output", attn_precision=torch.float32)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), reference_term(q, kv, 1.0, 0.5, "output"), atol=BF16_ATOL, rtol=0)


def test_custom_attention_function_is_called_with_head_split_inputs(case):
    q, kv = case()
    calls = []

    def attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
        calls.append((heads, skip_reshape, skip_output_reshape, tuple(k.shape)))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    adapter_attention(q, kv, 1.0, 0.5, "output", attention=attention)
    assert calls == [(H, True, True, (B, H, TP, DH)), (H, True, True, (B, H, TY, DH))]
