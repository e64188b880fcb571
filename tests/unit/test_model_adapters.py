"""Adapter modules: output shapes, gradient flow, state-dict names, base-weight init."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flexip_model import (
    FlexIPAdapter,
    FlexIPError,
    LayerSpec,
    config_for,
    default_layers,
    gated_attention,
    sdpa_attention,
)
from flexip_model.preservation import PreservationAdapter

pytestmark = pytest.mark.unit

DINO_TOKENS = 257  # DINOv2-L at 224 px: CLS + 16x16 patches
# a small UNet's attn2 layers (one per block kind, narrow), so gradients and copies stay cheap
SMALL_LAYERS = (LayerSpec("input_1_0", 64, 2), LayerSpec("middle_0_0", 128, 2), LayerSpec("output_3_1", 64, 4))


@pytest.mark.parametrize("base,d", [("sd15", 768), ("sdxl", 2048)])
@pytest.mark.parametrize("context_length", [77, 154])
def test_adapter_tokens_have_design_shapes(base, d, context_length):
    torch.manual_seed(0)
    # two layers suffice for shapes; SDXL's 70 full-width projections would cost seconds to initialise
    config = config_for(base, layers=default_layers(base)[:2], tiny=True)
    adapter = FlexIPAdapter(config)
    clip, dino = torch.randn(2, 1024), torch.randn(2, DINO_TOKENS, 1024)
    with torch.no_grad():
        pres = adapter.preservation_tokens(clip, dino)
        pers = adapter.personalization_tokens(torch.randn(2, context_length, d), clip)
        spec = config.layers[0]
        kv = adapter.layer_kv(spec.key, pres, pers)
    assert pres.shape == (2, config.preservation_token_count, d)
    assert pers.shape == (2, context_length, d)
    dim_head = spec.inner_dim // spec.heads
    assert kv.preservation.key.shape == (2, spec.heads, config.preservation_token_count, dim_head)
    assert kv.personalization.value.shape == (2, spec.heads, context_length, dim_head)


def test_full_size_preservation_adapter_gives_20_tokens():
    # the SD1.5 default: 4 [CLS]-branch tokens + 16 query tokens, d = 768; on the meta device
    # the full-size forward checks every shape without allocating or computing
    with torch.device("meta"):
        tokens = PreservationAdapter(config_for("sd15"))(torch.randn(1, 1024), torch.randn(1, DINO_TOKENS, 1024))
    assert tokens.shape == (1, 20, 768)


def test_state_dict_names_follow_the_checkpoint_format():
    names = set(FlexIPAdapter(config_for("sd15", tiny=True)).state_dict())
    assert {
        "layers.input_1_0.pres.to_k.weight",
        "layers.middle_0_0.pers.to_v.weight",
        "layers.output_11_0.pres.to_v.weight",
        "preservation.queries",
    } <= names
    assert all(name.split(".")[0] in ("preservation", "personalization", "layers") for name in names)
    token = FlexIPAdapter(dataclasses.replace(config_for("sd15", tiny=True), gate_mode="token"))
    assert "layers.input_1_0.joint.to_k.weight" in token.state_dict()
    assert not any(".pres." in name for name in token.state_dict())


@pytest.mark.parametrize("gate_mode", ["output", "token"])
def test_gradients_reach_every_adapter_parameter_and_no_frozen_one(gate_mode):
    torch.manual_seed(0)
    config = dataclasses.replace(config_for("sd15", layers=SMALL_LAYERS, tiny=True), gate_mode=gate_mode)
    adapter = FlexIPAdapter(config)
    # frozen stand-ins for the UNet's attn2 projections and for encoder outputs
    base = {spec.key: torch.nn.Linear(768, spec.inner_dim, bias=False).requires_grad_(False) for spec in config.layers}
    clip, dino, text = torch.randn(2, 1024), torch.randn(2, 9, 1024), torch.randn(2, 77, 768)
    pres = adapter.preservation_tokens(clip, dino)
    pers = adapter.personalization_tokens(text, clip)
    loss = torch.zeros(())
    for spec in config.layers:
        q = base[spec.key](torch.randn(2, 6, 768))
        text_term = sdpa_attention(q, base[spec.key](text), base[spec.key](text), spec.heads)
        out = gated_attention(
            q, text_term, adapter.layer_kv(spec.key, pres, pers), spec.heads, 1.0, torch.tensor([0.3, 0.8]), gate_mode
        )
        loss = loss + out.square().mean()
    loss.backward()
    missing = [name for name, p in adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(linear.weight.grad is None for linear in base.values())
    assert clip.grad is None and dino.grad is None and text.grad is None


def test_init_from_base_copies_each_layers_weights_into_all_projections():
    config = config_for("sd15", layers=SMALL_LAYERS, tiny=True)
    adapter = FlexIPAdapter(config)
    generator = torch.Generator().manual_seed(0)
    base = {
        spec.key: (
            torch.randn(spec.inner_dim, 768, generator=generator),
            torch.randn(spec.inner_dim, 768, generator=generator),
        )
        for spec in config.layers
    }
    adapter.layers.init_from_base(base)
    for key, (to_k, to_v) in base.items():
        for branch in ("pres", "pers"):
            assert torch.equal(adapter.layers[key][branch].to_k.weight, to_k)
            assert torch.equal(adapter.layers[key][branch].to_v.weight, to_v)
    assert all(p.requires_grad for p in adapter.layers.parameters())  # still trainable after the copy


def test_init_from_base_rejects_missing_layer_and_wrong_shape():
    config = config_for("sd15", layers=SMALL_LAYERS, tiny=True)
    adapter = FlexIPAdapter(config)
    base = {spec.key: (torch.zeros(spec.inner_dim, 768), torch.zeros(spec.inner_dim, 768)) for spec in config.layers}
    with pytest.raises(FlexIPError, match="output_3_1"):
        adapter.layers.init_from_base({k: v for k, v in base.items() if k != "output_3_1"})
    with pytest.raises(FlexIPError, match=r"input_1_0.*\(64, 2048\)"):
        adapter.layers.init_from_base({**base, "input_1_0": (torch.zeros(64, 2048), torch.zeros(64, 2048))})


def test_layer_kv_rejects_unknown_layer():
    adapter = FlexIPAdapter(config_for("sd15", tiny=True))
    with pytest.raises(FlexIPError, match="input_3_0"):
        adapter.layer_kv("input_3_0", torch.zeros(1, 6, 768), None)
