"""Which face of a reference with two (docs/faces.md, "Which face"), for the three nodes that choose one:
FlexIPFaceCrop, FlexIPEncodeSubject (its insightface input) and FlexIPInfiniteYouFace.

The reference holds a small blue-eyed face on the left and a large green-eyed one on the right, so the
largest face is not the leftmost. Each choice is checked against the same node on an image that holds only
the face it should pick: equal within a tolerance far below what the other face would change.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from flexip_model.errors import FlexIPError
from flexip_model.flux import load_identity_projection
from tests.support.assertions import assert_one_sentence
from tools.fixtures.faces import draw_faces, face_at
from tools.fixtures.infiniteyou_files import AES_SEED, SIM_SEED, identity_projection_file, ir_se50_file

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),  # insightface's skimage call
    pytest.mark.usefixtures("one_thread"),  # IR-SE50 on a busy 2-core host (as in test_infiniteyou_face)
]

WIDTH, HEIGHT = 256, 192
LEFT = face_at(60, 90, 40, eyes=(30, 30, 200))  # small, blue eyes
RIGHT = face_at(170, 100, 70, eyes=(30, 160, 30))  # large, green eyes
ARCFACE = "recognition_arcface_ir_se50.pth"
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# what the shipped workflows saved for these nodes before Encode Subject and InfiniteYou Face had a face choice
SAVED_BEFORE_THE_CHOICE = {
    "FlexIPFaceCrop": ["largest", 0, 224, 1.5, "error"],
    "FlexIPEncodeSubject": ["average"],
    "FlexIPInfiniteYouFace": [ARCFACE],
}

# (face, face_index, mask over the left face?) -> the face it picks
CHOICES = {
    "largest picks the right face": ("largest", 0, False, "right"),
    "index 0 picks the left face": ("by index", 0, False, "left"),
    "index 1 picks the right face": ("by index", 1, False, "right"),
    "a mask over the left face picks it": ("in mask", 0, True, "left"),
}


def both_faces() -> torch.Tensor:
    return draw_faces(WIDTH, HEIGHT, [LEFT, RIGHT])


def only(which: str) -> torch.Tensor:
    return draw_faces(WIDTH, HEIGHT, [LEFT if which == "left" else RIGHT])


def mask_over(box, width: int = WIDTH, height: int = HEIGHT, value: float = 1.0) -> torch.Tensor:
    """MASK [1, height, width]: `value` over `box` (image pixels of a WIDTH x HEIGHT image, scaled to the mask)."""
    mask = torch.zeros(1, height, width)
    sx, sy = width / WIDTH, height / HEIGHT
    x1, y1, x2, y2 = box
    mask[:, int(y1 * sy) : int(y2 * sy) + 1, int(x1 * sx) : int(x2 * sx) + 1] = value
    return mask


def choice_arguments(face: str, face_index: int, masked: bool) -> dict:
    return {"face": face, "face_index": face_index, "face_mask": mask_over(LEFT.box) if masked else None}


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# -- FlexIPFaceCrop ---------------------------------------------------------------------------------------


def face_crop(flexip_pack, insightface, image, face="largest", face_index=0, face_mask=None, no_face="error"):
    crops, masks, _ = flexip_pack.node_classes["FlexIPFaceCrop"]().crop(
        image, insightface, face, face_index, 224, 1.5, no_face, face_mask=face_mask
    )
    return crops, masks


@pytest.mark.parametrize("case", list(CHOICES))
def test_face_crop_crops_the_chosen_face(flexip_pack, insightface, case):
    face, face_index, masked, expected = CHOICES[case]
    crops, masks = face_crop(flexip_pack, insightface, both_faces(), **choice_arguments(face, face_index, masked))
    alone, alone_masks = face_crop(flexip_pack, insightface, only(expected))
    other, _ = face_crop(flexip_pack, insightface, only("right" if expected == "left" else "left"))
    # the other face, 40+ px away, nudges the detected box by a tiny fraction of a pixel at most, which
    # bilinear resampling turns into a crop difference of 9e-5 (seen); the other face's crop differs by 0.76
    assert gap(crops, alone) < 0.01 < 0.5 < gap(crops, other), (gap(crops, alone), gap(crops, other))
    assert gap(masks, alone_masks) < 0.01  # equal (seen)


def widgets_of(node_class) -> list[tuple[str, object, dict]]:
    """(name, type or choices, options) of each widget of `node_class`, in the order the frontend creates them
    and reads a saved workflow's widgets_values (required, then optional; sockets have no widget)."""
    inputs = node_class.INPUT_TYPES()
    declared = [*inputs["required"].items(), *inputs.get("optional", {}).items()]
    return [
        (name, kind, options)
        for name, (kind, options) in declared
        if not isinstance(kind, str) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")
    ]


