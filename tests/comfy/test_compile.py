"""FlexIP under ComfyUI's TorchCompileModel node (backend inductor, on the CPU), placed after
FlexIPApply and before it: the compiled run equals the eager one, every layer patch runs inside
the compiled graph, nothing recompiles after a run's first step, and the only graph break FlexIP
adds is the designed one in front of its per-call host work (cache lookup, model loading).

ComfyUI is switched to PyTorch attention here, as it picks on GPUs: its CPU default
(sub-quadratic attention) reads the free memory with psutil on every call, a graph break in
ComfyUI's own attention that would hide FlexIP's. Compiled graphs are shared across the tests
(dynamo caches them per code object), so the file compiles the UNet only a few times.
"""

from __future__ import annotations

import collections
import logging

import pytest
import torch
from torch._dynamo.utils import counters

from tests.comfy.tiny_world import PatchProbe, apply, attn2_patches, node, sample, tiny_world

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_thread")]

STEPS, SIZE = 4, 8
# The one graph break FlexIP adds by design: dynamo does not trace the diffusion-model wrapper's
# host work; the UNet it calls (every layer patch included) is compiled as a graph of its own.
DESIGNED_BREAK = "diffusion_model_wrapper"
# Inductor fuses and reorders float32 reductions, so the compiled UNet rounds differently from the
# eager one and the difference grows over the steps. Measured on a 2-core Intel Xeon CPU: 3.5e-6 of the
# output's scale after 4 steps; 1e-4 of the scale leaves a 30x margin and stays 10x below the
# smallest effect asserted here (a γ change, a subject change: above 1e-3 of the scale).
RELATIVE_TOLERANCE = 1e-4

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module", autouse=True)
def pytorch_attention():
    import comfy.ldm.modules.attention as attention

    saved = attention.optimized_attention, attention.optimized_attention_masked
    attention.optimized_attention = attention.optimized_attention_masked = attention.attention_pytorch
    yield
    attention.optimized_attention, attention.optimized_attention_masked = saved
    torch._dynamo.reset()  # drop the compiled graphs and their guards on this module's models


def torch_compile_model(model):
    """ComfyUI's TorchCompileModel node on `model` (a compiled clone)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    return TorchCompileModel.execute(model, "inductor").result[0]


def python_layer_calls(model) -> list:
    """Counts the layer-patch calls of `model` that run as Python code, outside a compiled graph.

    While dynamo traces, `is_compiling()` is True and the count is left out of the graph; the
    compiled graph then runs the patches without Python. Eager sampling counts every call.
    """
    calls = []
    patches = attn2_patches(model)
    for key, patch in list(patches.items()):
        patches[key] = PatchProbe(
            patch, observe=lambda q, options: None if torch.compiler.is_compiling() else calls.append(1)
        )
    return calls


def compiled_run(model) -> dict:
    """Sample `model`: the latent, graphs compiled by the end of each step, new graph breaks, Python layer calls."""
    graphs_after_step = []
    breaks_before = collections.Counter(counters["graph_break"])
    graphs_before = counters["stats"]["unique_graphs"]
    calls = python_layer_calls(model)
    latent = sample(
        model,
        STEPS,
        size=SIZE,
        callback=lambda step, x0, x, total: graphs_after_step.append(counters["stats"]["unique_graphs"]),
    )
    breaks = collections.Counter(counters["graph_break"]) - breaks_before
    run = dict(
        latent=latent,
        compiled=graphs_after_step[0] - graphs_before,
        recompiled=graphs_after_step[-1] - graphs_after_step[0],
        breaks=breaks,
        python_layer_calls=len(calls),
    )
    logger.info(
        "compile: %d graphs compiled in the first step, %d after it, graph breaks %s",
        run["compiled"],
        run["recompiled"],
        {reason.split("\n")[0]: n for reason, n in breaks.items()},
    )
    return run


def assert_compiled_like_eager(run: dict, eager: torch.Tensor) -> None:
    assert run["recompiled"] == 0, "dynamo recompiled after the first step of a run"
    assert run["python_layer_calls"] == 0, "a layer patch ran outside the compiled graph"
    foreign = [reason for reason in run["breaks"] if DESIGNED_BREAK not in reason]
    assert not foreign, f"graph breaks besides the designed one: {foreign}"
    scale = float(eager.abs().max())
    torch.testing.assert_close(run["latent"], eager, atol=RELATIVE_TOLERANCE * scale, rtol=0)


def eager(world, **apply_kwargs) -> torch.Tensor:
    return sample(apply(world, **apply_kwargs), STEPS, size=SIZE)


@pytest.fixture(scope="module")
def compiled_base(world):
    """The world's UNet through TorchCompileModel, to apply FlexIP on (compile before FlexIP)."""
    return torch_compile_model(world["model"])


def test_compile_after_apply_matches_eager_in_one_compile_with_only_the_designed_break(world):
    run = compiled_run(torch_compile_model(apply(world, preservation=0.5)))
    assert run["compiled"] >= 1, "nothing was compiled: the run did not go through inductor"
    assert sum(run["breaks"].values()) >= 1  # the designed break is seen when the UNet compiles
    assert_compiled_like_eager(run, eager(world, preservation=0.5))
    again = compiled_run(torch_compile_model(apply(world, preservation=0.5)))
    assert again["compiled"] == 0, "a second run of the same setting recompiled"
    assert_compiled_like_eager(again, eager(world, preservation=0.5))


def test_compile_before_apply_matches_eager(world, compiled_base):
    assert_compiled_like_eager(
        compiled_run(apply(world, preservation=0.5, model=compiled_base)), eager(world, preservation=0.5)
    )


def changed_settings(world) -> dict:
    """FlexIPApply settings that differ from γ = 0.5 in what the graph computes."""
    pack = world["pack"]
    schedule = node(pack, "FlexIPGateSchedule").build("0:1, 1:0", "cosine", output_blocks="0:0.2, 1:0.9")[0]
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    (other,) = node(pack, "FlexIPEncodeSubject").encode(
        world["flexip"], world["clip"], image, "average", dino=world["dino"]
    )
    return {
        "gamma 0.2": dict(preservation=0.2),
        "gamma 0.3": dict(preservation=0.3),  # dynamo made γ symbolic at 0.2: this one reuses that graph
        "schedule with window": dict(gate=schedule, start_at=0.2, end_at=0.9),
        "other subject": dict(preservation=0.5, subject=other),
    }


@pytest.mark.parametrize("change", ["gamma 0.2", "gamma 0.3", "schedule with window", "other subject"])
def test_changing_gamma_schedule_or_subject_between_runs_works_compiled(world, compiled_base, change):
    settings = dict(changed_settings(world)[change])
    subject = settings.pop("subject", None)
    changed = dict(world, subject=subject) if subject is not None else world
    expected = eager(changed, **settings)
    scale = float(expected.abs().max())
    # the change must move the image, or matching eager would not show that it reached the graph
    assert (expected - eager(world, preservation=0.5)).abs().max() > 10 * RELATIVE_TOLERANCE * scale
    assert_compiled_like_eager(compiled_run(apply(changed, model=compiled_base, **settings)), expected)


def test_token_mode_follows_gamma_changes_between_runs_compiled(world, compiled_base):
    token = tiny_world(world["pack"], gate_mode="token", model=world["model"])
    for gamma in (0.2, 0.3, 0.4):  # 0.3 makes dynamo's γ symbolic, 0.4 reuses that graph
        assert_compiled_like_eager(
            compiled_run(apply(token, preservation=gamma, model=compiled_base)), eager(token, preservation=gamma)
        )
