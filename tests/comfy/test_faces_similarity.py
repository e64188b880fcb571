"""FlexIPFaceSimilarity: ArcFace cosine between reference and generated faces, on the generated pack."""

from __future__ import annotations

import logging

import pytest
import torch

import flexip_model
from tools.fixtures.faces import draw_faces, face_at, face_pack, insightface_root

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning"),
]  # insightface's skimage call

OTHER_PERSON = dict(eyes=(30, 160, 30), mouth=(30, 30, 30), skin=(250, 175, 200))


def measure(flexip_pack, insightface, reference, generated):
    return flexip_pack.node_classes["FlexIPFaceSimilarity"]().measure(reference, generated, insightface)


def person(**colours):
    return draw_faces(192, 160, [face_at(90, 80, 60, **colours)])


def test_identical_images_score_one(flexip_pack, insightface):
    similarity, table = measure(flexip_pack, insightface, person(), person())
    assert similarity == [pytest.approx(1.0, abs=1e-6)]  # same pixels, same embedding; float32 round-off only
    assert "0      1.0000" in table


def test_the_same_face_moved_and_scaled_stays_close_and_another_face_scores_lower(flexip_pack, insightface):
    moved = draw_faces(192, 160, [face_at(120, 70, 80)])
    similarity, _ = measure(flexip_pack, insightface, person(), torch.cat([moved, person(**OTHER_PERSON)]))
    same, other = similarity
    # alignment undoes position and size; resampling a drawn disc leaves a few per cent
    assert same > 0.95
    assert other < same - 0.2  # the fixture's recognition net reads skin, eyes and mouth colours


def test_the_similarity_output_is_a_float_list_and_the_table_has_a_row_per_image(flexip_pack, insightface):
    node = flexip_pack.node_classes["FlexIPFaceSimilarity"]
    assert node.RETURN_TYPES == ("FLOAT", "STRING") and node.OUTPUT_IS_LIST == (True, False)
    similarity, table = measure(flexip_pack, insightface, person(), torch.cat([person(), person(**OTHER_PERSON)]))
    assert all(isinstance(value, float) for value in similarity) and len(similarity) == 2
    rows = table.splitlines()
    assert rows[1] == "image  similarity" and rows[2].startswith("0  ") and rows[3].startswith("1  ")
    assert rows[-1].startswith(f"mean   {sum(similarity) / 2:.4f} (faces in 2 of 2 images)")


def test_a_generated_image_without_a_face_scores_zero_and_says_so(flexip_pack, insightface, caplog):
    with caplog.at_level(logging.WARNING):
        similarity, table = measure(flexip_pack, insightface, person(), torch.cat([draw_faces(192, 160, []), person()]))
    assert similarity[0] == 0.0 and similarity[1] == pytest.approx(1.0, abs=1e-6)
    assert "0      no face (0.0)" in table and "(faces in 1 of 2 images)" in table
    assert "no face in generated image(s) [0]" in caplog.text


def test_a_reference_without_a_face_is_an_error_naming_it(flexip_pack, insightface):
    references = torch.cat([person(), draw_faces(192, 160, [])])
    with pytest.raises(
        flexip_model.errors.FlexIPError, match=r"no face in reference image 1 \(counting from 0, of 2\)"
    ):
        measure(flexip_pack, insightface, references, person())


def test_several_references_are_averaged_into_one_identity(flexip_pack, insightface):
    both = torch.cat([person(), person(**OTHER_PERSON)])
    (to_first, to_second), table = measure(flexip_pack, insightface, both, both)
    # each lies at the same angle from the normalised mean of two unit vectors
    assert to_first == pytest.approx(to_second, abs=1e-6) and to_first < 0.99
    assert "(2 reference image(s)" in table


def test_a_pack_without_recognition_is_an_error_before_any_detection(flexip_pack, tmp_path):
    face_pack(tmp_path / "models" / "detector_only", recognition=False)
    with insightface_root(tmp_path):
        (analysis,) = flexip_pack.node_classes["FlexIPInsightFaceLoader"]().load("detector_only", "CPU")
    with pytest.raises(flexip_model.errors.FlexIPError, match="needs a face recognition model"):
        measure(flexip_pack, analysis, person(), person())


def test_a_faceanalysis_from_instantid_or_pulid_scores_like_the_flexip_loader(flexip_pack, insightface, faceanalysis):
    generated = torch.cat([person(), person(**OTHER_PERSON)])
    theirs, _ = measure(flexip_pack, faceanalysis, person(), generated)
    ours, _ = measure(flexip_pack, insightface, person(), generated)
    assert theirs == pytest.approx(ours, abs=1e-6)  # the same ONNX models on the same pixels