@pytest.mark.usefixtures("infiniteyou")  # its arcface choices list the generated IR-SE50
@pytest.mark.parametrize("node_id", ["FlexIPFaceCrop", "FlexIPEncodeSubject", "FlexIPInfiniteYouFace"])
def test_the_shipped_workflows_widget_values_still_fit_and_leave_the_choice_at_largest(flexip_pack, node_id):
    node_class = flexip_pack.node_classes[node_id]
    widgets = widgets_of(node_class)
    saved = [
        node["widgets_values"]
        for path in sorted(WORKFLOWS.glob("*.json"))
        for node in json.loads(path.read_text())["nodes"]
        if node["type"] == node_id
    ]
    assert saved, f"no shipped workflow holds {node_id}"
    saved.append(SAVED_BEFORE_THE_CHOICE[node_id])
    for values in saved:
        # the frontend assigns saved values to the widgets by position and leaves later widgets at their default
        assert len(values) <= len(widgets), (node_id, values)
        for (name, kind, options), value in zip(widgets, values):
            if not isinstance(kind, str):
                assert value in kind or name == "arcface", (node_id, name, value)  # a file name may be missing
            elif kind == "INT":
                assert options["min"] <= value <= options["max"], (node_id, name, value)
        loaded = {name: options.get("default") for name, _, options in widgets}
        loaded.update((name, value) for (name, _, _), value in zip(widgets, values))
        assert loaded["face"] == "largest" and loaded["face_index"] == 0, (node_id, values)


def test_face_crop_takes_one_mask_per_image_of_a_batch(flexip_pack, insightface):
    masks = torch.cat([mask_over(LEFT.box), mask_over(RIGHT.box)])
    crops, _ = face_crop(flexip_pack, insightface, both_faces().repeat(2, 1, 1, 1), face="in mask", face_mask=masks)
    left, _ = face_crop(flexip_pack, insightface, only("left"))
    right, _ = face_crop(flexip_pack, insightface, only("right"))
    assert gap(crops[0], left[0]) < 0.01 and gap(crops[1], right[0]) < 0.01  # as in the test above


def test_a_mask_over_both_faces_picks_the_larger(flexip_pack, insightface):
    crops, _ = face_crop(flexip_pack, insightface, both_faces(), face="in mask", face_mask=torch.ones(1, 8, 8))
    alone, _ = face_crop(flexip_pack, insightface, only("right"))
    assert gap(crops, alone) < 0.01  # as in test_face_crop_crops_the_chosen_face


def test_a_mask_of_another_size_and_aspect_is_stretched_to_the_image(flexip_pack, insightface):
    soft = mask_over(LEFT.box, width=64, height=64, value=0.3)  # 64 x 64 over a 256 x 192 image, soft
    crops, _ = face_crop(flexip_pack, insightface, both_faces(), face="in mask", face_mask=soft)
    alone, _ = face_crop(flexip_pack, insightface, only("left"))
    assert gap(crops, alone) < 0.01  # as in test_face_crop_crops_the_chosen_face


