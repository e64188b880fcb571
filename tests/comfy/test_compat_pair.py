"""Compatibility mode on a real ComfyUI ModelPatcher and sampler: a pair of IP-Adapter files under the gate.

The files carry the real tensor names and the real image projections (Resampler 768 wide,
12 heads, 4 deep, 16 queries for plus; 4 tokens for ip-adapter), sized for the tiny UNet
(7 cross-attention layers) and the tiny CLIP (64-d embeddings and hidden states).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

import flexip_model
from tests.comfy.tiny_world import attn2_patches, node
from tests.comfy.tiny_world import sample as tiny_sample
from tests.support.assertions import assert_one_sentence
from tools.fixtures import comfyui_path
from tools.fixtures import ip_adapter_reference as reference
from tools.fixtures.ip_adapter_files import build_ip_adapter, ip_adapter_file, linear_projection, resampler_projection
from tools.fixtures.tiny import tiny_clip_vision, tiny_unet_patcher

pytestmark = pytest.mark.comfy

STEPS = 2
STRENGTH = 0.7  # not 1, so a missing or doubled strength factor shows
# The tiny UNet's attn2 layers in the files' numbering (diffusers registers down, up, then mid
# blocks), written out by hand: file layer n (ip_adapter.<2n+1>) belongs to TINY_IP_ORDER[n].
TINY_IP_ORDER = [
    ("input", 1, 0),
    ("input", 3, 0),
    ("output", 0, 0),
    ("output", 1, 0),
    ("output", 2, 0),
    ("output", 3, 0),
    ("middle", 0, 0),
]
TINY_WIDTHS = (32, 64, 64, 64, 32, 32, 64)  # inner width of those layers (channels 32 and 64)
TINY_FILES = {  # tiny CLIP: image_embeds and hidden states are both 64-d
    "ip-adapter_sd15.safetensors": linear_projection(64, 768),
    "ip-adapter_sd15_light.bin": linear_projection(64, 768),
    "ip-adapter-plus_sd15.safetensors": resampler_projection(64, 768, width=768, heads=12),
    "ip-adapter-plus-face_sd15.bin": resampler_projection(64, 768, width=768, heads=12),
}
# fp32 pack against the float64 reference on identical q, k, v: the tokens pass through ~20 fp32
# matmuls (relative rounding ~1e-7 each) and attention outputs are O(1); measured ≤ 1e-6, while a
# wrong layer, row, scale or unconditional image changes the output by O(1)
LAYER_ATOL = 1e-5
# whole sampling runs, reference attention in float64 vs the pack in fp32, through the random UNet
# (latents reach ~500): differences start at ~1e-7 relative per layer; measured ≤ 2.5e-6 of the
# latent's largest value after 2 steps
SAMPLE_RELATIVE = 2e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ipadapter")
    paths = {}
    for seed, (name, projection) in enumerate(TINY_FILES.items()):
        variant = name.rsplit(".", 1)[0]
        paths[name] = build_ip_adapter(
            folder / name, variant, seed=seed, layer_widths=TINY_WIDTHS, projection=projection
        )
    return folder, paths


@pytest.fixture
def ipadapter_folder(files, monkeypatch):
    """models/ipadapter pointed at the generated files for this test only."""
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(files[0])], {".safetensors", ".bin"}))
    return files[0]


@pytest.fixture(scope="module")
def world(flexip_pack):
    """This module's world (overrides the conftest's): the tiny UNet and CLIP, an image; no FlexIP file."""
    import comfy.sample  # noqa: F401  (the conftest has set ComfyUI up)

    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    return dict(pack=flexip_pack, model=tiny_unet_patcher(), clip=tiny_clip_vision(), image=image)


def load_pair(world, preservation, personalization, model=None):
    (flexip,) = node(world["pack"], "FlexIPAdapterPairLoader").load(
        model or world["model"], preservation, personalization
    )
    return flexip


def encode(world, flexip, batch_mode="average", image=None):
    (subject,) = node(world["pack"], "FlexIPEncodeSubject").encode(
        flexip, world["clip"], world["image"] if image is None else image, batch_mode
    )
    return subject


sample = functools.partial(tiny_sample, steps=STEPS, size=8)


@pytest.fixture(scope="module")
def reference_tokens(world):
    """reference_tokens(path): the file's tokens per the reference, computed once per file."""
    cache = {}

    def tokens(path):
        if path not in cache:
            cache[path] = _reference_tokens(world, path)
        return cache[path]

    return tokens


