"""FlexIP under ComfyUI's UNet precisions: which type the adapter computes in, and how far its
term of one layer is from float64 math in each type (tiny UNet, real ModelPatcher and sampler)."""

from __future__ import annotations

import comfy.cli_args
import comfy.sd
import pytest
import torch

import flexip_model
from tests.comfy.tiny_world import apply, attn2_patches, sample, sd15_conds, tiny_world
from tools.fixtures import sd15_checkpoint
from tools.fixtures.tiny import tiny_unet_patcher

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_thread")]

STRENGTH, GATE = 1.0, 0.5

# UNet storage, UNet manual cast (None: computes in its storage type), the adapter's (= compute) type,
# and the allowed error in units of that type's epsilon times the size of the layer's output (~3.6).
# The path rounds the adapter weights, the tokens through ~6 layers (norms, attention, MLP), the
# K/V, the query, two attention outputs, the blend and the final add of the text attention: about
# 20 roundings of values up to the output's size, which mostly cancel (√20 ≈ 4.5). Measured on this
# machine: 0.78-0.84 ulp in fp16 and bf16, 2.3-2.4 ulp in fp32 (whose ulp is 2^13 times smaller,
# so float64-exact steps such as the softmax sums weigh more); 8 ulps leaves a 3x margin.
CASES = {
    "fp32": (torch.float32, None, torch.float32),
    "bf16": (torch.bfloat16, None, torch.bfloat16),
    "fp16": (torch.float16, None, torch.float16),
    "fp8-storage-fp16-compute": (torch.float8_e4m3fn, torch.float16, torch.float16),  # as on an Ampere GPU
    "fp8-storage-cpu": (torch.float8_e4m3fn, torch.float32, torch.float32),  # what ComfyUI picks on a CPU
}
ULPS = 8


def _probe_first_layer(model, seen: list) -> None:
    """Record (q, k, v, extra_options, output) of the first patched layer's first call."""
    patches = attn2_patches(model)
    key = sorted(patches)[0]
    inner = patches[key]

    def probe(q, k, v, extra_options):
        out = inner(q, k, v, extra_options)
        if not seen:
            seen.append((q, k, v, dict(extra_options), out))
        return out

    patches[key] = probe


def _attention64(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√dh)·v in float64, [B, H, N, dh]."""
    return torch.softmax(q @ key.transpose(-1, -2) / key.shape[-1] ** 0.5, dim=-1) @ value


@pytest.mark.parametrize("case", sorted(CASES), ids=sorted(CASES))
def test_adapter_term_of_one_layer_matches_float64_math(flexip_pack, case):
    import comfy.ldm.modules.attention as comfy_attention

    storage, manual_cast, compute = CASES[case]
    unet = tiny_unet_patcher(storage=storage, manual_cast=manual_cast)
    world = tiny_world(flexip_pack, model=unet, dtype=compute)
    reference = tiny_world(flexip_pack, model=unet, dtype=torch.float64)  # the same seeded weights
    assert next(world["flexip"].adapter.parameters()).dtype == compute
    patched = apply(world, STRENGTH, GATE)
    seen: list = []
    _probe_first_layer(patched, seen)
    sample(patched, steps=1, size=8)
    q, k, v, options, out = seen[0]
    assert q.dtype == out.dtype == compute
    heads = options["n_heads"]
    text = comfy_attention.optimized_attention(
        q, k, v, heads, attn_precision=options.get("attn_precision"), transformer_options=options
    )
    got = out.double() - text.double()

    fm = flexip_model
    adapter64, subject64 = reference["flexip"].adapter, reference["subject"]
    rows = torch.tensor(options["cond_or_uncond"]).repeat_interleave(q.shape[0] // len(options["cond_or_uncond"]))
    positive, negative = sd15_conds()
    context = torch.cat([positive[0][0], negative[0][0]]).double()[rows]
    personalization = adapter64.personalization_tokens(context, subject64.tokens["clip_embeds"].double()[rows])
    kv = adapter64.layer_kv(
        fm.vocabulary.layer_key(*options["block"], options["block_index"]),
        subject64.tokens["preservation"][rows],
        personalization,
    )
    q64 = fm.attention.split_heads(q.double(), heads)
    blend = GATE * _attention64(q64, kv.preservation.key, kv.preservation.value) + (1 - GATE) * _attention64(
        q64, kv.personalization.key, kv.personalization.value
    )
    expected = STRENGTH * fm.attention.merge_heads(blend)

    scale = max(out.double().abs().max().item(), expected.abs().max().item())
    error = (got - expected).abs().max().item()
    assert expected.abs().max() > 0.1 * scale  # not vacuous: the adapter term is a sizeable part of the output
    assert error <= ULPS * torch.finfo(compute).eps * scale, f"{case}: error {error:.3g}, output scale {scale:.3g}"


@pytest.mark.parametrize("switch", ["bf16_unet", "fp16_unet", "fp8_e4m3fn_unet", "fp8_e5m2_unet"])
def test_adapter_computes_in_the_type_the_unet_computes_in_under_each_switch(flexip_pack, monkeypatch, switch):
    # the same attribute ComfyUI's command line sets; comfy.sd and LoadedFlexIP.wrap both read it per call
    monkeypatch.setattr(comfy.cli_args.args, switch, True)
    model = comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint()), output_vae=False, output_clip=False)[0]
    unet_compute = model.model.manual_cast_dtype or model.model.get_dtype()
    world_adapter = flexip_pack.nodes.bundles.LoadedFlexIP.wrap(
        "flexip.safetensors", flexip_model.FlexIPAdapter(flexip_model.config_for("sd15", tiny=True))
    )
    assert next(world_adapter.adapter.parameters()).dtype == unet_compute