def test_face_crop_follows_no_face_when_the_mask_covers_no_face(flexip_pack, insightface):
    corner = mask_over((0, 150, 20, 191))
    with pytest.raises(FlexIPError) as error:
        face_crop(flexip_pack, insightface, both_faces(), face="in mask", face_mask=corner)
    assert_one_sentence(
        str(error.value), "FlexIPFaceCrop's face_mask covers none of the 2 face(s) found in image 0", "no_face"
    )
    crops, _ = face_crop(
        flexip_pack, insightface, both_faces(), face="in mask", face_mask=corner, no_face="use_whole_image"
    )
    assert crops.shape == (1, 224, 224, 3)  # the centre square


# -- FlexIPEncodeSubject ----------------------------------------------------------------------------------


def encode(world, image, **optional) -> torch.Tensor:
    node = world["pack"].node_classes["FlexIPEncodeSubject"]()
    (subject,) = node.encode(world["flexip"], world["clip"], image, "average", dino=world["dino"], **optional)
    return subject.tokens["preservation"]


@pytest.fixture(scope="module")
def encoded_alone(world, insightface):
    return {which: encode(world, only(which), insightface=insightface) for which in ("left", "right")}


@pytest.mark.parametrize("case", list(CHOICES))
def test_encode_subject_encodes_the_chosen_face(world, insightface, encoded_alone, case):
    face, face_index, masked, expected = CHOICES[case]
    tokens = encode(world, both_faces(), insightface=insightface, **choice_arguments(face, face_index, masked))
    other = encoded_alone["right" if expected == "left" else "left"]
    # the same crop but for resampling noise: tokens within 4e-5 (seen); the other face moves them by 0.08
    # (the tiny encoders and std-0.2 adapter weights), 2000x as much
    near, far = gap(tokens, encoded_alone[expected]), gap(tokens, other)
    assert near < 1e-3 < 0.02 < far, (near, far)


def test_encode_subject_defaults_to_the_largest_face_and_it_ignores_face_index(world, insightface):
    default = encode(world, both_faces(), insightface=insightface)
    assert torch.equal(default, encode(world, both_faces(), insightface=insightface, face="largest", face_index=1))


def test_encode_subject_names_the_valid_indices(world, insightface):
    with pytest.raises(FlexIPError) as error:
        encode(world, both_faces(), insightface=insightface, face="by index", face_index=3)
    message = str(error.value)
    assert_one_sentence(message, "FlexIPEncodeSubject found 2 face(s) in image 0", "face_index is 3", "use 0..1")
    assert "no_face" not in message  # Encode Subject has no such input


def test_encode_subject_refuses_a_face_choice_without_insightface(world):
    with pytest.raises(FlexIPError) as error:
        encode(world, both_faces(), face="by index", face_index=1)
    assert_one_sentence(str(error.value), "FlexIPEncodeSubject's face is 'by index'", "insightface", "largest")


def test_encode_subject_refuses_a_mask_count_that_fits_neither_one_nor_each_image(world, insightface):
    masks = mask_over(LEFT.box).repeat(3, 1, 1)
    with pytest.raises(FlexIPError) as error:
        encode(world, both_faces().repeat(2, 1, 1, 1), insightface=insightface, face="in mask", face_mask=masks)
    assert_one_sentence(str(error.value), "FlexIPEncodeSubject's face_mask holds 3 masks for 2 image(s)")


