"""FlexIP on SDXL-family models, an SDXL inpainting checkpoint and AnimateDiff-style latent batches.

Real ComfyUI model classes and samplers on the CPU. The layer list always comes from the loaded
model, so reduced depths (SSD-1B, Segmind Vega, KOALA) are patched completely; an adapter made
for other depths is refused with one sentence. Adapters are tiny-width, random (std 0.2, large
enough that the subject visibly moves the latent), with the model's own per-layer widths.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch

import flexip_model
from tests.comfy.tiny_world import PatchProbe
from tools.fixtures.tiny import tiny_clip_vision, tiny_dino, tiny_unet_patcher
from tools.fixtures.tiny_sdxl import SDXL_FAMILY_DEPTHS, tiny_sdxl_unet_patcher

pytestmark = pytest.mark.comfy

# attn2 layers of each family's depths: input + middle + output transformer blocks
FAMILY_LAYERS = {"SDXL": 24 + 10 + 36, "SSD1B": 12 + 0 + 22, "Segmind_Vega": 6 + 0 + 9, "KOALA_700M": 7 + 0 + 14}
_PATCHED = re.compile(r"FlexIP \((?P<name>[^)]+)\): (?P<patched>\d+) of (?P<total>\d+) cross-attention layers")


@pytest.fixture(scope="module")
def encoders():
    return tiny_clip_vision(), tiny_dino()


def own_cross_attention_count(model) -> int:
    """attn2 modules of the UNet, counted without the pack's own layer reader."""
    return sum(1 for name, _ in model.model.diffusion_model.named_modules() if name.endswith(".attn2"))


def flexip_for(pack, model, name: str, base: str):
    """A random tiny-width adapter whose layers are `model`'s own (what `init --layers-from` makes)."""
    fm = flexip_model
    layers = pack.nodes.layers.layer_specs_of(model.model.diffusion_model)
    config = dataclasses.replace(fm.config_for(base, tiny=True), layers=layers, clip_embed_dim=64, dino_dim=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = fm.FlexIPAdapter(config)
        with torch.no_grad():
            for parameter in adapter.parameters():
                parameter.normal_(0.0, 0.2)
    return pack.nodes.bundles.LoadedFlexIP.wrap(name, adapter)


def subject_for(pack, flexip, encoders):
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    clip, dino = encoders
    (subject,) = pack.node_classes["FlexIPEncodeSubject"]().encode(flexip, clip, image, "average", dino=dino)
    return subject


def apply(pack, model, flexip, subject, strength=1.0, preservation=0.5):
    (patched,) = pack.node_classes["FlexIPApply"]().apply(model, flexip, subject, strength, preservation, 0.0, 1.0)
    return patched


def sdxl_conds(**extra):
    """Positive and negative SDXL conditioning: context [1, 77, 2048] and bigG pooled [1, 1280]."""
    generator = torch.Generator().manual_seed(7)
    return tuple(
        [
            [
                torch.randn(1, 77, 2048, generator=generator),
                {"pooled_output": torch.randn(1, 1280, generator=generator), **extra},
            ]
        ]
        for _ in range(2)
    )


def sample(model, latent, conds, steps=2, cfg=5.0, noise=None, seed=0):
    import comfy.sample

    positive, negative = conds
    noise = comfy.sample.prepare_noise(latent, seed) if noise is None else noise
    return comfy.sample.sample(
        model, noise, steps, cfg, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=seed
    )


def patched_run(caplog, name: str) -> tuple[int, int]:
    """(patched, total) of the last "FlexIP (name): N of M" line the pack logged."""
    runs = [m for m in _PATCHED.finditer(caplog.text) if m["name"] == name]
    assert runs, f"no patched-layer line for {name} in the log"
    return int(runs[-1]["patched"]), int(runs[-1]["total"])


@pytest.mark.parametrize("family", list(SDXL_FAMILY_DEPTHS))
def test_every_cross_attention_layer_of_reduced_sdxl_depths_is_patched(flexip_pack, encoders, caplog, family):
    model = tiny_sdxl_unet_patcher(family)
    assert own_cross_attention_count(model) == FAMILY_LAYERS[family]
    flexip = flexip_for(flexip_pack, model, f"flexip_{family}.safetensors", "sdxl")
    patched = apply(flexip_pack, model, flexip, subject_for(flexip_pack, flexip, encoders))
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replace) == FAMILY_LAYERS[family]
    with caplog.at_level(logging.INFO):
        out = sample(patched, torch.zeros(1, 4, 8, 8), sdxl_conds())
    assert patched_run(caplog, flexip.name) == (FAMILY_LAYERS[family],) * 2
    # 1e-3: each of the random-weight branches moves the latent by O(0.1); float noise is 1e-6
    assert (out - sample(model, torch.zeros(1, 4, 8, 8), sdxl_conds())).abs().max() > 1e-3


def test_adapter_for_full_sdxl_depths_on_an_ssd1b_model_names_both_layer_counts(flexip_pack, encoders):
    full = tiny_sdxl_unet_patcher("SDXL")
    flexip = flexip_for(flexip_pack, full, "flexip_sdxl.safetensors", "sdxl")
    subject = subject_for(flexip_pack, flexip, encoders)
    with pytest.raises(flexip_model.FlexIPError) as error:
        apply(flexip_pack, tiny_sdxl_unet_patcher("SSD1B"), flexip, subject)
    assert str(error.value) == (
        "flexip_sdxl.safetensors has 70 cross-attention layers but the model has 34: use a FlexIP file made for "
        "this model's architecture (flexip_model init --layers-from <checkpoint>)."
    )