def _reference_tokens(world, path) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond [1, T, d], uncond [1, T, d]) of one file as IP-Adapter makes them, float64.

    uncond: ip-adapter/light project zeros of image_embeds; plus projects the hidden states of
    an all-zero pixel tensor (after CLIP normalisation), as the release's get_image_embeds does.
    """
    weights = load_weights(path)
    clip = world["clip"]
    features = clip.encode_image(world["image"], crop=True)
    with torch.no_grad():
        if reference.uses_hidden_states(weights):
            zero = clip.model(pixel_values=torch.zeros(1, 3, 224, 224), intermediate_output=-2)[1]
            return (
                reference.image_tokens(weights, features["penultimate_hidden_states"]),
                reference.image_tokens(weights, zero),
            )
        embeds = features["image_embeds"]
        return reference.image_tokens(weights, embeds), reference.image_tokens(weights, torch.zeros_like(embeds))


def load_weights(path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        return load_file(str(path))
    nested = torch.load(str(path), weights_only=True)
    return {f"{part}.{name}": t for part in nested for name, t in nested[part].items()}


class ReferenceLayer:
    """attn2 of one layer per the reference. γ = 1 (or 0): plain IP-Adapter of the preservation (or
    personalization) file, Attn(q, k, v) + s·Attn(q, K_ip, V_ip); in between, s·(γ·IP_pres + (1−γ)·IP_pers)."""

    def __init__(self, key, branches, strength, gate):
        self.number = TINY_IP_ORDER.index(key)
        self.branches = branches  # [(weights, cond tokens, uncond tokens)] for preservation, personalization
        self.strength, self.gate = strength, gate

    def __call__(self, q, k, v, extra_options):
        order = extra_options["cond_or_uncond"]
        rows = q.shape[0] // len(order)
        heads = extra_options["n_heads"]

        def tokens_and_weights(branch):
            weights, cond, uncond = self.branches[branch]
            tokens = torch.cat([(cond, uncond)[chunk].expand(rows, -1, -1) for chunk in order])
            return (tokens, *reference.ip_weights(weights, self.number))

        if self.gate in (0.0, 1.0):
            out = reference.decoupled_attention(
                q, k, v, heads, *tokens_and_weights(0 if self.gate == 1.0 else 1), self.strength
            )
        else:
            out = reference.attention(q.double(), k.double(), v.double(), heads)
            for branch, share in enumerate((self.gate, 1.0 - self.gate)):
                out = out + self.strength * share * reference.ip_attention(q, heads, *tokens_and_weights(branch))
        return out.to(q.dtype)


class Compare:
    """Runs in front of the pack's layer patch: records |pack − reference| on identical q, k, v."""

    def __init__(self, inner, expected, record, key):
        self.inner, self.expected, self.record, self.key = inner, expected, record, key

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options)
        expected = self.expected(q, k, v, extra_options)
        text = reference.attention(q.double(), k.double(), v.double(), extra_options["n_heads"])
        self.record.append(
            (
                self.key,
                tuple(extra_options["cond_or_uncond"]),
                (out.double() - expected.double()).abs().max().item(),
                (expected.double() - text).abs().max().item(),
            )
        )
        return out

    def models(self):
        return self.inner.models()

    def to(self, device):
        self.inner = self.inner.to(device)
        return self

    def __deepcopy__(self, memo):
        return self


PAIRS = [
    ("ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors"),
    ("ip-adapter_sd15_light.bin", "ip-adapter-plus-face_sd15.bin"),
]


