"""FlexIPFaceCrop: image batch -> aligned face crops and face masks for the encoders, and a preview."""

from __future__ import annotations

from typing import Any

import torch

from .faces_preview import draw_preview
from .faces_runtime import FACE_MODELS_TYPE
from .faces_select import (
    DEFAULT_CROP_SCALE,
    DEFAULT_CROP_SIZE,
    NO_FACE_POLICIES,
    crop_faces,
    face_choice_inputs,
    face_mask_input,
)
from .inputs import choice_input, float_input, int_input, typed_input


class FlexIPFaceCrop:
    DISPLAY_NAME = "FlexIP Face Crop"
    DESCRIPTION = (
        "Finds a face in each image with InsightFace and aligns it (eyes, nose and mouth on ArcFace's "
        "template) into square crops for FlexIP Encode Subject, with a mask of the face and a preview "
        "of what was found."
    )
    CATEGORY = "FlexIP/faces"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("crops", "masks", "preview")
    OUTPUT_TOOLTIPS = (
        "One aligned face crop per image (skipped images left out); connect to FlexIP Encode Subject's image.",
        "The face (an ellipse in the detected box) in each crop; optional, connect to FlexIP Encode Subject's mask "
        "to black out hair and background.",
        "The input images with every detected face boxed and numbered (green: the face that was cropped) and the "
        "5 landmarks as dots.",
    )
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": typed_input("IMAGE", "The photo(s) with the face; each image of a batch gets one crop."),
                "insightface": typed_input(
                    FACE_MODELS_TYPE,
                    "Face models from FlexIP InsightFace Loader, or the face analysis loader of InstantID or PuLID.",
                ),
                **face_choice_inputs(),
                "crop_size": int_input(
                    DEFAULT_CROP_SIZE, 112, 1024, "Side of the square crops in pixels; the encoders read 224.", step=16
                ),
                "crop_scale": float_input(
                    DEFAULT_CROP_SCALE,
                    0.5,
                    4.0,
                    "How much around the face: 1.0 is ArcFace's tight crop (eyebrows to chin), 1.5 the whole head, "
                    "larger values add shoulders and background.",
                    step=0.05,
                ),
                "no_face": choice_input(
                    NO_FACE_POLICIES,
                    "When an image has no face (after retrying detection at smaller sizes): stop with an error naming "
                    "the image, use the whole image (centre square) instead, or leave the image out.",
                    default="error",
                ),
            },
            "optional": face_mask_input(),
        }

    def crop(
        self,
        image: torch.Tensor,
        insightface: Any,  # insightface's FaceAnalysis (faces_runtime.py)
        face: str,
        face_index: int,
        crop_size: int,
        crop_scale: float,
        no_face: str,
        face_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        faces = crop_faces(insightface, image, face, face_index, crop_size, crop_scale, no_face, face_mask=face_mask)
        return faces.crops, faces.masks, draw_preview(image, faces.faces, faces.chosen)
