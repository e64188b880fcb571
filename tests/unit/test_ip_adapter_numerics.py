"""Compatibility mode, numbers: image projections and the gated layer equal an independent IP-Adapter reference.

Files have each release's real image projection (names, shapes) and a few UNet layers of
the real widths; the reference (tools/fixtures/ip_adapter_reference.py) is float64 and
written from IP-Adapter's paper and release layout without using flexip_model.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from flexip_model.attention import gated_attention, sdpa_attention
from flexip_model.config import LayerSpec
from flexip_model.errors import FlexIPError
from flexip_model.ip_adapter import load_pair
from tests.unit.flexip_unit_helpers import load_one_file
from tools.fixtures import ip_adapter_reference as reference
from tools.fixtures.ip_adapter_files import build_ip_adapter

pytestmark = pytest.mark.unit

# Three layers per base, one from each block: (model layer list, their widths in the files' order
# input, output, middle). SD1.5 has 8 heads everywhere; SDXL 64-wide heads.
LAYERS = {
    768: (
        (LayerSpec("input_1_0", 320, 8), LayerSpec("middle_0_0", 1280, 8), LayerSpec("output_3_0", 640, 8)),
        (320, 640, 1280),
    ),
    2048: (
        (LayerSpec("input_4_0", 640, 10), LayerSpec("middle_0_0", 1280, 20), LayerSpec("output_0_0", 1280, 20)),
        (640, 1280, 1280),
    ),
}
IP_NUMBER = {"input_1_0": 0, "output_3_0": 1, "input_4_0": 0, "output_0_0": 1, "middle_0_0": 2}
VARIANTS = {  # name -> context d
    "ip-adapter_sd15": 768,
    "ip-adapter_sd15_light": 768,
    "ip-adapter-plus_sd15": 768,
    "ip-adapter-plus-face_sd15": 768,
    "ip-adapter-full-face_sd15": 768,
    "ip-adapter_sdxl_vit-h": 2048,
    "ip-adapter-plus_sdxl_vit-h": 2048,
    "ip-adapter-plus-face_sdxl_vit-h": 2048,
}
# fp32 against float64: the resampler chains ~30 fp32 matmuls of width ≤ 5120 over O(1) values, each
# adding ~1e-6 relative; outputs are layer-normed (O(1)), so 1e-4 is ~10x above the worst seen (~1e-5)
TOKENS_ATOL, TOKENS_RTOL = 1e-4, 1e-4
# the layer: two fp32 attentions over O(1) keys and values, then scaled by s ≤ 1: ~1e-6 expected
LAYER_ATOL, LAYER_RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def ip_file(tmp_path_factory):
    """ip_file(name): the variant's file (real image projection, three layers), built once per module."""
    folder, built = tmp_path_factory.mktemp("ipadapter"), {}

    def get(name):
        if name not in built:
            built[name] = build_ip_adapter(folder / f"{name}.safetensors", name, layer_widths=LAYERS[VARIANTS[name]][1])
        return built[name]

    yield get
    shutil.rmtree(folder, ignore_errors=True)  # ~0.6 GB of full-width image projections


