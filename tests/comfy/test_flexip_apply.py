"""FlexIPApply on a real ComfyUI ModelPatcher and sampler (tiny SD1.5-shaped UNet, random weights)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.fixtures.tiny import tiny_clip_vision, tiny_dino, tiny_unet_patcher

pytestmark = pytest.mark.comfy

STEPS = 6


@pytest.fixture(scope="module")
def world(flexip_pack):
    """A tiny UNet, tiny encoders, a matching random FlexIP adapter and an encoded subject."""
    import comfy.sample  # noqa: F401  (imported here: the conftest sets ComfyUI up first)

    model = tiny_unet_patcher()
    clip, dino = tiny_clip_vision(), tiny_dino()
    fm = flexip_pack.flexip_model
    layers = flexip_pack.nodes.layers.layer_specs_of(model.model.diffusion_model)
    config = dataclasses.replace(fm.config_for("sd15", tiny=True), layers=layers, clip_embed_dim=64, dino_dim=64)
    torch.manual_seed(0)
    adapter = fm.FlexIPAdapter(config)
    with torch.no_grad():
        for parameter in adapter.parameters():  # large enough that the adapter visibly moves the image
            parameter.normal_(0.0, 0.2)
    flexip = flexip_pack.nodes.bundles.LoadedFlexIP.wrap("tiny_flexip.safetensors", adapter)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    (subject,) = node(flexip_pack, "FlexIPEncodeSubject").encode(flexip, clip, image, "average", dino=dino)
    return dict(pack=flexip_pack, model=model, flexip=flexip, subject=subject, clip=clip, dino=dino, image=image)


def node(pack, name):
    return pack.NODE_CLASS_MAPPINGS[name]()


def apply(world, strength=1.0, preservation=0.5, start_at=0.0, end_at=1.0, gate=None, attn_mask=None, model=None):
    (patched,) = node(world["pack"], "FlexIPApply").apply(
        model or world["model"], world["flexip"], world["subject"], strength, preservation, start_at, end_at,
        gate=gate, attn_mask=attn_mask)
    return patched


def conds():
    generator = torch.Generator().manual_seed(7)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]
    return positive, negative


def sample(model, seed=0, cfg=5.0, batch=1, callback=None):
    import comfy.sample

    latent = torch.zeros(batch, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive, negative = conds()
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "normal", positive, negative, latent,
                               disable_pbar=True, seed=seed, callback=callback)


def attn2_patches(model):
    return model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def test_apply_patches_every_cross_attention_layer_of_a_clone_only(world):
    patched = apply(world)
    layers = world["pack"].nodes.layers.layer_specs_of(world["model"].model.diffusion_model)
    expected = {world["pack"].flexip_model.parse_layer_key(spec.key) for spec in layers}
    assert set(attn2_patches(patched)) == expected and len(expected) == 7
    assert attn2_patches(world["model"]) == {}
    assert world["model"].wrappers == {}


def test_every_layer_patch_runs_during_sampling(world):
    patched = apply(world)
    calls = []
    for key, patch in list(attn2_patches(patched).items()):
        attn2_patches(patched)[key] = _Recording(patch, calls, key)
    sample(patched)
    assert set(calls) == set(attn2_patches(patched))
    assert len(calls) == len(attn2_patches(patched)) * STEPS  # cond+uncond batched: one call per layer per step


class _Recording:
    """Stands in front of a patch and records which layer ran; forwards models()/to()."""

    def __init__(self, inner, calls, key):
        self.inner, self.calls, self.key = inner, calls, key

    def __call__(self, q, k, v, extra_options):
        self.calls.append(self.key)
        return self.inner(q, k, v, extra_options)

    def models(self):
        return self.inner.models()

    def to(self, device):
        self.inner = self.inner.to(device)
        return self


def test_strength_zero_equals_unpatched_model_bit_for_bit(world):
    assert torch.equal(sample(apply(world, strength=0.0)), sample(world["model"]))


def test_flexip_changes_the_image_and_gate_extremes_differ(world):
    base = sample(world["model"])
    preserve, personalize = sample(apply(world, preservation=1.0)), sample(apply(world, preservation=0.0))
    # random weights at std 0.2 move the latent by O(0.1); 1e-3 is far above float noise (1e-6)
    assert (preserve - base).abs().max() > 1e-3
    assert (personalize - base).abs().max() > 1e-3
    assert (preserve - personalize).abs().max() > 1e-3


def test_unpatched_model_gives_the_same_output_after_a_flexip_run(world):
    before = sample(world["model"])
    sample(apply(world))
    assert torch.equal(sample(world["model"]), before)


def test_existing_attn2_replace_patch_is_chained_and_both_contribute(world, flexip_pack):
    import comfy.ldm.modules.attention as attention

    seen = []

    def other_extension(q, k, v, extra_options):
        seen.append(extra_options["block"])
        return attention.optimized_attention(q, k, v, extra_options["n_heads"]) * 1.5

    other = world["model"].clone()
    for spec in flexip_pack.nodes.layers.layer_specs_of(other.model.diffusion_model):
        block, block_id, index = flexip_pack.flexip_model.parse_layer_key(spec.key)
        other.set_model_attn2_replace(other_extension, block, block_id, index)
    other_only = sample(other)
    both = sample(apply(world, model=other))
    flexip_only = sample(apply(world))
    assert seen, "the other extension's patch was dropped"
    # 1e-3: each contribution moves the latent by O(0.1) with these weights
    assert (both - other_only).abs().max() > 1e-3
    assert (both - flexip_only).abs().max() > 1e-3


def _unet_call(model, x, context, order, uuids):
    """One diffusion-model call with the transformer_options a sampler would pass."""
    options = copy.copy(model.model_options["transformer_options"])
    options.update(cond_or_uncond=order, uuids=uuids, sigmas=torch.full((x.shape[0] // len(order),), 5.0),
                   wrappers=model.wrappers)
    timestep = torch.full((x.shape[0],), 500.0)
    return model.model.diffusion_model(x, timestep, context, transformer_options=options)


def test_adapter_tokens_follow_cond_or_uncond_order(world):
    patched = apply(world)
    generator = torch.Generator().manual_seed(11)
    x_cond, x_uncond = torch.randn(2, 1, 4, 16, 16, generator=generator)
    positive, negative = conds()
    c_pos, c_neg = positive[0][0], negative[0][0]
    with torch.no_grad():
        cond_first = _unet_call(patched, torch.cat([x_cond, x_uncond]), torch.cat([c_pos, c_neg]), [0, 1], ["p", "n"])
        uncond_first = _unet_call(patched, torch.cat([x_uncond, x_cond]), torch.cat([c_neg, c_pos]), [1, 0], ["n", "p"])
        cond_alone = _unet_call(patched, x_cond, c_pos, [0], ["p"])
        cond_as_uncond = _unet_call(patched, x_cond, c_pos, [1], ["p"])
    # same rows, same result whatever the order; 1e-5 allows batched-matmul reassociation
    torch.testing.assert_close(cond_first[0], uncond_first[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(cond_first[1], uncond_first[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(cond_first[0], cond_alone[0], atol=1e-5, rtol=0)
    # the uncond chunk reads the black reference, so the same input as uncond gives another result
    assert (cond_alone - cond_as_uncond).abs().max() > 1e-3


def test_gate_switch_mid_run_changes_only_the_steps_after_the_switch(world, flexip_pack):
    schedule = node(flexip_pack, "FlexIPGateSchedule").build("0:1, 0.5:0", "step")[0]

    def trajectory(model):
        steps = []
        sample(model, callback=lambda step, x0, x, total: steps.append(x0.clone()))  # x0: this step's prediction
        return steps

    constant = trajectory(apply(world, preservation=1.0))
    switched = trajectory(apply(world, gate=schedule))
    sampling = world["model"].get_model_object("model_sampling")
    sigmas = __import__("comfy.samplers").samplers.calculate_sigmas(sampling, "normal", STEPS)
    switch_sigma = sampling.percent_to_sigma(0.5)
    first_switched = next(i for i, sigma in enumerate(sigmas[:-1]) if sigma <= switch_sigma)
    assert 0 < first_switched < STEPS
    for step in range(STEPS):
        same = torch.equal(constant[step], switched[step])
        assert same == (step < first_switched), f"step {step}: switch at step {first_switched}"


def test_cloning_the_patched_model_ten_times_shares_the_adapter_weights(world):
    patched = apply(world)
    clones = [patched.clone() for _ in range(10)]
    states = {id(patch.state) for clone in clones for patch in attn2_patches(clone).values()}
    assert len(states) == 1
    adapters = {id(p.state.flexip.adapter) for clone in clones for p in attn2_patches(clone).values()}
    assert adapters == {id(world["flexip"].adapter)}
    assert {id(m) for m in clones[0].model_patches_models()} == {id(world["flexip"].patcher)}


class _NoHostSync(TorchDispatchMode):
    """Fails on any op that copies a tensor value to the host (`.item()`, `bool(t)`, `.tolist()`)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            raise AssertionError(f"host sync inside the FlexIP patch: {func}")
        return func(*args, **(kwargs or {}))


def test_layer_patches_and_per_call_preparation_do_no_host_sync(world, flexip_pack):
    schedule = node(flexip_pack, "FlexIPGateSchedule").build("0:1, 1:0", "cosine", output_blocks="0:0.2, 1:0.9")[0]
    patched = apply(world, gate=schedule, start_at=0.1, end_at=0.9, attn_mask=torch.ones(1, 64, 64))
    patches = attn2_patches(patched)
    state = next(iter(patches.values())).state
    prepare = state._call_state
    calls = []

    def guarded_prepare(*args):
        calls.append(1)
        with _NoHostSync():
            return prepare(*args)
    state._call_state = guarded_prepare  # the per-model-call work of the diffusion-model wrapper
    for key, patch in list(patches.items()):
        patches[key] = _Guarded(patch)
    try:
        sample(patched)  # the first call builds the K/V cache, later ones hit it: both are guarded
    finally:
        del state._call_state
    assert len(calls) == STEPS


class _Guarded(_Recording):
    def __init__(self, inner):
        super().__init__(inner, [], None)

    def __call__(self, q, k, v, extra_options):
        with _NoHostSync():
            return self.inner(q, k, v, extra_options)
