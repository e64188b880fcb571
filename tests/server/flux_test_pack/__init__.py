"""Test-only ComfyUI pack: what FLUX's file loaders would emit, at a size a CPU test can run. Never shipped.

A FLUX file cannot be small (ComfyUI's detection fixes hidden 3072) and ComfyUI builds T5-XXL at
full size, so these nodes stand in for UNETLoader + VAELoader, CLIPTextEncode and the InfiniteYou
loader + face nodes: a tiny FLUX and its VAE, FLUX text conditioning, and an InfiniteYou pair of
tiny InfuseNets with an identity, built by tools/fixtures/flux.py through ComfyUI's own classes and
carried in the pack's own INFINITEYOU_PAIR / INFINITEYOU_IDENTITY dataclasses. Everything after them
(FluxGuidance, Apply FlexIP InfiniteYou, the gate schedule, the sampler, decoding) is real.

tools/ is importable once ComfyUI-FlexIP has loaded (its folder is on sys.path); the nodes import
it when they run, as custom packs load in no fixed order.
"""

from __future__ import annotations

import importlib

TOKENS_SEED = 7


def _pack_bundles():
    """The node layer's nodes/infiniteyou_bundles.py, as the server loaded ComfyUI-FlexIP."""
    import nodes  # ComfyUI's nodes.py: its mappings hold every loaded pack's nodes

    apply_module = nodes.NODE_CLASS_MAPPINGS["FlexIPInfiniteYouApply"].__module__
    return importlib.import_module(apply_module.rsplit(".", 1)[0] + ".infiniteyou_bundles")


class FlexIPTestTinyFlux:
    DESCRIPTION = "TEST ONLY: a tiny FLUX (hidden 64, one double and one single block) and a FLUX VAE (TAESD)."
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, seed):
        from tools.fixtures.flux import tiny_flux_patcher, tiny_flux_vae

        return (tiny_flux_patcher(seed), tiny_flux_vae())


class FlexIPTestFluxText:
    DESCRIPTION = "TEST ONLY: FLUX text conditioning (T5 tokens [1, 8, 4096], pooled CLIP-L [1, 768]) from a seed."
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def encode(self, seed):
        from tools.fixtures.flux import flux_conditioning

        (context, options), *_ = flux_conditioning(seed)
        options.pop("guidance")  # as CLIPTextEncode gives it: FluxGuidance sets the DiT's guidance
        return ([[context, options]],)


class FlexIPTestInfiniteYou:
    DESCRIPTION = "TEST ONLY: an InfiniteYou pair of tiny InfuseNets (seeds 1 and 2) and an identity of seeded tokens."
    CATEGORY = "testing"
    RETURN_TYPES = ("INFINITEYOU_PAIR", "INFINITEYOU_IDENTITY")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import torch

        from tools.fixtures.flux import tiny_infusenet

        bundles = _pack_bundles()
        pair = bundles.InfiniteYouPair(
            bundles.InfiniteYouStage("tiny_sim.safetensors", tiny_infusenet(1), None),
            bundles.InfiniteYouStage("tiny_aes.safetensors", tiny_infusenet(2), None),
        )
        generator = torch.Generator().manual_seed(TOKENS_SEED)
        sim_tokens, aes_tokens = (torch.randn(1, 8, 4096, generator=generator) for _ in range(2))
        return (pair, bundles.InfiniteYouIdentity(pair, sim_tokens, aes_tokens))


class FlexIPTestInfiniteYouIdentity:
    DESCRIPTION = "TEST ONLY: another identity of seeded tokens on a pair (a second face in one image)."
    CATEGORY = "testing"
    RETURN_TYPES = ("INFINITEYOU_IDENTITY",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pair": ("INFINITEYOU_PAIR",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 1000}),
            }
        }

    def encode(self, pair, seed):
        import torch

        generator = torch.Generator().manual_seed(seed)
        sim_tokens, aes_tokens = (torch.randn(1, 8, 4096, generator=generator) for _ in range(2))
        return (_pack_bundles().InfiniteYouIdentity(pair, sim_tokens, aes_tokens),)


NODE_CLASS_MAPPINGS = {
    "FlexIPTestTinyFlux": FlexIPTestTinyFlux,
    "FlexIPTestFluxText": FlexIPTestFluxText,
    "FlexIPTestInfiniteYou": FlexIPTestInfiniteYou,
    "FlexIPTestInfiniteYouIdentity": FlexIPTestInfiniteYouIdentity,
}
