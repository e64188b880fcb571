"""File and folder names the nodes receive are resolved inside their registered model folders.

A name can arrive through a link from any node (ComfyUI checks the combo list only for typed
values), so the loaders themselves must refuse names that leave the folder: '..', absolute
paths, drive letters, backslashes on POSIX, NUL bytes, empty names, and symlinks out of the
folder that ComfyUI does not list. Each refusal is one sentence naming the node input and the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import flexip_model
from flexip_host.bootstrap import load_pack
from tests.support.assertions import assert_one_sentence
from tools.fixtures.adapters import flexip_sd15
from tools.fixtures.faces import FACE_PACK_NAME, face_pack, insightface_root

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]  # insightface's skimage call

PACK = load_pack()
FlexIPError = flexip_model.errors.FlexIPError
LEAVING = {
    "parent": ("../outside.safetensors", "contains '..'"),
    "deep parent": ("sub/../../../outside.safetensors", "contains '..'"),
    "absolute": (str(Path("/").resolve() / "etc" / "outside.safetensors"), "is an absolute path"),
    "drive letter": ("C:outside.safetensors", "is an absolute path"),
    "NUL byte": ("adapter\0.safetensors", "contains a NUL byte"),
    "empty": ("", "is empty"),
}
if os.sep == "/":
    LEAVING["backslash"] = ("sub\\outside.safetensors", "contains a backslash")


@pytest.fixture
def models(tmp_path, monkeypatch):
    """models/flexip and models/ipadapter in tmp_path as the only registered folders, outside.safetensors
    beside them."""
    import folder_paths

    # ComfyUI's listing cache would stat the folders of earlier tests, which pytest has removed
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    for folder in ("flexip", "ipadapter"):
        (tmp_path / "models" / folder).mkdir(parents=True)
        monkeypatch.setitem(
            folder_paths.folder_names_and_paths, folder, ([str(tmp_path / "models" / folder)], {".safetensors"})
        )
    (tmp_path / "models" / "outside.safetensors").write_bytes(flexip_sd15().read_bytes())
    # the pair's other input: resolved, never read (the refused name stops the node first)
    (tmp_path / "models" / "ipadapter" / "ip-adapter_sd15.safetensors").write_bytes(b"never read")
    return tmp_path / "models"


def run(key: str, **inputs):
    node_class = PACK.node_classes[key]
    return getattr(node_class(), node_class.FUNCTION)(**inputs)


LOADERS = {
    "FlexIPLoader's adapter_name": lambda name: run("FlexIPLoader", adapter_name=name),
    "FlexIPAdapterPairLoader's preservation": lambda name: run(
        "FlexIPAdapterPairLoader", model=None, preservation=name, personalization="ip-adapter_sd15.safetensors"
    ),
    "FlexIPAdapterPairLoader's personalization": lambda name: run(
        "FlexIPAdapterPairLoader", model=None, preservation="ip-adapter_sd15.safetensors", personalization=name
    ),
}


@pytest.mark.parametrize("case", LEAVING)
@pytest.mark.parametrize("where", LOADERS)
def test_an_adapter_name_that_leaves_its_folder_is_refused_naming_the_input_and_folder(models, where, case):
    name, problem = LEAVING[case]
    folder = "flexip" if where.startswith("FlexIPLoader") else "ipadapter"
    with pytest.raises(FlexIPError) as error:
        LOADERS[where](name)
    assert_one_sentence(str(error.value), where, problem, str(models / folder))


def test_a_missing_adapter_is_refused_naming_the_input_and_the_folder(models):
    with pytest.raises(FlexIPError) as error:
        run("FlexIPLoader", adapter_name="absent.safetensors")
    assert_one_sentence(
        str(error.value), "FlexIPLoader's adapter_name", "'absent.safetensors' was not found", str(models / "flexip")
    )


def test_an_unlisted_file_behind_a_symlink_out_of_the_folder_is_refused(models, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "notes.txt").write_text("not a model")  # .txt: ComfyUI does not list it
    (models / "flexip" / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FlexIPError) as error:
        PACK.nodes.folders.model_file("flexip", "escape/notes.txt", "FlexIPLoader's adapter_name")
    assert_one_sentence(
        str(error.value), "FlexIPLoader's adapter_name", str(outside / "notes.txt"), f"outside {models / 'flexip'}"
    )


def test_a_listed_file_symlinked_from_elsewhere_loads(models, tmp_path):
    # users link one shared copy of a model into several installs: ComfyUI lists it, so it is theirs
    (models / "flexip" / "shared.safetensors").symlink_to(flexip_sd15())
    (flexip,) = run("FlexIPLoader", adapter_name="shared.safetensors")
    assert flexip.name == "shared.safetensors"


def test_a_file_in_a_symlinked_model_folder_loads(tmp_path, monkeypatch):
    import folder_paths

    real = tmp_path / "disk" / "flexip"
    real.mkdir(parents=True)
    (real / "adapter.safetensors").write_bytes(b"only resolved here, never read")
    (tmp_path / "flexip_link").symlink_to(real, target_is_directory=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "flexip", ([str(tmp_path / "flexip_link")], {".x"}))
    # .x: not listed, so only the real-path containment (link resolved on both sides) accepts it
    path = PACK.nodes.folders.model_file("flexip", "adapter.safetensors", "FlexIPLoader's adapter_name")
    assert path == str(tmp_path / "flexip_link" / "adapter.safetensors")


@pytest.fixture
def insightface_models(tmp_path):
    """A registered models/insightface with the generated pack, and outside_pack (a .onnx sentinel) beside it."""
    outside = tmp_path / "outside_pack"
    outside.mkdir()
    (outside / "det_sentinel.onnx").write_text("not an ONNX file: opening it must never happen")
    with insightface_root(tmp_path / "insightface") as root:
        face_pack(root / "models" / FACE_PACK_NAME)
        yield root


@pytest.mark.parametrize(
    "pack, problem",
    [
        ("../../outside_pack", "contains '..'"),
        ("..", "contains '..'"),
        ("sub/" + FACE_PACK_NAME, "contains a folder separator"),
        ("", "is empty"),
        ("pack\0", "contains a NUL byte"),
        ("/outside_pack", "is an absolute path"),
    ],
)
def test_an_insightface_pack_name_that_leaves_the_folder_is_refused_before_onnx_runtime(
    insightface_models, pack, problem
):
    with pytest.raises(FlexIPError) as error:
        run("FlexIPInsightFaceLoader", pack=pack, provider="CPU")
    message = str(error.value)
    assert_one_sentence(message, "FlexIPInsightFaceLoader's pack", problem, str(insightface_models))
    assert "could not load" not in message  # insightface never got the sentinel


def test_a_listed_pack_symlinked_from_elsewhere_loads(insightface_models, tmp_path):
    shared = face_pack(tmp_path / "shared" / "shared_pack")
    (insightface_models / "models" / "shared_pack").symlink_to(shared, target_is_directory=True)
    (analysis,) = run("FlexIPInsightFaceLoader", pack="shared_pack", provider="CPU")
    assert "recognition" in analysis.models
