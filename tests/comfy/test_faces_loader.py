"""FlexIPInsightFaceLoader with the real insightface package and generated ONNX packs."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

import flexip_model
from tools.fixtures import REPO_ROOT
from tools.fixtures.faces import (
    DETECTOR_FILE,
    FACE_PACK_NAME,
    RECOGNITION_FILE,
    detector_onnx,
    face_pack,
    insightface_root,
)

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]  # insightface's skimage call


@pytest.fixture(scope="module")
def flexip_error(flexip_pack):
    return flexip_model.errors.FlexIPError


@pytest.fixture
def root(tmp_path, flexip_pack):
    """An empty models/insightface for this test, as the only registered insightface folder."""
    with insightface_root(tmp_path / "insightface") as folder:
        (folder / "models").mkdir(parents=True)
        yield folder


def load(pack, pack_name=FACE_PACK_NAME, provider="CPU"):
    (analysis,) = pack.node_classes["FlexIPInsightFaceLoader"]().load(pack_name, provider)
    return analysis


@pytest.mark.parametrize(
    "choice, name",
    [
        ("CPU", "CPUExecutionProvider"),
        ("CUDA", "CUDAExecutionProvider"),
        ("ROCm", "ROCMExecutionProvider"),
        ("CoreML", "CoreMLExecutionProvider"),
        ("DirectML", "DmlExecutionProvider"),
        ("OpenVINO", "OpenVINOExecutionProvider"),
    ],
)
def test_each_provider_maps_to_its_onnx_runtime_name_with_cpu_after_it(flexip_pack, choice, name):
    runtime = flexip_pack.nodes.faces_runtime
    expected = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    assert runtime.onnx_providers(choice, [name, "CPUExecutionProvider"]) == expected


def test_a_provider_the_runtime_lacks_falls_back_to_cpu_with_a_warning(flexip_pack, caplog):
    with caplog.at_level(logging.WARNING):
        providers = flexip_pack.nodes.faces_runtime.onnx_providers("CUDA", ["CPUExecutionProvider"])
    assert providers == ["CPUExecutionProvider"]
    assert "no CUDAExecutionProvider" in caplog.text and "on the CPU" in caplog.text


def test_the_generated_pack_loads_through_real_insightface_on_the_fallback_provider(flexip_pack, root, caplog):
    import insightface.app
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()  # the CPU build the tests install
    face_pack(root / "models" / FACE_PACK_NAME)
    with caplog.at_level(logging.WARNING):
        analysis = load(flexip_pack, provider="CUDA")
    assert isinstance(analysis, insightface.app.FaceAnalysis)  # the INSIGHTFACE other face packs pass too
    assert type(analysis.det_model).__name__ == "SCRFD"
    assert type(analysis.models["recognition"]).__name__ == "ArcFaceONNX"
    assert analysis.det_model.session.get_providers() == ["CPUExecutionProvider"]
    assert "no CUDAExecutionProvider" in caplog.text


def test_the_pack_list_has_the_known_packs_first_then_every_folder(flexip_pack, root):
    face_pack(root / "models" / "my_pack")
    (root / "models" / "buffalo_l").mkdir()
    (names, options) = flexip_pack.node_classes["FlexIPInsightFaceLoader"].INPUT_TYPES()["required"]["pack"]
    assert names == ["antelopev2", "buffalo_l", "my_pack"]
    assert options["tooltip"]


def test_a_missing_pack_names_the_folder_it_should_be_in(flexip_pack, root, flexip_error):
    with pytest.raises(flexip_error, match="'antelopev2' was not found") as error:
        load(flexip_pack, "antelopev2")
    assert str(root / "models" / "antelopev2") in str(error.value)


def test_a_nested_pack_folder_says_where_to_move_the_files(flexip_pack, root, flexip_error):
    face_pack(root / "models" / "antelopev2" / "antelopev2")
    with pytest.raises(flexip_error, match="nested one folder too deep") as error:
        load(flexip_pack, "antelopev2")
    assert f"move the .onnx files up into {root / 'models' / 'antelopev2'}" in str(error.value)


def test_a_pack_outside_models_says_where_insightface_reads_it(flexip_pack, root, flexip_error):
    face_pack(root / "antelopev2")
    with pytest.raises(flexip_error, match="insightface reads packs from") as error:
        load(flexip_pack, "antelopev2")
    assert str(root / "models" / "antelopev2") in str(error.value)


def test_a_pack_without_a_detection_model_shows_its_path(flexip_pack, root, flexip_error):
    folder = face_pack(root / "models" / "partial", detection=False)
    assert (folder / RECOGNITION_FILE).exists() and not (folder / DETECTOR_FILE).exists()
    with pytest.raises(flexip_error, match="has no face detection model") as error:
        load(flexip_pack, "partial")
    assert str(folder) in str(error.value)


def test_an_empty_pack_folder_says_the_files_must_sit_directly_in_it(flexip_pack, root, flexip_error):
    (root / "models" / "antelopev2").mkdir()
    with pytest.raises(flexip_error, match=r"has no \.onnx files"):
        load(flexip_pack, "antelopev2")


# Run in a fresh process: the face packages are hidden before anything imports them, and the
# pack is loaded by ComfyUI's loader as in a server without them.
WITHOUT_PACKAGE = """
import importlib.abc, importlib.machinery, sys, tempfile
from pathlib import Path

class Hidden(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == MISSING or name.startswith(MISSING + "."):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}")

sys.meta_path.insert(0, Hidden())
from flexip_model.errors import FlexIPError
from flexip_host.bootstrap import load_pack
from tools.fixtures import import_inprocess_comfy
from tools.fixtures.faces import FACE_PACK_NAME, face_pack, insightface_root

import_inprocess_comfy()
pack = load_pack()
assert {"FlexIPInsightFaceLoader", "FlexIPFaceCrop", "FlexIPFaceSimilarity"} <= set(pack.node_classes)
assert MISSING not in sys.modules, "importing the pack imported " + MISSING
with insightface_root(Path(tempfile.mkdtemp())) as root:
    face_pack(root / "models" / FACE_PACK_NAME)
    try:
        pack.node("FlexIPInsightFaceLoader").load(FACE_PACK_NAME, "CPU")
    except FlexIPError as error:
        print("REFUSED:", error)
"""


@pytest.mark.parametrize("missing", ["insightface", "onnxruntime"])
def test_the_pack_imports_without_the_face_packages_and_the_loader_says_how_to_install(missing):
    detector_onnx()  # generated here, where the packages are importable
    result = subprocess.run(
        [sys.executable, "-c", f"MISSING = {missing!r}\n" + WITHOUT_PACKAGE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(
        f'REFUSED: .*{missing} could not be imported .*pip install "insightface>=1.0" onnxruntime', result.stdout
    ), result.stdout[-2000:]
