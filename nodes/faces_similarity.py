"""FlexIPFaceSimilarity: how well generated images keep the reference identity (ArcFace cosine)."""

from __future__ import annotations

import logging
from typing import Any

import comfy.utils
import numpy as np
import torch

from flexip_model.errors import FlexIPError

from .faces_runtime import FACE_MODELS_TYPE, check_face_analysis, detect_faces, face_embedding, recognition_model
from .inputs import typed_input
from .progress import with_progress

log = logging.getLogger(__name__)
NODE = "FlexIPFaceSimilarity"


def largest_face_embedding(model: Any, analysis: Any, image: torch.Tensor) -> np.ndarray | None:
    """Unit ArcFace embedding [D] of the largest face in IMAGE [H, W, C]; None when there is no face."""
    faces, _ = detect_faces(analysis, image)
    if not faces:
        return None
    return face_embedding(model, image, max(faces, key=lambda face: (face.area, face.score)))


def identity_similarities(analysis: Any, reference: torch.Tensor, generated: torch.Tensor) -> list[float | None]:
    """Cosine between the mean reference identity and the largest face of each generated image (None: no face)."""
    check_face_analysis(analysis, NODE)
    model = recognition_model(analysis, NODE)
    if reference.shape[0] == 0 or generated.shape[0] == 0:
        raise FlexIPError(f"{NODE} got an empty image batch: connect reference and generated images.")
    bar = comfy.utils.ProgressBar(reference.shape[0] + generated.shape[0])
    identities = []
    for index, image in enumerate(with_progress(reference, bar)):
        embedding = largest_face_embedding(model, analysis, image)
        if embedding is None:
            raise FlexIPError(
                f"{NODE} found no face in reference image {index} (counting from 0, of {len(reference)}): use a "
                "reference photo with a clearly visible face."
            )
        identities.append(embedding)
    identity = np.mean(identities, axis=0)
    identity /= max(np.linalg.norm(identity), 1e-12)
    similarities = []
    for image in with_progress(generated, bar):
        embedding = largest_face_embedding(model, analysis, image)
        similarities.append(None if embedding is None else float(np.dot(identity, embedding)))
    return similarities


def similarity_table(similarities: list[float | None], reference_count: int) -> str:
    """A plain-text table: one row per generated image, then the mean over the images with a face."""
    lines = [
        f"ArcFace cosine similarity to the reference identity ({reference_count} reference image(s); "
        "1 = same face, around 0 = unrelated)",
        "image  similarity",
    ]
    for index, value in enumerate(similarities):
        lines.append(f"{index:<5}  {'no face (0.0)' if value is None else f'{value:.4f}'}")
    found = [value for value in similarities if value is not None]
    mean = f"{np.mean(found):.4f}" if found else "-"
    lines.append(f"mean   {mean} (faces in {len(found)} of {len(similarities)} images)")
    return "\n".join(lines)


class FlexIPFaceSimilarity:
    DISPLAY_NAME = "FlexIP Face Similarity (ArcFace)"
    DESCRIPTION = (
        "Measures identity preservation: the ArcFace cosine similarity between the reference face and "
        "the largest face in each generated image."
    )
    CATEGORY = "FlexIP/faces"
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("similarity", "table")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = (
        "One cosine similarity per generated image, as a list (0.0 where no face was found).",
        "The similarities as a text table with their mean; connect to Preview as Text.",
    )
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "reference": typed_input(
                    "IMAGE", "The reference photo(s) of the person; several are averaged into one identity."
                ),
                "generated": typed_input("IMAGE", "The generated images to score, e.g. from VAE Decode."),
                "insightface": typed_input(
                    FACE_MODELS_TYPE,
                    "Face models from FlexIP InsightFace Loader, or InstantID's or PuLID's "
                    "(the pack must include a recognition model).",
                ),
            }
        }

    def measure(self, reference: torch.Tensor, generated: torch.Tensor, insightface: Any) -> tuple[list[float], str]:
        similarities = identity_similarities(insightface, reference, generated)
        missing = [index for index, value in enumerate(similarities) if value is None]
        if missing:
            log.warning("%s: no face in generated image(s) %s; their similarity is reported as 0.0", NODE, missing)
        table = similarity_table(similarities, reference.shape[0])
        return [0.0 if value is None else value for value in similarities], table
