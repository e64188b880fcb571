"""The face nodes' insightface input accepts a link from InstantID's and PuLID's FACEANALYSIS loaders.

Checked with ComfyUI's own prompt validation (execution.validate_inputs), in process: two
test-only source nodes stand in for a FACEANALYSIS loader and an image, registered for the
test in ComfyUI's node table. (The frontend 1.32.9 accepts the same comma union: its
LiteGraph isValidConnection splits both types on "," and links on any common part.)
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.comfy

FACE_NODES = {
    "FlexIPFaceCrop": {"face": "largest", "face_index": 0, "crop_size": 224, "crop_scale": 1.5, "no_face": "error"},
    "FlexIPFaceSimilarity": {"reference": ["image", 0], "generated": ["image", 0]},
    "FlexIPEncodeSubject": {"flexip": ["flexip", 0], "clip_vision": ["clip_vision", 0], "batch_mode": "average"},
}


def _source(*types: str) -> type:
    """A test-only node with no inputs whose outputs have `types`."""
    return type(
        "Source",
        (),
        {
            "RETURN_TYPES": types,
            "FUNCTION": "run",
            "CATEGORY": "testing",
            "INPUT_TYPES": classmethod(lambda cls: {"required": {}}),
        },
    )


@pytest.fixture
def node_table(flexip_pack, monkeypatch):
    import nodes

    for name in FACE_NODES:
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, name, flexip_pack.node_classes[name])
    for name, output in (
        ("FaceAnalysisLoader", "FACEANALYSIS"),
        ("InsightFaceLoader", "INSIGHTFACE"),
        ("OtherModelLoader", "BBOX_DETECTOR"),
        ("ImageSource", "IMAGE"),
        ("FlexIPSource", "FLEXIP"),
        ("ClipVisionSource", "CLIP_VISION"),
    ):
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, name, _source(output))


def validate(node: str, face_loader: str) -> tuple[bool, list]:
    """ComfyUI's validation of `node` with its insightface input linked to `face_loader`'s output."""
    import execution

    prompt = {
        "face": {"class_type": face_loader, "inputs": {}},
        "image": {"class_type": "ImageSource", "inputs": {}},
        "flexip": {"class_type": "FlexIPSource", "inputs": {}},
        "clip_vision": {"class_type": "ClipVisionSource", "inputs": {}},
        "node": {"class_type": node, "inputs": {"image": ["image", 0], "insightface": ["face", 0], **FACE_NODES[node]}},
    }
    if node == "FlexIPFaceSimilarity":
        del prompt["node"]["inputs"]["image"]
    valid, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, "node", {}))
    return valid, errors


@pytest.mark.parametrize("node", list(FACE_NODES))
@pytest.mark.parametrize("loader", ["FaceAnalysisLoader", "InsightFaceLoader"])
def test_face_nodes_accept_a_faceanalysis_or_insightface_link(node_table, node, loader):
    valid, errors = validate(node, loader)
    assert valid and errors == [], errors


@pytest.mark.parametrize("node", list(FACE_NODES))
def test_face_nodes_reject_a_link_of_another_type(node_table, node):
    valid, errors = validate(node, "OtherModelLoader")
    assert not valid and [error["type"] for error in errors] == ["return_type_mismatch"], errors
    assert errors[0]["extra_info"]["input_name"] == "insightface"
