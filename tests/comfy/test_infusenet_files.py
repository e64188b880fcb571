"""InfiniteYou's InfuseNet files, loaded by ComfyUI's controlnet loader behind the pack's header checks.

The files are full width (hidden 3072, as ComfyUI's FLUX detection demands) with one double and one
single block, in diffusers' FluxControlNetModel layout, bf16 and fp8 e4m3fn as InfiniteYou ships
them: zeros in sparse files (tools/fixtures/flux.py `infusenet_file`), so they cost no disk; a load
costs seconds, so each is loaded as few times as the behaviour needs. The refused files are small
or never read past their header.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import comfy.ldm.flux.controlnet
import comfy.model_management
import comfy.supported_models
import pytest
import torch

from flexip_model.errors import FlexIPError
from flexip_model.ip_adapter.image_projections import Resampler
from tests.support.assertions import assert_one_sentence
from tools.fixtures.flux import (
    infusenet_diffusers_shapes,
    infusenet_file,
    infusenet_folder,
    write_zero_safetensors,
)
from tools.fixtures.infiniteyou_files import AES_SEED, SIM_SEED, identity_projection_file

LOADER = "FlexIPInfiniteYouLoader"
BF16 = "infusenet_1x1_bfloat16.safetensors"
FP8 = "infusenet_1x1_fp8e4m3fn.safetensors"
DEEPER = "infusenet_1x2_fp8e4m3fn.safetensors"  # one more single block: 2 single residuals
SIM_PROJECTION, AES_PROJECTION = f"image_proj_model_{SIM_SEED}.bin", f"image_proj_model_{AES_SEED}.bin"


@pytest.fixture(scope="module")
def infusenets() -> Path:
    """The cached InfuseNet files (made once per cache, in milliseconds: sparse zeros) and their folder."""
    for double, single, dtype in ((1, 1, torch.bfloat16), (1, 1, torch.float8_e4m3fn), (1, 2, torch.float8_e4m3fn)):
        infusenet_file(double, single, dtype)
    return infusenet_folder()


@pytest.fixture
def folders(infusenets, tmp_path, monkeypatch) -> Path:
    """models/controlnet = the cached InfuseNets + tmp_path/controlnet (for the refused files);
    models/infiniteyou = the cached identity projections. Returns tmp_path/controlnet."""
    import folder_paths

    projections = identity_projection_file(SIM_SEED).parent
    identity_projection_file(AES_SEED)
    extra = tmp_path / "controlnet"
    extra.mkdir()
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setitem(
        folder_paths.folder_names_and_paths, "controlnet", ([str(infusenets), str(extra)], {".safetensors", ".pth"})
    )
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "infiniteyou", ([str(projections)], {".bin"}))
    return extra


def node_module(pack, name: str) -> ModuleType:
    """A module of the pack's node layer, imported if no registered node has imported it yet."""
    return importlib.import_module(f"{pack.nodes.__name__}.{name}")


def load_infusenet(pack, name: str):
    files = node_module(pack, "infusenet_files")
    return files.load_infusenet(files.check_infusenet(name, "test"), "test")


def load_pair(pack, sim: str, aes: str):
    node = node_module(pack, "infiniteyou_loader").FlexIPInfiniteYouLoader()
    (pair,) = node.load(
        sim_infusenet=sim, sim_projection=SIM_PROJECTION, aes_infusenet=aes, aes_projection=AES_PROJECTION
    )
    return pair


def assert_instantx_flux_controlnet(control) -> comfy.ldm.flux.controlnet.ControlNetFlux:
    """ComfyUI's ControlNet around a ControlNetFlux with a latent input and one double and one single block."""
    model = control.control_model
    assert isinstance(model, comfy.ldm.flux.controlnet.ControlNetFlux) and model.latent_input
    assert (model.params.depth, model.params.depth_single_blocks) == (1, 1)
    assert (model.params.hidden_size, model.params.num_heads, model.params.context_in_dim) == (3072, 24, 4096)
    assert control.control_model_wrapped.model is model  # under ComfyUI's model management
    return model


