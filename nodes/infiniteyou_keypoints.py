"""FlexIPInfiniteYouKeypoints: a pose photo -> InfiniteYou's 5-keypoint control image at the output size."""

from __future__ import annotations

from typing import Any

import torch

from flexip_model.errors import FlexIPError
from flexip_model.flux.keypoints import draw_keypoints, fit_to_size
from flexip_model.vocabulary import LARGEST_FACE

from .faces_runtime import FACE_MODELS_TYPE, check_face_analysis
from .faces_select import face_choice, face_choice_inputs, face_mask_input, infiniteyou_face
from .inputs import int_input, typed_input

NODE = "FlexIPInfiniteYouKeypoints"


class FlexIPInfiniteYouKeypoints:
    DISPLAY_NAME = "FlexIP InfiniteYou Keypoints"
    DESCRIPTION = (
        "Draws InfiniteYou's control image from a pose photo: the photo is fitted to the output size, its face "
        "found, and the face's 5 keypoints drawn on black, as InfiniteYou's pipeline does."
    )
    CATEGORY = "FlexIP/flux"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("keypoints", "fitted")
    OUTPUT_TOOLTIPS = (
        "The keypoint drawing, for Apply FlexIP InfiniteYou's keypoints input.",
        "The pose photo fitted to the output size (white borders), to check the drawing against.",
    )
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "insightface": typed_input(
                    FACE_MODELS_TYPE, "Face detection from FlexIP InsightFace Loader (antelopev2, as InfiniteYou uses)."
                ),
                "image": typed_input("IMAGE", "The pose photo: where the face should sit, and how it is turned."),
                "width": int_input(864, 64, 8192, "The output image's width: the same as the empty latent's.", step=16),
                "height": int_input(
                    1152, 64, 8192, "The output image's height: the same as the empty latent's.", step=16
                ),
            },
            "optional": {**face_choice_inputs(), **face_mask_input()},
        }

    def draw(
        self,
        insightface: Any,  # insightface's FaceAnalysis (faces_runtime.py)
        image: torch.Tensor,
        width: int,
        height: int,
        face: str = LARGEST_FACE,
        face_index: int = 0,
        face_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[0] != 1:
            raise FlexIPError(
                f"{NODE}'s image is a batch of {image.shape[0]} images but one pose is drawn: connect a single photo "
                "(pick one of a batch with Image From Batch)."
            )
        check_face_analysis(insightface, NODE)
        choice = face_choice(face, face_index, face_mask, 1, NODE)
        fitted = fit_to_size(image[0, ..., :3], width, height)
        points = torch.as_tensor(infiniteyou_face(insightface, fitted, choice, NODE).landmarks, dtype=torch.float32)
        return draw_keypoints(points, width, height).unsqueeze(0), fitted.unsqueeze(0)
