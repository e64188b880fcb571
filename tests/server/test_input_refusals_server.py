"""Issue 14 from outside, over HTTP: names that leave their model folder and non-finite FLOAT inputs.

Each bad prompt must fail with one FlexIPError sentence naming the node input, and the server
must keep serving: the shipped basic workflow runs right after. Names arrive through a link
from a wildcard-typed node (tests/server/any_type_pack, the way third-party "Any" nodes pass
values), for which ComfyUI skips its combo-list check; NaN is sent as JSON's NaN, which
Python API clients write and ComfyUI's parser accepts (its min/max check lets NaN through).
"""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import pytest

from tests.support.assertions import assert_one_sentence
from tools.fixtures.adapters import FLEXIP_SD15_NAME, flexip_sd15, link_adapters
from tools.fixtures.faces import link_face_pack
from tools.fixtures.images import drawn_subject
from tools.fixtures.ip_adapter_files import build_ip_adapter
from tools.harness.server import PACK_NAME, ComfyServer, ExecutionFailed
from tools.harness.workflows import for_test_models, load_api, nodes_of

pytestmark = pytest.mark.server

ANY_PACK = "flexip_any_type_test_pack"
PERSONALIZATION = "ip-adapter_sd15.safetensors"
_seeds = itertools.count(3000)  # identical prompts are served from cache: every run gets a new seed


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfyui_path):
    """A server with ComfyUI-FlexIP, the wildcard test pack, the generated models, a face pack and an IP-Adapter file.

    Beside models/ lie the targets a traversal would reach: outside_pack/ (a .onnx that is no ONNX
    file, so opening it would fail differently) and models/outside.safetensors (a valid FlexIP file).
    """
    base = tmp_path_factory.mktemp("refusals-server").resolve()
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / ANY_PACK).symlink_to(Path(__file__).resolve().parent / "any_type_pack")
    with ComfyServer(
        base, host_path=comfyui_path, extra_args=["--whitelist-custom-nodes", PACK_NAME, ANY_PACK]
    ) as started:
        models = base / "models"
        link_adapters(models)
        link_face_pack(models)
        (models / "ipadapter").mkdir(exist_ok=True)
        build_ip_adapter(models / "ipadapter" / PERSONALIZATION, "ip-adapter_sd15", seed=2, layer_widths=(320,) * 4)
        shutil.copyfile(flexip_sd15(), models / "outside.safetensors")
        (base / "outside_pack").mkdir()
        (base / "outside_pack" / "det_sentinel.onnx").write_text("not an ONNX file: no loader may open it")
        yield started


@pytest.fixture(scope="module")
def subject(server):
    return server.upload_image(drawn_subject(), "flexip_refusals_subject.png")


def basic(subject, **apply_inputs) -> dict:
    prompt = for_test_models(load_api("flexip_basic_sd15"), next(_seeds), subject, size=64, steps=2)
    prompt[nodes_of(prompt, "FlexIPApply")[0]]["inputs"].update(apply_inputs)
    return prompt


def linked(prompt: dict, class_type: str, input_name: str, text: str = "", number: float | None = None) -> dict:
    """`prompt` with `class_type`'s `input_name` fed by a wildcard node's `text` output, or `number` if given."""
    prompt["any"] = {"class_type": "FlexIPTestAnyConstants", "inputs": {"text": text, "number": number or 0.0}}
    prompt[nodes_of(prompt, class_type)[0]]["inputs"][input_name] = ["any", 0 if number is None else 1]
    return prompt


def refusal(server, prompt: dict) -> tuple[str, str, str]:
    """(node type, exception type, message) of the node that failed the prompt."""
    with pytest.raises(ExecutionFailed) as failure:
        server.run(prompt)
    for event, data in failure.value.history["status"]["messages"]:
        if event == "execution_error":
            return data["node_type"], data["exception_type"], data["exception_message"].strip()
    raise AssertionError(f"no execution_error in {failure.value.history['status']}")


def assert_still_serving(server, subject) -> None:
    assert server.pixels(basic(subject)).shape == (64, 64, 3)