def _features(branch, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = branch.spec.feature_dim
    if branch.feature == "image_embeds":
        return torch.randn(batch, width, generator=generator)
    return torch.randn(batch, 257, width, generator=generator)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_image_tokens_equal_the_reference_projection(ip_file, name):
    path = ip_file(name)
    layers, _ = LAYERS[VARIANTS[name]]
    branch = load_one_file(path, layers, VARIANTS[name], dtype=torch.float32)
    features = _features(branch, batch=1)
    with torch.no_grad():
        tokens = branch.tokens(features)
    expected = reference.image_tokens(load_file(str(path)), features)
    assert tokens.shape == expected.shape
    torch.testing.assert_close(tokens.double(), expected, atol=TOKENS_ATOL, rtol=TOKENS_RTOL)


@pytest.mark.parametrize("name", ["ip-adapter_sd15", "ip-adapter-plus_sdxl_vit-h"])
def test_unconditional_row_is_made_as_each_file_was_trained(ip_file, name):
    branch = load_one_file(ip_file(name), LAYERS[VARIANTS[name]][0], VARIANTS[name], dtype=torch.float32)
    features = {"image_embeds": torch.randn(2, 1024), "penultimate_hidden_states": torch.randn(2, 257, 1280)}
    neutral = {"penultimate_hidden_states": torch.randn(1, 257, 1280)}
    with torch.no_grad():
        rows = branch.subject_tokens(features, neutral)
        own = features[branch.feature]
        # ip-adapter: zeros of image_embeds; plus: the hidden states of the neutral (zero-pixel) image
        uncond = torch.zeros(1, 1024) if branch.feature == "image_embeds" else neutral["penultimate_hidden_states"]
        torch.testing.assert_close(rows[:2], branch.tokens(own))
        torch.testing.assert_close(rows[2:], branch.tokens(uncond))
    if branch.feature != "image_embeds":
        with pytest.raises(FlexIPError):
            branch.subject_tokens(features)


PAIRS = {
    "sd15": ("ip-adapter-plus_sd15", "ip-adapter_sd15"),
    "sdxl": ("ip-adapter-plus-face_sdxl_vit-h", "ip-adapter_sdxl_vit-h"),
}


@pytest.fixture(scope="module", params=list(PAIRS))
def pair_case(request, ip_file):
    """A loaded pair of one base, its tokens for random CLIP features, and the reference tokens."""
    names = PAIRS[request.param]
    paths = [ip_file(name) for name in names]
    context = VARIANTS[names[0]]
    pair = load_pair(*paths, LAYERS[context][0], context, dtype=torch.float32)
    features = [_features(branch, batch=1, seed=seed) for seed, branch in enumerate(pair.branches)]
    with torch.no_grad():
        tokens = [branch.tokens(f) for branch, f in zip(pair.branches, features)]
    weights = [load_file(str(path)) for path in paths]
    expected_tokens = [reference.image_tokens(w, f) for w, f in zip(weights, features)]
    return pair, tokens, weights, expected_tokens


@pytest.mark.parametrize("gate", [1.0, 0.0, 0.25])
def test_gated_layer_is_ip_adapter_decoupled_cross_attention(pair_case, gate):
    """γ = 1: Attn(q, k, v) + w·Attn(q, K_ip, V_ip) of the preservation file; γ = 0: of the
    personalization file; between: the text term plus w·(γ·IP_pres + (1−γ)·IP_pers)."""
    pair, tokens, weights, expected_tokens = pair_case
    strength = 0.6
    generator = torch.Generator().manual_seed(1)
    for layer in pair.config.layers:
        q = torch.randn(1, 64, layer.inner_dim, generator=generator)
        k, v = torch.randn(2, 1, 77, layer.inner_dim, generator=generator)
        with torch.no_grad():
            out = gated_attention(
                q,
                sdpa_attention(q, k, v, layer.heads),
                pair.layer_kv(layer.key, *tokens),
                layer.heads,
                strength,
                gate,
                pair.config.gate_mode,
            )
        ip = [reference.ip_weights(w, IP_NUMBER[layer.key]) for w in weights]
        if gate in (0.0, 1.0):
            active = 0 if gate == 1.0 else 1
            expected = reference.decoupled_attention(
                q, k, v, layer.heads, expected_tokens[active], *ip[active], strength
            )
        else:
            expected = reference.attention(q.double(), k.double(), v.double(), layer.heads)
            for share, t, (to_k, to_v) in zip((gate, 1.0 - gate), expected_tokens, ip):
                expected = expected + strength * share * reference.ip_attention(q, layer.heads, t, to_k, to_v)
        torch.testing.assert_close(out.double(), expected, atol=LAYER_ATOL, rtol=LAYER_RTOL, msg=layer.key)