@pytest.mark.parametrize(
    "pair,gate",
    [
        pytest.param(PAIRS[0], 1.0, id="plus+base-gate1-is-plain-plus"),
        pytest.param(PAIRS[0], 0.0, id="plus+base-gate0-is-plain-base"),
        pytest.param(PAIRS[1], 1.0, id="light+plus-face-gate1-is-plain-light"),
        pytest.param(PAIRS[1], 0.0, id="light+plus-face-gate0-is-plain-plus-face"),
        pytest.param(PAIRS[0], 0.3, id="plus+base-gate0.3-blends-both"),
    ],
)
def test_gate_extremes_equal_plain_ip_adapter_of_one_file_layer_by_layer(
    world, files, ipadapter_folder, reference_tokens, pair, gate
):
    flexip = load_pair(world, *pair)
    subject = encode(world, flexip)
    (patched,) = node(world["pack"], "FlexIPApply").apply(world["model"], flexip, subject, STRENGTH, gate, 0.0, 1.0)
    branches = [(load_weights(files[1][name]), *reference_tokens(files[1][name])) for name in pair]
    record = []
    reference_model = world["model"].clone()
    for key, patch in list(attn2_patches(patched).items()):
        expected = ReferenceLayer(key, branches, STRENGTH, gate)
        attn2_patches(patched)[key] = Compare(patch, expected, record, key)
        reference_model.set_model_attn2_replace(expected, *key)

    flexip_latent = sample(patched)
    reference_latent = sample(reference_model)

    # every layer ran, with cond and uncond rows, in every step
    assert sorted({entry[0] for entry in record}) == sorted(TINY_IP_ORDER)
    assert all(set(entry[1]) == {0, 1} for entry in record) and len(record) == len(TINY_IP_ORDER) * STEPS
    worst = max(entry[2] for entry in record)
    assert worst < LAYER_ATOL, f"largest per-layer difference {worst:.2e} (layer, order, diff, IP term): {record}"
    # not vacuous: in every layer the IP term moves the output by far more than the tolerance
    assert min(entry[3] for entry in record) > 1e4 * LAYER_ATOL
    difference = (flexip_latent - reference_latent).abs().max()
    assert difference <= SAMPLE_RELATIVE * reference_latent.abs().max(), difference


def test_strength_zero_leaves_the_model_unchanged(world, ipadapter_folder):
    flexip = load_pair(world, *PAIRS[0])
    (patched,) = node(world["pack"], "FlexIPApply").apply(
        world["model"], flexip, encode(world, flexip), 0.0, 1.0, 0.0, 1.0
    )
    assert torch.equal(sample(patched), sample(world["model"]))


def test_pair_loader_matches_file_layers_to_model_layers_in_diffusers_order(world, files, ipadapter_folder):
    flexip = load_pair(world, "ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors")
    layers = world["pack"].nodes.layers.layer_specs_of(world["model"].model.diffusion_model)
    assert flexip.config.layers == layers and flexip.config.gate_mode == "output"
    for branch, name in zip(
        flexip.adapter.branches, ("ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors")
    ):
        weights = load_weights(files[1][name])
        for number, (block, block_id, index) in enumerate(TINY_IP_ORDER):
            projection = branch.layers[f"{block}_{block_id}_{index}"]
            torch.testing.assert_close(
                projection.to_k.weight, weights[f"ip_adapter.{2 * number + 1}.to_k_ip.weight"].float()
            )
            torch.testing.assert_close(
                projection.to_v.weight, weights[f"ip_adapter.{2 * number + 1}.to_v_ip.weight"].float()
            )


def test_encode_needs_only_clip_and_stores_both_token_sets(world, ipadapter_folder):
    flexip = load_pair(world, "ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors")
    subject = encode(world, flexip)  # no dino input
    assert subject.tokens["preservation"].shape == (2, 16, 768)  # plus: 16 queries; row 0 subject, row 1 uncond
    assert subject.tokens["personalization"].shape == (2, 4, 768)  # ip-adapter: 4 tokens
    images = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    concat = encode(world, flexip, "concat", images)
    assert concat.tokens["preservation"].shape == (2, 48, 768) and concat.tokens["personalization"].shape == (
        2,
        12,
        768,
    )
    assert concat.image_count == 3


