"""The face workflow and the face nodes on a real ComfyUI server, with the generated InsightFace pack."""

from __future__ import annotations

import itertools
import re

import pytest

from tools.fixtures.adapters import link_adapters
from tools.fixtures.faces import FACE_PACK_NAME, draw_faces, face_at, link_face_pack
from tools.harness.server import ExecutionFailed
from tools.harness.workflows import for_test_models, load_api, nodes_of

pytestmark = pytest.mark.server

FACE_NODES = ("FlexIPInsightFaceLoader", "FlexIPFaceCrop", "FlexIPFaceSimilarity")
_seeds = itertools.count(2000)  # identical prompts are served from cache: every run gets a new seed


def _png(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype("uint8"))


@pytest.fixture(scope="module")
def server(comfy_server):
    models = comfy_server.base_dir / "models"
    link_adapters(models)
    link_face_pack(models)  # models/insightface/models/flexip_test_faces/
    return comfy_server


@pytest.fixture(scope="module")
def face_photo(server):
    return server.upload_image(_png(draw_faces(160, 160, [face_at(80, 76, 64)])), "flexip_face_test.png")


@pytest.fixture(scope="module")
def empty_photo(server):
    return server.upload_image(_png(draw_faces(160, 160, [])), "flexip_no_face_test.png")


def face_workflow(image: str) -> dict:
    prompt = for_test_models(load_api("flexip_face_sd15"), next(_seeds), image)
    prompt[nodes_of(prompt, "FlexIPInsightFaceLoader")[0]]["inputs"]["pack"] = FACE_PACK_NAME
    return prompt


def test_the_face_nodes_are_registered_under_flexip_faces_with_tooltips(server):
    for name in FACE_NODES:
        info = server.object_info(name)
        assert info["category"] == "FlexIP/faces"
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        untipped = [key for key, spec in inputs.items() if not (len(spec) > 1 and spec[1].get("tooltip"))]
        assert not untipped, f"{name} inputs without a tooltip: {untipped}"
    loader_packs = server.object_info("FlexIPInsightFaceLoader")["input"]["required"]["pack"][0]
    assert loader_packs[:2] == ["antelopev2", "buffalo_l"] and FACE_PACK_NAME in loader_packs
    encode_inputs = server.object_info("FlexIPEncodeSubject")["input"]["optional"]
    assert encode_inputs["insightface"][0] == "INSIGHTFACE,FACEANALYSIS" and encode_inputs["insightface"][1]["tooltip"]
    # the face choice (docs/faces.md, "Which face"), the same three inputs with tooltips on each node that chooses
    for name in ("FlexIPFaceCrop", "FlexIPEncodeSubject", "FlexIPInfiniteYouFace"):
        inputs = server.object_info(name)["input"]
        choice = {**inputs["required"], **inputs["optional"]}
        assert choice["face"][0] == ["largest", "by index", "in mask"] and choice["face"][1]["default"] == "largest"
        assert choice["face_index"][0] == "INT" and inputs["optional"]["face_mask"][0] == "MASK"
        assert all(choice[key][1]["tooltip"] for key in ("face", "face_index", "face_mask")), name


def test_the_face_workflow_runs_end_to_end(server, face_photo):
    prompt = face_workflow(face_photo)
    history = server.run(prompt)
    outputs = history["outputs"]
    saved = outputs[nodes_of(prompt, "SaveImage")[0]]["images"]
    assert len(saved) == 1 and server.images({"outputs": {"0": {"images": saved}}})[0].size == (128, 128)
    preview = outputs[nodes_of(prompt, "PreviewImage")[0]]["images"]
    assert server.images({"outputs": {"0": {"images": preview}}})[0].size == (160, 160)  # the photo, boxes drawn
    (table,) = outputs[nodes_of(prompt, "PreviewAny")[0]]["text"]
    # the tiny random SD1.5 draws no face, or at most a blob the fixture detector takes for one
    assert re.search(r"^0\s+(no face \(0\.0\)|-?\d\.\d{4})$", table, re.MULTILINE), table
    assert "FlexIP faces: loaded InsightFace pack flexip_test_faces" in server.log_text()


def test_a_photo_without_a_face_stops_the_workflow_naming_the_image(server, empty_photo):
    with pytest.raises(ExecutionFailed) as failure:
        server.run(face_workflow(empty_photo))
    message = str(failure.value)
    assert "FlexIPFaceCrop" in message and "no face in image 0 (counting from 0, of 1)" in message
    assert "FlexIPError" in message


# two generated faces: a small one left and a large one right, so "largest" and "index 0" differ
TWO_FACES = (256, 192, [face_at(60, 90, 40, eyes=(30, 30, 200)), face_at(170, 100, 70, eyes=(30, 160, 30))])


def face_crop_prompt(image: str, face: str, face_index: int = 0, left_mask: bool = False) -> dict:
    """LoadImage -> FlexIP Face Crop (the generated pack) -> SaveImage; with `left_mask`, the crop's
    face_mask is the image's left half, made with ComfyUI's own SolidMask and MaskComposite."""
    width, height, _ = TWO_FACES
    crop = {
        "image": ["load", 0],
        "insightface": ["faces", 0],
        "face": face,
        "face_index": face_index,
        "crop_size": 112,
        "crop_scale": 1.5,
        "no_face": "error",
    }
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "faces": {"class_type": "FlexIPInsightFaceLoader", "inputs": {"pack": FACE_PACK_NAME, "provider": "CPU"}},
        "crop": {"class_type": "FlexIPFaceCrop", "inputs": crop},
        "save": {
            "class_type": "SaveImage",
            "inputs": {"images": ["crop", 0], "filename_prefix": f"face_choice_{next(_seeds)}"},
        },
    }
    if left_mask:
        prompt["empty"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": width, "height": height}}
        prompt["half"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": width // 2, "height": height}}
        prompt["mask"] = {
            "class_type": "MaskComposite",
            "inputs": {"destination": ["empty", 0], "source": ["half", 0], "x": 0, "y": 0, "operation": "add"},
        }
        crop["face_mask"] = ["mask", 0]
    return prompt


def test_the_face_choice_picks_among_two_faces_on_the_server(server):
    width, height, faces = TWO_FACES
    photo = server.upload_image(_png(draw_faces(width, height, faces)), "flexip_two_faces_test.png")
    largest = server.pixels(face_crop_prompt(photo, "largest"))
    left, right = (server.pixels(face_crop_prompt(photo, "by index", index)) for index in (0, 1))
    in_mask = server.pixels(face_crop_prompt(photo, "in mask", left_mask=True))
    assert (largest == right).all() and (in_mask == left).all()
    assert abs(left - right).max() > 100  # two different faces: blue eyes left, green eyes right
    with pytest.raises(ExecutionFailed, match="face_index is 2"):
        server.run(face_crop_prompt(photo, "by index", 2))
