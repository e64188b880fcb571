"""FlexIPInfiniteYouFace on drawn faces: the generated InsightFace pack, random IR-SE50 and projection files.

The pair's ControlNets are not needed for the tokens: the stages carry `control=None` here.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from flexip_model.errors import FlexIPError
from flexip_model.flux import arcface_input, identity_tokens, load_identity_projection, load_ir_se50
from tests.support.assertions import assert_one_sentence
from tools.fixtures.faces import draw_faces, face_at
from tools.fixtures.infiniteyou_files import AES_SEED, SIM_SEED, identity_projection_file, ir_se50_file

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),  # insightface's skimage call
    pytest.mark.usefixtures("one_thread"),  # IR-SE50 ran 10x slower with 2 spinning threads on a busy 2-core host
]

ARCFACE = "recognition_arcface_ir_se50.pth"
BLUE_EYES, GREEN_EYES = (30, 30, 200), (30, 160, 30)


@pytest.fixture(scope="module")
def face_module(flexip_pack):
    return importlib.import_module(f"{flexip_pack.nodes.__name__}.infiniteyou_face")


@pytest.fixture(scope="module")
def infiniteyou_folder(tmp_path_factory):
    """In-process ComfyUI's `infiniteyou` folder holding the generated IR-SE50 file, for this module."""
    import folder_paths

    root = tmp_path_factory.mktemp("infiniteyou")
    (root / ARCFACE).symlink_to(ir_se50_file())
    saved = folder_paths.folder_names_and_paths.get("infiniteyou")
    folder_paths.folder_names_and_paths["infiniteyou"] = ([str(root)], {".safetensors", ".bin", ".pth"})
    yield root
    if saved is None:
        folder_paths.folder_names_and_paths.pop("infiniteyou", None)
    else:
        folder_paths.folder_names_and_paths["infiniteyou"] = saved


@pytest.fixture(scope="module")
def pair(flexip_pack):
    bundles = flexip_pack.nodes.infiniteyou_bundles
    return bundles.InfiniteYouPair(
        sim=bundles.InfiniteYouStage("sim_stage1", None, load_identity_projection(identity_projection_file(SIM_SEED))),
        aes=bundles.InfiniteYouStage("aes_stage2", None, load_identity_projection(identity_projection_file(AES_SEED))),
    )


@pytest.fixture(scope="module")
def node(face_module, infiniteyou_folder):
    return face_module.FlexIPInfiniteYouFace()  # one instance: its ArcFace is loaded once for the module


def one_face(eyes=BLUE_EYES):
    return draw_faces(256, 192, [face_at(120, 100, 60, eyes=eyes)])


def eye_colour(face):
    """The colour at ArcFace's left-eye point of the 112 px aligned face [1, 112, 112, 3]."""
    return np.array((face[0, 52, 38] * 255).round().int().tolist())


def test_the_node_declares_its_inputs_outputs_and_tooltips(face_module, infiniteyou_folder):
    node_class = face_module.FlexIPInfiniteYouFace
    inputs = node_class.INPUT_TYPES()["required"]
    assert list(inputs) == ["pair", "insightface", "arcface", "image"]
    assert inputs["pair"][0] == "INFINITEYOU_PAIR" and inputs["insightface"][0] == "INSIGHTFACE,FACEANALYSIS"
    assert inputs["arcface"][0] == [ARCFACE] and inputs["arcface"][1]["default"] == ARCFACE
    assert all(options["tooltip"] for _, options in inputs.values())
    assert node_class.RETURN_TYPES == ("INFINITEYOU_IDENTITY", "IMAGE") and len(node_class.OUTPUT_TOOLTIPS) == 2
    assert node_class.CATEGORY == "FlexIP/flux" and node_class.DISPLAY_NAME == "FlexIP InfiniteYou Face"


def test_tokens_of_both_stages_equal_the_pieces_run_by_hand(flexip_pack, node, pair, insightface):
    image = one_face()
    identity, face = node.identity(pair, insightface, ARCFACE, image)
    assert identity.pair is pair
    assert identity.sim_tokens.shape == identity.aes_tokens.shape == (1, 8, 4096)
    assert identity.sim_tokens.dtype == torch.float32 and face.shape == (1, 112, 112, 3)
    # by hand: detect at InfiniteYou's sizes, the largest face, align, IR-SE50, each projection
    faces, size = flexip_pack.nodes.faces_runtime.detect_faces(insightface, image[0], (640, 320, 160))
    assert size == 640 and len(faces) == 1
    align = flexip_pack.nodes.faces_align
    crop = align.warp(image[0], align.face_crop_matrix(faces[0].landmarks, 112), 112).clamp(0, 1)
    crop = (crop * 255).round() / 255
    torch.testing.assert_close(face[0], crop, rtol=0, atol=0)
    with torch.no_grad():
        embedding = load_ir_se50(ir_se50_file())(arcface_input(crop[None]))
        sim = pair.sim.projection(embedding[:, None])
        aes = pair.aes.projection(embedding[:, None])
    # the same float32 operations on the same inputs: equal bit for bit
    assert torch.equal(identity.sim_tokens, sim) and torch.equal(identity.aes_tokens, aes)
    assert torch.equal(identity.sim_tokens, identity_tokens(pair.sim.projection, embedding))