def test_encode_advances_the_progress_bar_once_per_reference(world, ipadapter_folder, progress):
    flexip = load_pair(world, "ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors")
    encode(world, flexip, image=world["image"].expand(3, -1, -1, -1))
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_loader_refuses_an_sdxl_file_for_an_sd15_model(world, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(tmp_path)], {".safetensors"}))
    build_ip_adapter(
        tmp_path / "ip-adapter_sdxl_vit-h.safetensors",
        "ip-adapter_sdxl_vit-h",
        layer_widths=TINY_WIDTHS,
        projection=linear_projection(64, 2048),
    )
    build_ip_adapter(
        tmp_path / "ip-adapter_sd15.safetensors",
        "ip-adapter_sd15",
        layer_widths=TINY_WIDTHS,
        projection=linear_projection(64, 768),
    )
    with pytest.raises(flexip_model.FlexIPError) as error:
        load_pair(world, "ip-adapter_sd15.safetensors", "ip-adapter_sdxl_vit-h.safetensors")
    assert_one_sentence(str(error.value), "ip-adapter_sdxl_vit-h.safetensors", "SDXL", "SD1.5")


def test_loader_refuses_a_file_for_another_layer_count(world, monkeypatch):
    import folder_paths

    real = ip_adapter_file("ip-adapter_sd15")  # the full SD1.5 layout: 16 layers, the tiny UNet has 7
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(real.parent)], {".safetensors"}))
    with pytest.raises(flexip_model.FlexIPError) as error:
        load_pair(world, real.name, real.name)
    assert_one_sentence(str(error.value), real.name, "16", "7")


def test_loader_refuses_face_id_files(world, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(tmp_path)], {".bin"}))
    build_ip_adapter(tmp_path / "ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15", layer_widths=TINY_WIDTHS)
    with pytest.raises(flexip_model.FlexIPError) as error:
        load_pair(world, "ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15.bin")
    assert_one_sentence(str(error.value), "ip-adapter-faceid_sd15.bin", "FaceID", "InsightFace")


def test_encode_refuses_a_clip_bigg_adapter_with_a_clip_h_encoder(world, tmp_path, monkeypatch):
    import comfy.clip_vision
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(tmp_path)], {".safetensors"}))
    # ip-adapter_sdxl projects CLIP-bigG's 1280-d image_embeds; sized here for the tiny UNet
    build_ip_adapter(
        tmp_path / "ip-adapter_sdxl.safetensors",
        "ip-adapter_sdxl",
        layer_widths=TINY_WIDTHS,
        projection=linear_projection(1280, 768),
        context_dim=768,
    )
    flexip = load_pair(world, "ip-adapter_sdxl.safetensors", "ip-adapter_sdxl.safetensors")
    # CLIP ViT-H/14 as ComfyUI builds it (weights are not needed: the check fails before encoding)
    clip_h = comfy.clip_vision.ClipVisionModel(str(comfyui_path() / "comfy" / "clip_vision_config_h.json"))
    with pytest.raises(flexip_model.FlexIPError) as error:
        node(world["pack"], "FlexIPEncodeSubject").encode(flexip, clip_h, world["image"], "average")
    assert_one_sentence(str(error.value), "ip-adapter_sdxl.safetensors", "CLIP ViT-bigG/14", "CLIP ViT-H/14", "_vit-h")


def test_encode_refuses_a_dino_model_as_clip_vision(world, ipadapter_folder):
    from tools.fixtures.tiny import tiny_dino

    flexip = load_pair(world, *PAIRS[0])
    with pytest.raises(flexip_model.FlexIPError) as error:
        node(world["pack"], "FlexIPEncodeSubject").encode(flexip, tiny_dino(), world["image"], "average")
    assert_one_sentence(str(error.value), "clip_vision", "CLIP ViT-H/14")


def test_node_says_it_is_a_compatibility_mode_not_trained_flexip(world):
    pack = world["pack"]
    assert (
        pack.package.NODE_DISPLAY_NAME_MAPPINGS["FlexIPAdapterPairLoader"]
        == "Load IP-Adapter Pair (FlexIP compatibility mode)"
    )
    description = pack.node_classes["FlexIPAdapterPairLoader"].DESCRIPTION
    assert "Compatibility mode over IP-Adapter weights, not trained FlexIP" in description
    json.dumps(pack.node_classes["FlexIPAdapterPairLoader"].INPUT_TYPES())  # what /object_info serves
