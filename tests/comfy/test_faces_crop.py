"""FlexIPFaceCrop and FlexIPEncodeSubject's insightface input, on drawn faces and the generated pack."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import flexip_model
from tools.fixtures.faces import draw_faces, face_at
from tools.fixtures.tiny import tiny_clip_vision, tiny_dino, tiny_unet_patcher

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]  # insightface's skimage call

BLUE_EYES, GREEN_EYES = (30, 30, 200), (30, 160, 30)


@pytest.fixture(scope="module")
def crop_module(flexip_pack):
    return flexip_pack.nodes.faces_select


def crop(flexip_pack, insightface, image, face="largest", face_index=0, crop_size=112, crop_scale=1.0, no_face="error"):
    return flexip_pack.node_classes["FlexIPFaceCrop"]().crop(
        image, insightface, face, face_index, crop_size, crop_scale, no_face
    )


def two_faces():
    """A small blue-eyed face on the left, a large green-eyed one on the right; IMAGE [1, 192, 256, 3]."""
    return draw_faces(256, 192, [face_at(60, 90, 40, eyes=BLUE_EYES), face_at(170, 100, 70, eyes=GREEN_EYES)])


def eye_colour(crops, index=0):
    """The crop's colour at ArcFace's left-eye point (crop_size 112, crop_scale 1: the template itself)."""
    return tuple((crops[index, 52, 38] * 255).round().int().tolist())


def assert_colour(actual, expected, tolerance=40):
    # bilinear resampling blends the drawn edge a little; a wrong face is off by > 100 in some channel
    assert max(abs(a - e) for a, e in zip(actual, expected)) <= tolerance, (actual, expected)


def test_the_generated_detector_finds_the_face_where_it_was_drawn(flexip_pack, insightface):
    drawn = face_at(100, 90, 60)
    faces, size = flexip_pack.nodes.faces_runtime.detect_faces(insightface, draw_faces(256, 192, [drawn])[0])
    assert size == 640 and len(faces) == 1
    # the fixture detector reads the face size from the blob's area, which the eyes and mouth
    # make ~4 % smaller: 3 px on a 60 px face
    np.testing.assert_allclose(faces[0].box, drawn.box, atol=3)
    np.testing.assert_allclose(faces[0].landmarks, drawn.landmarks.numpy(), atol=3)


def test_crops_put_the_eyes_on_arcfaces_template(flexip_pack, insightface):
    crops, masks, preview = crop(
        flexip_pack, insightface, draw_faces(256, 192, [face_at(120, 100, 60, eyes=BLUE_EYES)])
    )
    assert crops.shape == (1, 112, 112, 3) and masks.shape == (1, 112, 112) and preview.shape == (1, 192, 256, 3)
    assert_colour(eye_colour(crops), BLUE_EYES)
    right_eye = tuple((crops[0, 51, 74] * 255).round().int().tolist())
    assert_colour(right_eye, BLUE_EYES)


def test_the_largest_face_is_cropped_by_default(flexip_pack, insightface):
    crops, _, _ = crop(flexip_pack, insightface, two_faces())
    assert_colour(eye_colour(crops), GREEN_EYES)


def test_face_index_counts_faces_left_to_right(flexip_pack, insightface):
    left, _, _ = crop(flexip_pack, insightface, two_faces(), face="by index", face_index=0)
    right, _, _ = crop(flexip_pack, insightface, two_faces(), face="by index", face_index=1)
    assert_colour(eye_colour(left), BLUE_EYES)
    assert_colour(eye_colour(right), GREEN_EYES)


def test_a_face_index_past_the_last_face_follows_the_no_face_policy(flexip_pack, insightface):
    error = flexip_model.errors.FlexIPError
    with pytest.raises(error, match=r"found 2 face\(s\) in image 0 .* but face_index is 2"):
        crop(flexip_pack, insightface, two_faces(), face="by index", face_index=2)
    crops, _, _ = crop(flexip_pack, insightface, two_faces(), face="by index", face_index=2, no_face="use_whole_image")
    assert crops.shape[0] == 1


def test_a_close_up_missed_at_640_px_is_found_at_a_smaller_detection_size(flexip_pack, insightface):
    runtime = flexip_pack.nodes.faces_runtime
    close_up = draw_faces(256, 256, [face_at(128, 128, 200, eyes=BLUE_EYES)])
    boxes, _ = insightface.det_model.detect(runtime.bgr_pixels(close_up[0]), input_size=(640, 640))
    assert len(boxes) == 0  # the face would be 500 px at 640: beyond the detector's largest anchor
    faces, size = runtime.detect_faces(insightface, close_up[0])
    assert size == 256 and len(faces) == 1
    crops, _, _ = crop(flexip_pack, insightface, close_up)
    assert_colour(eye_colour(crops), BLUE_EYES)


def batch_with_a_blank_image():
    face = draw_faces(256, 192, [face_at(120, 100, 60, eyes=BLUE_EYES)])
    return torch.cat([face, draw_faces(256, 192, []), face])


def test_no_face_error_names_the_image_index(flexip_pack, insightface):
    error = flexip_model.errors.FlexIPError
    with pytest.raises(error, match=r"no face in image 1 \(counting from 0, of 3\) at detection sizes 640, 512"):
        crop(flexip_pack, insightface, batch_with_a_blank_image())


def test_no_face_use_whole_image_keeps_every_image(flexip_pack, insightface):
    crops, masks, _ = crop(flexip_pack, insightface, batch_with_a_blank_image(), no_face="use_whole_image")
    assert crops.shape[0] == masks.shape[0] == 3
    background = torch.tensor([70, 110, 150]) / 255
    torch.testing.assert_close(crops[1], background.expand_as(crops[1]), atol=1e-3, rtol=0)  # the centre square
    assert masks[1].min().item() == 1.0
    assert_colour(eye_colour(crops, 2), BLUE_EYES)


def test_no_face_skip_image_leaves_it_out(flexip_pack, insightface):
    crops, masks, preview = crop(flexip_pack, insightface, batch_with_a_blank_image(), no_face="skip_image")
    assert crops.shape[0] == masks.shape[0] == 2
    assert preview.shape[0] == 3  # the preview still shows every input image
    torch.testing.assert_close(crops[0], crops[1])


def test_skip_image_with_no_face_anywhere_is_an_error(flexip_pack, insightface):
    with pytest.raises(flexip_model.errors.FlexIPError, match="no face in any of the 2 images"):
        crop(flexip_pack, insightface, draw_faces(64, 64, []).repeat(2, 1, 1, 1), no_face="skip_image")


def test_the_mask_covers_the_face_and_not_the_background(flexip_pack, insightface):
    crops, masks, _ = crop(flexip_pack, insightface, two_faces(), crop_size=128, crop_scale=2.0)
    mask = masks[0]
    assert mask[64, 64] == 1 and mask[2, 2] == 0 and mask[125, 125] == 0
    # at crop_scale 2 the face box spans about half the crop: a disc of ~pi/16 of it
    assert mask.mean().item() == pytest.approx(np.pi / 16, rel=0.25)
    skin = crops[0][mask > 0.5].mean(dim=0) * 255
    assert_colour(tuple(skin.round().int().tolist()), (235, 190, 160), tolerance=25)


def test_the_preview_boxes_every_face_and_marks_the_chosen_one(flexip_pack, insightface, crop_module):
    preview_module = flexip_pack.nodes.faces_preview
    image = two_faces()
    _, _, preview = crop(flexip_pack, insightface, image)
    faces, _ = flexip_pack.nodes.faces_runtime.detect_faces(insightface, image[0])
    faces.sort(key=lambda face: face.box[0])

    def colours_near(x, y):
        patch = (preview[0, int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] * 255).round().int().reshape(-1, 3)
        return {tuple(row) for row in patch.tolist()}

    small, large = faces
    assert preview_module.CHOSEN in colours_near((large.box[0] + large.box[2]) / 2, large.box[1])
    assert preview_module.OTHER in colours_near((small.box[0] + small.box[2]) / 2, small.box[1])
    assert preview_module.LANDMARK in colours_near(*large.landmarks[2])
    untouched = (slice(0, 20), slice(0, 20))  # far from both faces
    torch.testing.assert_close(preview[0][untouched], image[0][untouched], atol=1 / 255, rtol=0)


@pytest.fixture(scope="module")
def encoder_parts(flexip_pack):
    """A tiny FlexIP adapter with the tiny CLIP and DINOv2 encoders (as in test_flexip_inputs)."""
    fm = flexip_model
    layers = flexip_pack.nodes.layers.layer_specs_of(tiny_unet_patcher().model.diffusion_model)
    config = dataclasses.replace(fm.config_for("sd15", tiny=True), layers=layers, clip_embed_dim=64, dino_dim=64)
    torch.manual_seed(0)
    flexip = flexip_pack.nodes.bundles.LoadedFlexIP.wrap("tiny_flexip.safetensors", fm.FlexIPAdapter(config))
    return flexip, tiny_clip_vision(), tiny_dino()


def encode(flexip_pack, parts, image, **optional):
    flexip, clip, dino = parts
    (subject,) = flexip_pack.node_classes["FlexIPEncodeSubject"]().encode(
        flexip, clip, image, "average", dino=dino, **optional
    )
    return subject.tokens["preservation"]


def test_encode_subject_takes_the_crops_and_masks_directly(flexip_pack, insightface, encoder_parts):
    crops, masks, _ = crop(flexip_pack, insightface, two_faces(), crop_size=224, crop_scale=1.5)
    plain, masked = encode(flexip_pack, encoder_parts, crops), encode(flexip_pack, encoder_parts, crops, mask=masks)
    assert plain.shape == masked.shape
    assert (plain[0] - masked[0]).abs().max() > 1e-3  # the mask blacked out hair and background


def test_encode_subject_with_insightface_encodes_the_default_crop(flexip_pack, insightface, encoder_parts, crop_module):
    image = two_faces()
    inside = encode(flexip_pack, encoder_parts, image, insightface=insightface)
    outside = encode(flexip_pack, encoder_parts, crop_module.crop_faces(insightface, image).crops)
    torch.testing.assert_close(inside, outside)  # the same crop through the same modules: bit-identical


def test_encode_subject_crops_a_subject_mask_like_the_image(flexip_pack, insightface, crop_module):
    image = two_faces()
    mask = torch.ones(1, 192, 256)
    mask[:, :, :170] = 0  # everything left of the large face's centre
    crops, cropped_mask = crop_module.crop_for_encoding(insightface, image, mask)
    assert crops.shape[:3] == cropped_mask.shape
    half = crop_module.DEFAULT_CROP_SIZE // 2
    # bilinear resampling of a 0/1 mask: exact 0 and 1 away from the edge, up to float round-off
    assert (
        cropped_mask[0, :, : half - 4].max() < 1e-6
        and cropped_mask[0, half // 2 : -half // 2, half + 4 :].min() > 1 - 1e-6
    )


def test_encode_subject_with_insightface_names_the_reference_without_a_face(flexip_pack, insightface, encoder_parts):
    with pytest.raises(
        flexip_model.errors.FlexIPError, match=r"FlexIPEncodeSubject found no face in image 1 \(counting from 0, of 3\)"
    ):
        encode(flexip_pack, encoder_parts, batch_with_a_blank_image(), insightface=insightface)


def test_a_faceanalysis_from_instantid_or_pulid_crops_like_the_flexip_loader(flexip_pack, insightface, faceanalysis):
    image = two_faces()
    theirs, ours = crop(flexip_pack, faceanalysis, image), crop(flexip_pack, insightface, image)
    for got, expected in zip(theirs, ours):
        torch.testing.assert_close(got, expected)  # the same ONNX models on the same pixels


def test_an_insightface_input_that_is_no_face_analysis_is_a_readable_error(flexip_pack):
    error = flexip_model.errors.FlexIPError
    with pytest.raises(
        error,
        match=r"FlexIPFaceCrop's insightface input is not an InsightFace FaceAnalysis .*\(got "
        r"dict\): connect FlexIP InsightFace Loader",
    ):
        crop(flexip_pack, {"detection": None}, two_faces())