@pytest.fixture(scope="module")
def sdxl_inpaint():
    """The generated SDXL UNet with 9 input channels, loaded by ComfyUI's checkpoint detection."""
    import comfy.sd

    from tools.fixtures.generate import sdxl_unet_state_dict

    model, _clip, _vae, _ = comfy.sd.load_state_dict_guess_config(
        sdxl_unet_state_dict(in_channels=9), output_vae=False, output_clip=False
    )
    return model


def test_sdxl_inpainting_checkpoint_is_fully_patched_and_strength_zero_is_exact(
    flexip_pack, encoders, sdxl_inpaint, caplog
):
    import comfy.model_base
    import comfy.supported_models

    model = sdxl_inpaint
    assert type(model.model.model_config) is comfy.supported_models.SDXL
    assert isinstance(model.model, comfy.model_base.SDXL)
    assert model.model.diffusion_model.in_channels == 9 and model.model.concat_keys == ("mask", "masked_image")
    flexip = flexip_for(flexip_pack, model, "flexip_sdxl_inpaint.safetensors", "sdxl")
    subject = subject_for(flexip_pack, flexip, encoders)
    # what InpaintModelConditioning adds: the masked image's latent and the mask in pixels
    generator = torch.Generator().manual_seed(5)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    conds = sdxl_conds(concat_latent_image=torch.randn(1, 4, 8, 8, generator=generator), concat_mask=mask)
    latent = torch.zeros(1, 4, 8, 8)
    base = sample(model, latent, conds)
    with caplog.at_level(logging.INFO):
        personalised = sample(apply(flexip_pack, model, flexip, subject), latent, conds)
    count = own_cross_attention_count(model)
    assert count == 31 and patched_run(caplog, flexip.name) == (count, count)
    assert (personalised - base).abs().max() > 1e-3
    assert torch.equal(sample(apply(flexip_pack, model, flexip, subject, strength=0.0), latent, conds), base)


@pytest.fixture(scope="module")
def sd15_world(flexip_pack, encoders):
    model = tiny_unet_patcher()
    flexip = flexip_for(flexip_pack, model, "flexip_animation.safetensors", "sd15")
    return model, flexip, subject_for(flexip_pack, flexip, encoders)


def sd15_conds():
    generator = torch.Generator().manual_seed(7)
    return tuple([[torch.randn(1, 77, 768, generator=generator), {}]] for _ in range(2))


FRAMES = 8


def test_animation_batch_of_latents_gets_the_one_subject_in_every_frame(flexip_pack, sd15_world):
    import comfy.sample

    model, flexip, subject = sd15_world
    patched = apply(flexip_pack, model, flexip, subject)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    sizes = []
    key = next(iter(replace))
    replace[key] = PatchProbe(replace[key], observe=lambda q, options: sizes.append(q.shape[0]))
    # every frame starts from the same noise, so with one subject every frame must come out the same
    latent = torch.zeros(FRAMES, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent[:1], 0).repeat(FRAMES, 1, 1, 1)
    frames = sample(patched, latent, sd15_conds(), noise=noise)
    single = sample(apply(flexip_pack, model, flexip, subject), latent[:1], sd15_conds(), noise=noise[:1])
    base = sample(model, latent, sd15_conds(), noise=noise)
    assert set(sizes) == {2 * FRAMES}  # cond and uncond of all frames in one model call
    # the same rows batched differently (matmul blocking depends on the batch size): the base model
    # alone differs by ~2e-6 of its output scale (~470 with these random weights) between 8 and 1
    tolerance = 1e-5 * float(single.abs().max())
    for frame in frames:
        torch.testing.assert_close(frame, single[0], atol=tolerance, rtol=0)
    assert ((frames - base).abs().amax(dim=(1, 2, 3)) > 1e-3).all()
    assert torch.equal(
        sample(apply(flexip_pack, model, flexip, subject, strength=0.0), latent, sd15_conds(), noise=noise), base
    )


def test_context_windows_over_the_frames_give_each_frame_what_the_whole_batch_gives(flexip_pack, sd15_world):
    """AnimateDiff samplers call the model on windows of frames: other batch sizes in one run."""
    import copy

    model, flexip, subject = sd15_world
    patched = apply(flexip_pack, model, flexip, subject)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(2 * FRAMES, 4, 16, 16, generator=generator)  # cond frames, then uncond frames
    positive, negative = (c[0][0] for c in sd15_conds())
    context = torch.cat([positive.expand(FRAMES, -1, -1), negative.expand(FRAMES, -1, -1)])

    def call(rows):
        half = len(rows) // 2
        options = copy.copy(patched.model_options["transformer_options"])
        options.update(
            cond_or_uncond=[0, 1], uuids=["p", "n"], sigmas=torch.full((half,), 5.0), wrappers=patched.wrappers
        )
        timestep = torch.full((len(rows),), 500.0)
        return patched.model.diffusion_model(x[rows], timestep, context[rows], transformer_options=options)

    with torch.no_grad():
        whole = call(list(range(2 * FRAMES)))
        window = FRAMES // 2  # the first half of the frames, with their uncond rows
        part = call(list(range(window)) + list(range(FRAMES, FRAMES + window)))
    # a batch of 8 rows against 16: kernels may block by batch size (bit-equal on an AMD EPYC with
    # AVX2, 3e-6 of the scale for 2 rows against 1 elsewhere in this suite); 1e-5 of the scale (~2.8)
    tolerance = 1e-5 * float(whole.abs().max())
    torch.testing.assert_close(part[:window], whole[:window], atol=tolerance, rtol=0)
    torch.testing.assert_close(part[window:], whole[FRAMES : FRAMES + window], atol=tolerance, rtol=0)
