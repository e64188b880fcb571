"""The adapter is on the device only while it builds (a subject's tokens, a run's K/V): ComfyUI's
model management never holds it beside the UNet during the steps, and the steps still read its K/V.

Residency is read from model management's own bookkeeping (current_loaded_models, a patcher's
loaded size), which is what frees GPU memory on a GPU; on this CPU host load and offload device are
both the CPU, so no transfer is visible, only whether ComfyUI counts the adapter as loaded.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.memory import Residency, watch_build, watch_residency
from tests.comfy.tiny_world import apply, node, sample

pytestmark = pytest.mark.comfy

STEPS = 3


def watched_run(world: dict, patched) -> tuple[torch.Tensor, Residency]:
    with watch_residency(patched, world["flexip"]) as seen:
        image = sample(patched, STEPS)
    return image, seen


def test_the_adapter_is_not_held_during_the_steps_and_its_kv_are_used(world):
    patched = apply(world, preservation=0.5)
    image, seen = watched_run(world, patched)
    # the probes work: the adapter was loaded while it built, the UNet in every step, the K/V cached
    assert seen.adapter_during_build and min(seen.adapter_during_build) > 0
    # looked at once the sampler has loaded its models, then before and after each model call
    assert len(seen.unet_held_during_steps) == 1 + 2 * STEPS and all(seen.unet_held_during_steps)
    assert min(seen.kv_cache_bytes) > 0
    # model management holds nothing of the adapter, not even before the first call builds
    assert not any(seen.adapter_held_during_steps), seen.adapter_held_during_steps
    assert seen.adapter_during_steps == [0] * (1 + 2 * STEPS)
    # the steps read the cached K/V: γ moves the image (std 0.2 weights move the latent by O(0.1);
    # 1e-3 is far above float noise, 1e-6)
    preserve, personalize = sample(apply(world, preservation=1.0), STEPS), sample(apply(world, preservation=0.0), STEPS)
    assert (preserve - personalize).abs().max() > 1e-3
    assert (image - sample(world["model"], STEPS)).abs().max() > 1e-3


def test_a_second_run_rebuilds_the_kv_and_gives_the_same_image(world):
    patched = apply(world)
    first, seen_first = watched_run(world, patched)
    second, seen_second = watched_run(world, patched)
    # the run cache is dropped at the end of a run: the second run loads the adapter and builds again
    assert seen_second.adapter_during_build and min(seen_second.adapter_during_build) > 0
    assert not any(seen_second.adapter_held_during_steps)
    assert seen_second.kv_cache_bytes == seen_first.kv_cache_bytes
    assert torch.equal(first, second)


def test_encoding_a_subject_leaves_the_adapter_unloaded(world):
    flexip = world["flexip"]
    with watch_build(flexip) as build:
        node(world["pack"], "FlexIPEncodeSubject").encode(
            flexip, world["clip"], world["image"], "average", dino=world["dino"]
        )
    assert build and min(build) > 0  # loaded while it encoded
    assert not flexip.held
    assert flexip.patcher.loaded_size() == 0