def test_the_two_stages_give_different_tokens(node, pair, insightface):
    identity, _ = node.identity(pair, insightface, ARCFACE, one_face())
    assert torch.isfinite(identity.sim_tokens).all() and torch.isfinite(identity.aes_tokens).all()
    assert (identity.sim_tokens - identity.aes_tokens).abs().max() > 0.5  # tokens of std ~1, other weights


def test_our_alignment_matches_insightfaces_norm_crop(flexip_pack, node, pair, insightface):
    from insightface.utils.face_align import norm_crop

    image = draw_faces(256, 192, [face_at(131.3, 97.6, 74, eyes=BLUE_EYES)])
    identity, face = node.identity(pair, insightface, ARCFACE, image)
    faces, _ = flexip_pack.nodes.faces_runtime.detect_faces(insightface, image[0], (640, 320, 160))
    bgr = flexip_pack.nodes.faces_runtime.bgr_pixels(image[0])
    theirs = torch.from_numpy(norm_crop(bgr, faces[0].landmarks.astype(np.float32), 112)[..., ::-1] / 255.0)
    difference = (face[0].double() - theirs).abs()
    # the same matrix, both bilinear and rounded to 8 bits; OpenCV quantises sample positions to 1/32 px,
    # which moves a pixel on a 200-level drawn edge by at most ~6 levels (1 level at a few pixels seen)
    assert difference.max() <= 8 / 255 and difference.mean() < 1e-3, (difference.max(), difference.mean())
    with torch.no_grad():
        reference = load_ir_se50(ir_se50_file())(arcface_input(theirs[None].float()))
    # so the tokens barely move (6e-6 seen), far less than another face moves them (0.09, next test)
    assert (identity.sim_tokens - identity_tokens(pair.sim.projection, reference)).abs().mean() < 1e-3


def test_the_largest_of_two_faces_is_used(node, pair, insightface):
    image = draw_faces(256, 192, [face_at(60, 90, 40, eyes=BLUE_EYES), face_at(170, 100, 70, eyes=GREEN_EYES)])
    identity, face = node.identity(pair, insightface, ARCFACE, image)
    assert np.abs(eye_colour(face) - GREEN_EYES).max() <= 40  # bilinear edges blend a little
    large, _ = node.identity(pair, insightface, ARCFACE, draw_faces(256, 192, [face_at(170, 100, 70, eyes=GREEN_EYES)]))
    small, _ = node.identity(pair, insightface, ARCFACE, draw_faces(256, 192, [face_at(60, 90, 40, eyes=BLUE_EYES)]))
    # the small face far away leaves the large face's crop unchanged but for resampling noise (7e-5 seen);
    # the small face itself gives other tokens (0.09 seen; random IR-SE50 weights tell drawn faces apart weakly)
    to_large = (identity.sim_tokens - large.sim_tokens).abs().mean()
    assert to_large < 0.01 < (identity.sim_tokens - small.sim_tokens).abs().mean()


def test_a_face_filling_the_photo_is_found_at_160_px_as_infiniteyou_finds_it(flexip_pack, node, pair, insightface):
    close_up = draw_faces(256, 256, [face_at(128, 128, 236, eyes=GREEN_EYES)])
    runtime = flexip_pack.nodes.faces_runtime
    assert runtime.detect_faces(insightface, close_up[0])[1] is None  # missed at the other face nodes' sizes
    assert runtime.detect_faces(insightface, close_up[0], (640, 320, 160))[1] == 160
    _, face = node.identity(pair, insightface, ARCFACE, close_up)
    assert np.abs(eye_colour(face) - GREEN_EYES).max() <= 40


def test_an_image_without_a_face_is_refused_in_one_sentence(node, pair, insightface):
    with pytest.raises(FlexIPError) as error:
        node.identity(pair, insightface, ARCFACE, draw_faces(256, 192, []))
    assert_one_sentence(str(error.value), "FlexIPInfiniteYouFace", "no face", "640, 320, 160", "clearly visible")


def test_a_batch_of_several_images_is_refused(node, pair, insightface):
    with pytest.raises(FlexIPError) as error:
        node.identity(pair, insightface, ARCFACE, one_face().repeat(2, 1, 1, 1))
    assert_one_sentence(str(error.value), "FlexIPInfiniteYouFace", "batch of 2", "Image From Batch")


def test_the_arcface_file_is_loaded_once_per_node(face_module, node, pair, insightface, monkeypatch):
    node.identity(pair, insightface, ARCFACE, one_face())
    loads = []
    monkeypatch.setattr(face_module, "load_ir_se50", lambda path: loads.append(path))
    node.identity(pair, insightface, ARCFACE, one_face(GREEN_EYES))
    assert loads == []


def test_an_arcface_name_outside_the_folder_is_refused(node, pair, insightface):
    with pytest.raises(FlexIPError) as error:
        node.identity(pair, insightface, "../recognition_arcface_ir_se50.pth", one_face())
    assert_one_sentence(str(error.value), "FlexIPInfiniteYouFace's arcface", "'..'")
