"""Our ArcFace IR-SE50 against facexlib's own module (dev-only, installed without its dependencies).

facexlib's `recognition/arcface_arch.py` is loaded by file path: importing the `facexlib` package
would import cv2, numba and its downloaders. Both modules get the same random state dict.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from flexip_model.flux import ArcFaceIRSE50, arcface_input

pytestmark = pytest.mark.unit


def facexlib_arcface_arch():
    spec = importlib.util.find_spec("facexlib")
    if spec is None or spec.origin is None:
        pytest.fail("facexlib is missing: make setup installs it (tools/setup.sh, --no-deps)")
    path = Path(spec.origin).parent / "recognition" / "arcface_arch.py"
    module_spec = importlib.util.spec_from_file_location("facexlib_arcface_arch", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Kernels N(0, 1/fan_in); batch-norm statistics and affines near the identity; PReLU slopes near 0.25."""
    generator = torch.Generator().manual_seed(seed)
    owners = dict(module.named_modules())
    state = {}
    for name, value in module.state_dict().items():
        owner, _, local = name.rpartition(".")
        noise = 0.1 * torch.randn(value.shape, generator=generator)
        if local == "num_batches_tracked":
            state[name] = torch.tensor(7)
        elif isinstance(owners[owner], torch.nn.PReLU):
            state[name] = 0.25 + noise
        elif local in ("weight", "running_var") and value.ndim == 1:  # batch norms
            state[name] = 1 + noise.abs() if local == "running_var" else 1 + noise
        elif value.ndim >= 2:
            state[name] = torch.randn(value.shape, generator=generator) / math.sqrt(value[0].numel())
        else:  # biases, running means
            state[name] = noise
    return state


@pytest.fixture(scope="module")
def both():
    arch = facexlib_arcface_arch()
    theirs = arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").eval()
    ours = ArcFaceIRSE50().eval()
    state = random_state(theirs, seed=3)
    theirs.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    return ours, theirs


def test_state_dict_names_and_shapes_equal_facexlibs(both):
    ours, theirs = both
    assert set(ours.state_dict()) == set(theirs.state_dict())  # (the order differs: facexlib registers body last)
    assert {n: t.shape for n, t in ours.state_dict().items()} == {n: t.shape for n, t in theirs.state_dict().items()}
    assert sum(t.numel() for t in ours.parameters()) == sum(t.numel() for t in theirs.parameters())


def test_embeddings_equal_facexlibs_bit_for_bit_in_float32_eval(both):
    ours, theirs = both
    crops = torch.rand(3, 112, 112, 3, generator=torch.Generator().manual_seed(5))
    faces = arcface_input(crops)
    with torch.no_grad():
        mine, reference = ours(faces), theirs(faces)
    assert mine.shape == (3, 512)
    # the same kernels in the same order (conv, batch norm, PReLU, pooling, sigmoid, linear, norm):
    # F.normalize divides by the same norm as facexlib's l2_norm, so nothing is left to round differently
    assert torch.equal(mine, reference), (mine - reference).abs().max()
    torch.testing.assert_close(mine.norm(dim=1), torch.ones(3), rtol=0, atol=1e-6)
    assert (mine[0] - mine[1]).abs().max() > 1e-3  # different faces, different identities


def test_arcface_input_is_bgr_in_minus_one_to_one():
    crops = torch.zeros(1, 112, 112, 3)
    crops[..., 0] = 1.0  # pure red
    faces = arcface_input(crops)
    assert faces.shape == (1, 3, 112, 112)
    assert faces[0, 2].eq(1).all() and faces[0, :2].eq(-1).all()  # red is the last channel of BGR
