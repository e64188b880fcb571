"""InfiniteYou's identity files: the projection (image_proj_model.bin) and facexlib's IR-SE50 (.pth).

Released layouts load, and their tokens match an independent float64 reference; crafted files are
refused in one sentence naming the file, before the tensors a file claims are allocated.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flexip_model.flux import arcface_input, identity_tokens, load_identity_projection, load_ir_se50
from tests.support.assertions import assert_one_sentence
from tests.unit.crafted_files import bounded_refusal
from tools.fixtures.infiniteyou_files import (
    AES_SEED,
    PROJECTION_SHAPES,
    SIM_SEED,
    identity_projection_file,
    ir_se50_file,
    ir_se50_state,
    write_legacy_torch_file,
)
from tools.fixtures.ip_adapter_files import random_weights
from tools.fixtures.ip_adapter_reference import image_tokens

pytestmark = pytest.mark.unit

ARCFACE = "recognition_arcface_ir_se50.pth"
# A refusal reads at most the pickles (~100 KB here): bounded_refusal's 5 s and 200 MB catch a read or
# an allocation of what a file claims (the crafted sizes below are 4 GB and more).


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    """The IR-SE50 names with tiny tensors: every name is right, shapes are wrong (refused before reading)."""
    return {name: torch.zeros(2) for name in ir_se50_state(0)}


# the projection --------------------------------------------------------------------------------


def test_projection_tokens_equal_the_float64_reference_of_the_file():
    path = identity_projection_file(SIM_SEED)
    projection = load_identity_projection(path)
    weights = {f"image_proj.{name}": t for name, t in torch.load(path, weights_only=True)["image_proj"].items()}
    embedding = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(1)), dim=1)
    tokens = identity_tokens(projection, embedding)
    assert tokens.shape == (2, 8, 4096) and tokens.dtype == torch.float32
    reference = image_tokens(weights, embedding.double().unsqueeze(1))
    # float32 against float64 through 4 blocks and a final LayerNorm (tokens of std ~1): ~1e-5 seen
    torch.testing.assert_close(tokens.double(), reference, rtol=0, atol=1e-4)


def test_the_two_stages_give_different_tokens_for_one_face():
    embedding = torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(2)), dim=1)
    sim = identity_tokens(load_identity_projection(identity_projection_file(SIM_SEED)), embedding)
    aes = identity_tokens(load_identity_projection(identity_projection_file(AES_SEED)), embedding)
    assert torch.isfinite(sim).all() and torch.isfinite(aes).all()
    assert (sim - aes).abs().max() > 0.5  # tokens of std ~1 from independent weights


def test_projection_safetensors_with_the_image_proj_prefix_loads(tmp_path):
    tensors = random_weights(PROJECTION_SHAPES, seed=5, dtype=torch.float16)
    path = tmp_path / "sim_stage1.safetensors"
    save_file({f"image_proj.{name}": t for name, t in tensors.items()}, str(path))
    projection = load_identity_projection(path)
    assert torch.equal(projection.latents, tensors["latents"].float())


def test_projection_file_without_image_proj_is_refused(tmp_path):
    path = tmp_path / "image_proj_model.bin"
    torch.save({"state_dict": {"latents": torch.zeros(1)}}, str(path))
    message = bounded_refusal(lambda: load_identity_projection(path))
    assert_one_sentence(message, "image_proj_model.bin", "state_dict", "'image_proj'", "InfiniteYou")


@pytest.mark.parametrize(
    "damage,mentions",
    [
        ("deeper", ["unexpected tensor layers.4.0.to_q.weight"]),
        ("missing", ["lacks norm_out.bias"]),
        ("queries", ["latents", "[1, 16, 1280]", "[1, 8, 1280]"]),
        ("integer", ["proj_in.weight", "not a float tensor"]),
        ("nan", ["NaN or infinite", "proj_out.weight"]),
    ],
)
def test_projection_with_other_names_shapes_or_values_is_refused_naming_the_tensor(tmp_path, damage, mentions):
    shapes = dict(PROJECTION_SHAPES)
    if damage == "deeper":
        shapes["layers.4.0.to_q.weight"] = (8, 8)
    elif damage == "missing":
        del shapes["norm_out.bias"]
    elif damage == "queries":
        shapes["latents"] = (1, 16, 1280)
    tensors = random_weights(shapes, seed=3, dtype=torch.float16)
    if damage == "integer":
        tensors["proj_in.weight"] = tensors["proj_in.weight"].to(torch.int16)
    elif damage == "nan":
        tensors["proj_out.weight"][0, 0] = float("nan")
    path = tmp_path / "image_proj_model.bin"
    torch.save({"image_proj": tensors}, str(path))
    assert_one_sentence(bounded_refusal(lambda: load_identity_projection(path)), "image_proj_model.bin", *mentions)


def test_projection_over_its_size_bound_is_refused_before_reading(tmp_path):
    path = tmp_path / "image_proj_model.bin"
    with open(path, "wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: no disk, no reading
    assert_one_sentence(
        bounded_refusal(lambda: load_identity_projection(path)), "image_proj_model.bin", "bytes, over the"
    )


# the IR-SE50 file ------------------------------------------------------------------------------


def test_the_releases_legacy_layout_loads_as_an_eval_float32_module():
    state = ir_se50_state(13)
    model = load_ir_se50(ir_se50_file(13))
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())
    faces = arcface_input(torch.rand(1, 112, 112, 3, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        embedding = model(faces)
    assert embedding.shape == (1, 512) and abs(float(embedding.norm()) - 1) < 1e-5


@pytest.mark.parametrize("layout", ["zip with counters", "legacy written by hand", "safetensors with counters"])
def test_other_layouts_of_the_same_weights_load_equally(tmp_path, layout):
    state = ir_se50_state(13, counters="counters" in layout)
    path = tmp_path / ("arcface.safetensors" if "safetensors" in layout else ARCFACE)
    if layout.startswith("zip"):
        torch.save(state, str(path))
    elif layout.startswith("legacy"):
        write_legacy_torch_file(path, state)
    else:
        save_file(state, str(path))
    loaded = load_ir_se50(path).state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items() if tensor.is_floating_point())


@pytest.mark.parametrize(
    "damage,mentions",
    [
        ("missing", ["lacks body.23.res_layer.5.fc2.weight", "ArcFace IR-SE50", "models/infiniteyou"]),
        ("shape", ["output_layer.3.weight", "[512, 100]", "[512, 25088]"]),
        ("not a tensor", ["input_layer.0.weight", "not a tensor"]),
        ("integer", ["input_layer.1.running_mean", "not a float tensor"]),
        ("extra", ["unexpected tensor head.weight"]),
        ("nan", ["NaN or infinite", "body.3.res_layer.1.weight"]),
    ],
)
def test_ir_se50_with_other_names_shapes_or_values_is_refused_naming_the_tensor(tmp_path, damage, mentions):
    state: dict[str, object] = dict(ir_se50_state(13))
    if damage == "missing":
        del state["body.23.res_layer.5.fc2.weight"]
    elif damage == "shape":
        state["output_layer.3.weight"] = torch.zeros(512, 100)
    elif damage == "not a tensor":
        state["input_layer.0.weight"] = [1.0, 2.0]
    elif damage == "integer":
        state["input_layer.1.running_mean"] = torch.zeros(64, dtype=torch.int32)
    elif damage == "extra":
        state["head.weight"] = torch.zeros(2)
    else:
        state["body.3.res_layer.1.weight"][0, 0, 0, 0] = float("inf")  # pyright: ignore[reportIndexIssue]
    path = tmp_path / ARCFACE
    torch.save(state, str(path), _use_new_zipfile_serialization=False)
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, *mentions)


class _RunsCode:
    """Unpickling it would flip `ran`; the shape-only unpickler must refuse first."""

    ran = False

    def __setstate__(self, state):
        type(self).ran = True


@pytest.mark.parametrize("legacy", [True, False])
def test_ir_se50_that_needs_full_unpickling_is_refused_without_running_it(tmp_path, small_state, legacy):
    path = tmp_path / ARCFACE
    torch.save({**small_state, "note": _RunsCode()}, str(path), _use_new_zipfile_serialization=not legacy)
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "unpickling", "ArcFace IR-SE50")
    assert not _RunsCode.ran


@pytest.mark.parametrize("claimed", [10**9, 10**12, 2**62])
def test_legacy_file_claiming_huge_storages_is_refused_without_allocating_them(tmp_path, claimed):
    path = write_legacy_torch_file(tmp_path / ARCFACE, {"input_layer.0.weight": torch.zeros(4)}, claimed_numel=claimed)
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "damaged")


def test_legacy_file_whose_storage_counts_disagree_with_its_pickle_is_refused(tmp_path):
    path = write_legacy_torch_file(tmp_path / ARCFACE, {"input_layer.0.weight": torch.zeros(4)}, header_numel=5)
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "damaged")


def test_a_legacy_file_with_a_zip_appended_is_scanned_as_torch_would_read_it(tmp_path, small_state):
    lying = write_legacy_torch_file(
        tmp_path / "lying.pth", {"input_layer.0.weight": torch.zeros(4)}, claimed_numel=10**11
    )
    archive = tmp_path / "archive.pth"
    torch.save(small_state, str(archive))  # zipfile finds this one (it looks at the end); torch reads the start
    path = tmp_path / ARCFACE
    path.write_bytes(lying.read_bytes() + archive.read_bytes())
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "damaged")


def test_truncated_foreign_and_compressed_files_are_refused(tmp_path, small_state):
    path = tmp_path / ARCFACE
    torch.save(small_state, str(path), _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "damaged")
    path.write_bytes(b"plain text, not a torch file")
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "damaged")
    plain, packed = tmp_path / "plain.pth", tmp_path / "packed.pth"
    torch.save(small_state, str(plain))
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for record in source.infolist():
            target.writestr(record.filename, source.read(record))
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(packed)), "packed.pth", "compressed")
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(tmp_path / "missing.pth")), "missing.pth", "not found")


def test_a_flux_controlnet_picked_as_the_arcface_file_is_refused_from_its_header(tmp_path):
    path = tmp_path / "infusenet_sim_fp8.safetensors"
    save_file(
        {"controlnet_blocks.0.weight": torch.zeros(4, 4), "controlnet_x_embedder.weight": torch.zeros(4)}, str(path)
    )
    message = bounded_refusal(lambda: load_ir_se50(path))
    assert_one_sentence(message, "infusenet_sim_fp8.safetensors", "lacks input_layer.0.weight", ARCFACE)


def test_refusals_are_flexip_errors_never_raw_torch_errors(tmp_path):
    path = tmp_path / ARCFACE
    torch.save(torch.zeros(3), str(path))  # a bare tensor, not a state dict
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), ARCFACE, "not a state dict")
    path = Path(tmp_path / "arcface.onnx")
    path.write_bytes(b"")
    assert_one_sentence(bounded_refusal(lambda: load_ir_se50(path)), "arcface.onnx", ".pth")