# -- FlexIPInfiniteYouFace --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def infiniteyou(flexip_pack, tmp_path_factory):
    """(node, pair): one FlexIPInfiniteYouFace with the generated IR-SE50 in ComfyUI's `infiniteyou` folder,
    and a pair of the generated projections (no ControlNets: the tokens do not need them)."""
    import folder_paths

    root = tmp_path_factory.mktemp("infiniteyou_choice")
    (root / ARCFACE).symlink_to(ir_se50_file())
    saved = folder_paths.folder_names_and_paths.get("infiniteyou")
    folder_paths.folder_names_and_paths["infiniteyou"] = ([str(root)], {".pth"})
    bundles = flexip_pack.nodes.infiniteyou_bundles
    pair = bundles.InfiniteYouPair(
        sim=bundles.InfiniteYouStage("sim_stage1", None, load_identity_projection(identity_projection_file(SIM_SEED))),
        aes=bundles.InfiniteYouStage("aes_stage2", None, load_identity_projection(identity_projection_file(AES_SEED))),
    )
    module = importlib.import_module(f"{flexip_pack.nodes.__name__}.infiniteyou_face")
    yield module.FlexIPInfiniteYouFace(), pair
    if saved is None:
        folder_paths.folder_names_and_paths.pop("infiniteyou", None)
    else:
        folder_paths.folder_names_and_paths["infiniteyou"] = saved


def identity_of(infiniteyou, insightface, image, **choice):
    node, pair = infiniteyou
    identity, face = node.identity(pair, insightface, ARCFACE, image, **choice)
    return identity.sim_tokens, face


@pytest.mark.parametrize("case", list(CHOICES))
def test_infiniteyou_face_embeds_the_chosen_face(infiniteyou, insightface, case):
    face, face_index, masked, expected = CHOICES[case]
    tokens, crop = identity_of(infiniteyou, insightface, both_faces(), **choice_arguments(face, face_index, masked))
    alone, alone_crop = identity_of(infiniteyou, insightface, only(expected))
    other, _ = identity_of(infiniteyou, insightface, only("right" if expected == "left" else "left"))
    # as test_infiniteyou_face: resampling noise moves the tokens by 7e-5 on average (seen), the other
    # face by 0.09; the 8-bit aligned crops differ by at most one level (seen) on the drawn edges
    near, far = (tokens - alone).abs().mean().item(), (tokens - other).abs().mean().item()
    assert near < 0.01 < far, (near, far)
    assert gap(crop, alone_crop) <= 2 / 255 + 1e-6


def test_infiniteyou_face_declares_the_choice_as_optional_inputs_with_tooltips(infiniteyou):
    node, _ = infiniteyou
    inputs = type(node).INPUT_TYPES()
    assert list(inputs["required"]) == ["pair", "insightface", "arcface", "image"]  # saved workflows: [arcface]
    optional = inputs["optional"]
    assert list(optional) == ["face", "face_index", "face_mask"] and optional["face"][1]["default"] == "largest"
    assert optional["face_index"][1]["default"] == 0 and all(spec[1]["tooltip"] for spec in optional.values())


@pytest.mark.parametrize(
    ("choice", "mentions"),
    [
        (
            {"face": "by index", "face_index": 3},
            ("FlexIPInfiniteYouFace found 2 face(s) in its image but face_index is 3", "use 0..1"),
        ),
        ({"face": "in mask"}, ("FlexIPInfiniteYouFace's face is 'in mask' but no face_mask is connected",)),
        ({"face": "in mask", "face_mask": torch.zeros(1, HEIGHT, WIDTH)}, ("face_mask is empty", "paint over")),
        (
            {"face": "in mask", "face_mask": mask_over((0, 150, 20, 191))},
            ("face_mask covers none of the 2 face(s) found in its image",),
        ),
        (
            {"face": "in mask", "face_mask": mask_over(LEFT.box).repeat(2, 1, 1)},
            ("face_mask holds 2 masks for 1 image(s)",),
        ),
        ({"face": "in mask", "face_mask": torch.ones(1, 1, HEIGHT, WIDTH)}, ("face_mask has shape [1, 1, 192, 256]",)),
    ],
    ids=["index out of range", "no mask", "empty mask", "mask over no face", "mask count", "mask shape"],
)
def test_infiniteyou_face_refuses_an_impossible_choice_in_one_sentence(infiniteyou, insightface, choice, mentions):
    with pytest.raises(FlexIPError) as error:
        identity_of(infiniteyou, insightface, both_faces(), **choice)
    assert_one_sentence(str(error.value), *mentions)