@pytest.mark.parametrize("name, bound", [("strength", "between 0 and 2"), ("preservation", "between 0 and 1")])
def test_a_nan_float_through_the_api_is_refused_naming_the_input(server, subject, name, bound):
    node, kind, message = refusal(server, basic(subject, **{name: math.nan}))
    assert node == "FlexIPApply" and kind.endswith("FlexIPError")
    assert message == f"Apply FlexIP: {name} is nan: give a finite number {bound}."
    assert_still_serving(server, subject)


def test_an_infinite_float_linked_from_a_wildcard_node_is_refused_naming_the_input(server, subject):
    # ComfyUI's range check refuses -inf typed into end_at, but does not look at linked values
    node, kind, message = refusal(server, linked(basic(subject), "FlexIPApply", "end_at", number=-math.inf))
    assert node == "FlexIPApply" and kind.endswith("FlexIPError")
    assert message == "Apply FlexIP: end_at is -inf: give a finite number between 0 and 1."
    assert_still_serving(server, subject)


def test_an_insightface_pack_linked_from_a_wildcard_node_cannot_leave_models_insightface(server, subject):
    image = server.upload_image(drawn_subject(), "flexip_refusals_face.png")
    prompt = {
        "image": {"class_type": "LoadImage", "inputs": {"image": image}},
        "faces": {"class_type": "FlexIPInsightFaceLoader", "inputs": {"pack": "antelopev2", "provider": "CPU"}},
        "crop": {
            "class_type": "FlexIPFaceCrop",
            "inputs": {
                "image": ["image", 0],
                "insightface": ["faces", 0],
                "face": "largest",
                "face_index": 0,
                "crop_size": 224,
                "crop_scale": 1.5,
                "no_face": "use_whole_image",
            },
        },
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["crop", 0]}},
    }
    node, kind, message = refusal(server, linked(prompt, "FlexIPInsightFaceLoader", "pack", "../../../outside_pack"))
    assert node == "FlexIPInsightFaceLoader" and kind.endswith("FlexIPError")
    assert_one_sentence(
        message,
        "FlexIPInsightFaceLoader's pack",
        "'../../../outside_pack' contains '..'",
        str(server.base_dir / "models" / "insightface"),
    )
    # onnxruntime never opened the sentinel: it would have logged a protobuf error naming it
    assert "det_sentinel.onnx" not in server.log_text()
    assert_still_serving(server, subject)


def test_a_flexip_file_linked_from_a_wildcard_node_cannot_leave_models_flexip(server, subject):
    prompt = linked(basic(subject), "FlexIPLoader", "adapter_name", "../outside.safetensors")
    node, kind, message = refusal(server, prompt)
    assert node == "FlexIPLoader" and kind.endswith("FlexIPError")
    assert_one_sentence(
        message,
        "FlexIPLoader's adapter_name",
        "'../outside.safetensors' contains '..'",
        str(server.base_dir / "models" / "flexip"),
    )
    assert_still_serving(server, subject)


def test_an_ip_adapter_file_linked_from_a_wildcard_node_cannot_leave_models_ipadapter(server, subject):
    prompt = for_test_models(load_api("flexip_compat_sd15"), next(_seeds), subject, size=64, steps=2)
    prompt[nodes_of(prompt, "FlexIPAdapterPairLoader")[0]]["inputs"]["personalization"] = PERSONALIZATION
    node, kind, message = refusal(
        server, linked(prompt, "FlexIPAdapterPairLoader", "preservation", "../outside.safetensors")
    )
    assert node == "FlexIPAdapterPairLoader" and kind.endswith("FlexIPError")
    assert_one_sentence(
        message,
        "FlexIPAdapterPairLoader's preservation",
        "'../outside.safetensors' contains '..'",
        str(server.base_dir / "models" / "ipadapter"),
    )
    assert_still_serving(server, subject)


def test_the_flexip_file_the_refusals_use_loads_under_its_own_name(server, subject):
    # the control: the same wildcard link with a name inside models/flexip runs
    prompt = linked(basic(subject), "FlexIPLoader", "adapter_name", FLEXIP_SD15_NAME)
    assert server.pixels(prompt).shape == (64, 64, 3)
