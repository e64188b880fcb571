"""The generated and tiny models are what ComfyUI 0.3.75 itself detects, loads and runs."""

from __future__ import annotations

import comfy.clip_model
import comfy.clip_vision
import comfy.image_encoders.dino2
import comfy.model_base
import comfy.sample
import comfy.supported_models
import comfy.taesd.taesd
import torch
from comfy.ldm.modules.attention import optimized_attention
from safetensors import safe_open

from tools.fixtures import (
    CLIP_VISION_H_NAME,
    DINOV2_LARGE_NAME,
    SD15_CHECKPOINT_NAME,
    TINY_UNET_CROSS_ATTENTION,
    clip_vision_h,
    dinov2_large,
    model_tree,
)


def cross_attention_layers(diffusion_model) -> list[tuple[str, int, int]]:
    """(block, id, transformer index) of every attn2 in a UNetModel, in ComfyUI's patch-key form."""
    found = []
    for block_name, blocks in (
        ("input", diffusion_model.input_blocks),
        ("middle", [diffusion_model.middle_block]),
        ("output", diffusion_model.output_blocks),
    ):
        for block_id, block in enumerate(blocks):
            for module in block:
                for index, transformer in enumerate(getattr(module, "transformer_blocks", [])):
                    if transformer.attn2 is not None:
                        found.append((block_name, block_id, index))
    return found


def gray_image(size: int = 64) -> torch.Tensor:
    """ComfyUI IMAGE [1, H, W, 3] in [0, 1] with some structure."""
    ramp = torch.linspace(0, 1, size)
    return torch.stack(
        [ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), torch.full((size, size), 0.5)], dim=-1
    )[None]


def file_keys(path) -> set[str]:
    with safe_open(str(path), "pt") as handle:
        return set(handle.keys())


def test_tiny_unet_has_cross_attention_in_input_middle_and_output_blocks(tiny_unet):
    model = tiny_unet.model
    assert isinstance(model, comfy.model_base.BaseModel)
    assert type(model.model_config) is comfy.supported_models.SD15
    layers = cross_attention_layers(model.diffusion_model)
    assert [(block, block_id) for block, block_id, _ in layers] == TINY_UNET_CROSS_ATTENTION
    assert {block for block, _, _ in layers} == {"input", "middle", "output"}


def test_tiny_unet_samples_through_a_replaced_cross_attention_with_cond_and_uncond(tiny_unet):
    """One real sampling step, every attn2 replaced by a recording patch (what FlexIP hooks)."""
    calls = []

    def recording_attention(q, k, v, extra_options):
        calls.append((extra_options["block"], list(extra_options["cond_or_uncond"]), q.shape[0]))
        return optimized_attention(q, k, v, extra_options["n_heads"])

    patched = tiny_unet.clone()
    for block, block_id in TINY_UNET_CROSS_ATTENTION:
        patched.set_model_attn2_replace(recording_attention, block, block_id)

    generator = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=generator)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 768, generator=generator), {}]]
    with torch.inference_mode():
        samples = comfy.sample.sample(
            patched, noise, 1, 4.0, "euler", "normal", positive, negative, latent, disable_pbar=True, seed=0
        )

    assert samples.shape == latent.shape and torch.isfinite(samples).all()
    assert {block for block, _, _ in calls} == {tuple(key) for key in TINY_UNET_CROSS_ATTENTION}
    # cond and uncond ran as one batch of 2; their order is whatever the sampler chose.
    assert all(sorted(order) == [0, 1] and batch == 2 for _, order, batch in calls)
    assert tiny_unet.model_options["transformer_options"].get("patches_replace") is None


def test_tiny_encoders_encode_an_image(tiny_clip_vision, tiny_dino):
    with torch.inference_mode():
        clip = tiny_clip_vision.encode_image(gray_image())
        dino = tiny_dino.encode_image(gray_image())
    assert clip.image_embeds.shape == (1, 64)
    assert clip.last_hidden_state.shape == (1, 257, 64)
    assert dino.last_hidden_state.shape == (1, 1370, 64)
    for tensor in (clip.image_embeds, clip.last_hidden_state, dino.last_hidden_state):
        assert torch.isfinite(tensor).all() and tensor.std() > 0


def test_generated_sd15_checkpoint_loads_as_sd15_and_decodes_a_64px_image(sd15):
    import nodes  # ComfyUI's nodes.py (the host is first on sys.path)

    assert isinstance(sd15.model.model, comfy.model_base.BaseModel)
    assert type(sd15.model.model.model_config) is comfy.supported_models.SD15
    assert isinstance(sd15.vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert len(cross_attention_layers(sd15.model.model.diffusion_model)) == 4

    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(sd15.clip, "a photo of a dog")[0]
        negative = nodes.CLIPTextEncode().encode(sd15.clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        sampled = nodes.KSampler().sample(sd15.model, 7, 2, 7.0, "euler", "normal", positive, negative, latent)[0]
        image = nodes.VAEDecode().decode(sd15.vae, sampled)[0]

    assert positive[0][0].shape == (1, 77, 768)
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1 and image.std() > 0


def test_generated_clip_vision_h_is_detected_as_vit_h_with_1024d_image_embeds():
    path = clip_vision_h()
    encoder = comfy.clip_vision.load(str(path))
    assert isinstance(encoder.model, comfy.clip_model.CLIPVisionModelProjection)
    assert len(encoder.model.vision_model.encoder.layers) == 32
    assert set(encoder.model.state_dict()) == file_keys(path)  # every tensor used, none missing
    with torch.inference_mode():
        out = encoder.encode_image(gray_image())
    assert out.image_embeds.shape == (1, 1024)
    assert out.last_hidden_state.shape == (1, 257, 1280)
    assert torch.isfinite(out.image_embeds).all()


def test_generated_dinov2_large_is_detected_as_dinov2_large():
    path = dinov2_large()
    encoder = comfy.clip_vision.load(str(path))
    assert isinstance(encoder.model, comfy.image_encoders.dino2.Dinov2Model)
    assert len(encoder.model.encoder.layer) == 24
    assert encoder.model.embeddings.position_embeddings.shape == (1, 1370, 1024)
    assert encoder.image_size == 518
    assert set(encoder.model.state_dict()) == file_keys(path)


def test_model_tree_links_the_generated_files(tmp_path):
    models = model_tree(tmp_path)
    for folder, name in (
        ("checkpoints", SD15_CHECKPOINT_NAME),
        ("clip_vision", CLIP_VISION_H_NAME),
        ("clip_vision", DINOV2_LARGE_NAME),
    ):
        assert (models / folder / name).is_file()
    assert (models / "flexip").is_dir() and (models / "ipadapter").is_dir()