def test_a_bf16_infusenet_loads_as_comfyuis_flux_controlnet_in_the_dtype_it_picks(flexip_pack, folders):
    control = load_infusenet(flexip_pack, BF16)
    model = assert_instantx_flux_controlnet(control)
    # ComfyUI's own choice for a bf16 FLUX on this device: bf16 where it computes in bf16, else float32
    picked = comfy.model_management.unet_dtype(
        model_params=-1,
        supported_dtypes=list(comfy.supported_models.Flux.supported_inference_dtypes),
        weight_dtype=torch.bfloat16,
    )
    assert model.double_blocks[0].img_attn.qkv.weight.dtype == picked
    assert control.manual_cast_dtype == comfy.model_management.unet_manual_cast(picked, control.load_device)


def test_an_fp8_infusenet_stays_fp8_and_computes_in_a_manual_cast_dtype(flexip_pack, folders):
    control = load_infusenet(flexip_pack, FP8)
    model = assert_instantx_flux_controlnet(control)
    # weights stay fp8 in memory (half the bf16 bytes); each layer casts them to the compute dtype
    assert model.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert model.controlnet_blocks[0].weight.dtype == torch.float8_e4m3fn
    assert control.manual_cast_dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert getattr(model.double_blocks[0].img_attn.qkv, "comfy_cast_weights", False)


def test_the_loader_loads_both_stages_with_their_projections_as_one_pair(flexip_pack, folders):
    pair = load_pair(flexip_pack, FP8, FP8)
    assert (pair.sim.name, pair.aes.name) == (FP8, FP8)
    assert pair.sim.control.control_model is not pair.aes.control.control_model  # two InfuseNets, two models
    for stage in (pair.sim, pair.aes):
        assert_instantx_flux_controlnet(stage.control)
        assert node_module(flexip_pack, "infiniteyou_bundles").pair_group_counts(stage) == (1, 1)
        assert isinstance(stage.projection, Resampler) and not stage.projection.training
    # the two stages' projections come from their own files (seeded differently)
    assert not torch.equal(pair.sim.projection.proj_in.weight, pair.aes.projection.proj_in.weight)


def write_refused(folder: Path, case: str) -> tuple[str, str]:
    """A file the loader must refuse, in the registered tmp controlnet folder: (name, what the sentence says)."""
    if case == "not safetensors":
        name = "infusenet_sim.pth"
        (folder / name).write_bytes(b"a pickle is never opened")
        return name, "is not a .safetensors file"
    if case == "sd controlnet":
        name = "control_v11p_sd15_openpose.safetensors"
        shapes = {
            "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
            "controlnet_down_blocks.0.weight": (320, 320, 1, 1),
        }
        write_zero_safetensors(folder / name, shapes, torch.float16)
        return name, "is not an InfuseNet (it has no controlnet_blocks.0.weight)"
    if case == "wrong context width":
        name = "flux_controlnet_clip_context.safetensors"  # read up to its header only (sparse zeros)
        write_zero_safetensors(folder / name, infusenet_diffusers_shapes(context_width=768), torch.bfloat16)
        return name, "its context_embedder.weight is [3072, 768]"
    name = "infusenet_truncated.safetensors"
    with open(infusenet_file(1, 1, torch.float8_e4m3fn), "rb") as source:
        length = int.from_bytes(source.read(8), "little")
        source.seek(0)
        (folder / name).write_bytes(source.read(8 + length + (1 << 20)))  # the header and 1 MiB of data
    return name, "the file is truncated or damaged"


@pytest.mark.parametrize("case", ["not safetensors", "sd controlnet", "wrong context width", "truncated"])
def test_a_file_that_is_not_an_infusenet_is_refused_in_one_sentence_naming_it(flexip_pack, folders, case):
    name, problem = write_refused(folders, case)
    with pytest.raises(FlexIPError) as error:
        load_pair(flexip_pack, name, FP8)  # the sim input is refused before anything is loaded
    assert_one_sentence(str(error.value), name, problem)


def test_two_infusenets_of_different_depth_are_refused_naming_both(flexip_pack, folders):
    with pytest.raises(FlexIPError) as error:
        load_pair(flexip_pack, FP8, DEEPER)
    assert_one_sentence(str(error.value), LOADER, FP8, DEEPER, "1 double and 1 single", "1 and 2")
