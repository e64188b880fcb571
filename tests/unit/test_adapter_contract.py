"""The adapter contract (flexip_model.subject.SubjectAdapter), one suite over every implementation.

The encode node, the patch and the trainer call only this contract, so each test here states
something all of them rely on; an implementation that breaks it fails here, not in a sampler.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flexip_model import FlexIPAdapter, LayerSpec, config_for
from flexip_model.attention import BranchKV, LayerKV
from flexip_model.ip_adapter import IPAdapterBranch, IPAdapterPair, describe
from flexip_model.subject import BATCH_MODES, AdapterConfig, SubjectAdapter, SubjectTokens
from tools.fixtures.ip_adapter_files import ip_adapter_shapes

pytestmark = pytest.mark.unit

# one narrow layer per block kind; a pair's files carry them in IP-Adapter's order input, output, middle
LAYERS = (LayerSpec("input_1_0", 64, 2), LayerSpec("middle_0_0", 128, 2), LayerSpec("output_3_0", 64, 4))
IP_WIDTHS = (64, 64, 128)
HIDDEN_TOKENS = 17  # CLIP hidden states per image; the projections accept any count, 17 keeps it fast
CONTEXT_LENGTH = 8  # text tokens per prompt; FlexIP reads any length, 8 keeps the suite fast


def flexip(gate_mode: str) -> FlexIPAdapter:
    config = dataclasses.replace(config_for("sd15", layers=LAYERS, tiny=True), gate_mode=gate_mode)
    return FlexIPAdapter(config)


def pair() -> IPAdapterPair:
    """plus (neutral-image uncond, hidden states) for preservation, base (zeros uncond, embeds) for personalization."""

    def branch(variant: str) -> IPAdapterBranch:
        return IPAdapterBranch(describe(f"{variant}.safetensors", ip_adapter_shapes(variant, IP_WIDTHS)), LAYERS)

    return IPAdapterPair(branch("ip-adapter-plus_sd15"), branch("ip-adapter_sd15"), LAYERS)


BUILDERS = {"flexip-output": lambda: flexip("output"), "flexip-token": lambda: flexip("token"), "ip-adapter-pair": pair}


@pytest.fixture(scope="module", params=list(BUILDERS))
def adapter(request) -> SubjectAdapter:
    torch.manual_seed(0)
    return BUILDERS[request.param]().eval()


def feature_rows(adapter: SubjectAdapter, count: int, seed: int) -> dict[str, torch.Tensor]:
    """Random features of `count` images, shaped as the adapter's declared needs."""
    generator = torch.Generator().manual_seed(seed)
    request = adapter.image_features
    rows = {}
    for need in request.needs:
        if need.feature == "image_embeds":
            shape = (count, need.width)
        elif need.feature == "dino_features":
            shape = (count, 1 + (request.dino_resolution // 14) ** 2, need.width)
        else:
            shape = (count, HIDDEN_TOKENS, need.width)
        rows[need.feature] = torch.randn(*shape, generator=generator)
    return rows


def uncond_rows(adapter: SubjectAdapter) -> dict[str, torch.Tensor]:
    """What the encode node computes for the declared uncond input."""
    kind = adapter.image_features.uncond
    if kind == "black":
        return feature_rows(adapter, 1, seed=99)
    if kind == "neutral":
        return {"penultimate_hidden_states": feature_rows(adapter, 1, seed=98)["penultimate_hidden_states"]}
    return {}


def encode(adapter: SubjectAdapter, count: int, batch_mode: str, seed: int = 1) -> SubjectTokens:
    with torch.no_grad():
        return adapter.encode_subject(feature_rows(adapter, count, seed), uncond_rows(adapter), batch_mode)


def run(
    adapter: SubjectAdapter, subject: SubjectTokens, pick: list[int], context: torch.Tensor, layers=LAYERS
) -> tuple[LayerKV, ...]:
    return adapter.run_kv(subject, context, torch.tensor(pick), [spec.key for spec in layers])


def contexts(batch: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, CONTEXT_LENGTH, 768, generator=torch.Generator().manual_seed(seed))


def branches(kv: LayerKV) -> list[BranchKV]:
    return [branch for branch in (kv.preservation, kv.personalization) if branch is not None]


def test_adapter_and_config_implement_the_declared_protocols(adapter):
    assert isinstance(adapter, SubjectAdapter)
    assert isinstance(adapter.config, AdapterConfig)
    assert adapter.config.layers == LAYERS and adapter.config.context_dim == 768
    assert adapter.config.layer("middle_0_0") == LAYERS[1]


def test_declared_features_name_known_encoder_outputs_and_uncond_input(adapter):
    request = adapter.image_features
    assert request.needs and set(request.names) <= {"image_embeds", "penultimate_hidden_states", "dino_features"}
    assert request.uncond in ("black", "neutral", None)
    assert ("dino_features" in request.names) == (request.dino_resolution is not None)


@pytest.mark.parametrize("batch_mode", BATCH_MODES)
def test_encoded_subject_has_a_subject_row_then_an_uncond_row(adapter, batch_mode):
    one, three = encode(adapter, 1, batch_mode), encode(adapter, 3, batch_mode)
    assert set(one.rows) == set(three.rows)
    same = dict(rtol=1e-5, atol=1e-5)  # one uncond input in a batch of 2 vs of 4: fp32 matmul blocking, ~1e-6
    for name, tensor in three.rows.items():
        assert tensor.shape[0] == 2 and one[name].shape[0] == 2
        if tensor.ndim == 3 and batch_mode == "concat":  # token lists of 3 references, one after the other
            assert tensor.shape[1] == 3 * one[name].shape[1]
            # the uncond row is the same for any references; concat repeats it to the subject row's length
            torch.testing.assert_close(tensor[1], one[name][1].repeat(3, 1), **same)
        else:  # averaged tokens keep their count; embeddings [N, C] are always averaged
            assert tensor.shape == one[name].shape
            torch.testing.assert_close(tensor[1], one[name][1], **same)


def test_average_subject_row_is_the_mean_of_each_references_own_tokens(adapter):
    references = feature_rows(adapter, 3, seed=1)
    with torch.no_grad():
        subject = adapter.encode_subject(references, uncond_rows(adapter), "average")
        own = [adapter.reference_tokens({name: rows[i : i + 1] for name, rows in references.items()}) for i in range(3)]
    for name in subject.rows:
        mean = torch.stack([tokens[name][0].float() for tokens in own]).mean(dim=0)
        # the same modules on one image vs on a batch of four: fp32 matmul blocking may differ by ~1e-6
        torch.testing.assert_close(subject[name][0].float(), mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pick", [[0, 0, 1, 1], [1, 1, 0, 0], [1, 0]])
def test_run_kv_gives_every_layer_heads_split_kv_for_each_batch_item_in_pick_order(adapter, pick):
    subject = encode(adapter, 2, "average")
    context = contexts(len(pick))
    param = next(adapter.parameters())
    with torch.no_grad():
        kv = run(adapter, subject, pick, context)
        alone = [run(adapter, subject, [row], context[i : i + 1]) for i, row in enumerate(pick)]
    assert len(kv) == len(LAYERS)
    for index, (layer, spec) in enumerate(zip(kv, LAYERS)):
        assert layer.preservation is not None and layer.personalization is not None
        assert (layer.joint is not None) == (adapter.config.gate_mode == "token")
        for branch in branches(layer):
            for tensor in (branch.key, branch.value):
                assert tensor.shape[:2] == (len(pick), spec.heads) and tensor.shape[3] == spec.inner_dim // spec.heads
                assert tensor.dtype == param.dtype and tensor.device == param.device
        for item, single in enumerate(alone):  # item i reads subject row pick[i] and context row i only
            for got, want in zip(branches(layer), branches(single[index])):
                # a batch of one vs of several through the same linear layers: ~1e-6 fp32 reordering
                torch.testing.assert_close(got.key[item], want.key[0], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(got.value[item], want.value[0], rtol=1e-5, atol=1e-5)


def test_run_kv_follows_the_order_of_the_requested_layers(adapter):
    subject, context = encode(adapter, 1, "average"), contexts(2)
    with torch.no_grad():
        forward = run(adapter, subject, [0, 1], context)
        backward = run(adapter, subject, [0, 1], context, layers=LAYERS[::-1])
    for got, want in zip(backward, forward[::-1]):
        for a, b in zip(branches(got), branches(want)):
            torch.testing.assert_close(a.key, b.key, rtol=0, atol=0)


def test_uncond_row_differs_from_the_subject_row(adapter):
    subject, context = encode(adapter, 1, "average"), contexts(1)
    with torch.no_grad():
        cond, uncond = run(adapter, subject, [0], context)[0], run(adapter, subject, [1], context)[0]
    assert (cond.preservation.key - uncond.preservation.key).abs().max() > 1e-3


def test_encode_and_run_kv_are_deterministic(adapter):
    first, second = encode(adapter, 2, "concat"), encode(adapter, 2, "concat")
    for name in first.rows:
        assert torch.equal(first[name], second[name])
    with torch.no_grad():
        kv_first, kv_second = run(adapter, first, [1, 0], contexts(2)), run(adapter, second, [1, 0], contexts(2))
    for a, b in zip(kv_first, kv_second):
        for x, y in zip(branches(a), branches(b)):
            assert torch.equal(x.key, y.key) and torch.equal(x.value, y.value)


def test_inference_needs_no_gradients_and_training_gets_them_through_run_kv(adapter):
    subject = encode(adapter, 1, "average")
    assert not any(tensor.requires_grad for tensor in subject.rows.values())
    with torch.no_grad():
        assert not run(adapter, subject, [0, 1], contexts(2))[0].preservation.key.requires_grad
    # training: each item its own reference, tokens and K/V with gradients to every parameter
    adapter.zero_grad(set_to_none=True)
    tokens = adapter.reference_tokens(feature_rows(adapter, 2, seed=3))
    kv = run(adapter, tokens, [0, 1], contexts(2))
    sum(branch.key.sum() + branch.value.sum() for layer in kv for branch in branches(layer)).backward()
    assert all(p.grad is not None for p in adapter.parameters() if p.requires_grad)
    adapter.zero_grad(set_to_none=True)
