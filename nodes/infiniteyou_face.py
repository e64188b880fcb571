"""FlexIPInfiniteYouFace: a face photo -> both InfiniteYou stages' identity tokens (docs/design.md §8).

As InfiniteYou's reference pipeline: InsightFace detection at 640, then 320, then 160 px (the first
size that finds a face), the largest face (or the one `face` chooses: docs/faces.md, "Which face"), aligned
on ArcFace's 5-point template at 112 px, BGR in [-1, 1], facexlib's ArcFace IR-SE50 -> a 512-d identity,
then each stage's projection -> 8 x 4096.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import folder_paths
import torch

from flexip_model.errors import FlexIPError
from flexip_model.flux import ArcFaceIRSE50, arcface_input, identity_tokens, load_ir_se50
from flexip_model.flux.arcface_ir_se50 import FACE_SIZE, IR_SE50_FILE
from flexip_model.vocabulary import LARGEST_FACE

from .faces_align import face_crop_matrix, warp
from .faces_runtime import FACE_MODELS_TYPE, check_face_analysis
from .faces_select import face_choice, face_choice_inputs, face_mask_input, infiniteyou_face
from .folders import model_file
from .infiniteyou_bundles import IDENTITY_TYPE, PAIR_TYPE, InfiniteYouIdentity, InfiniteYouPair
from .inputs import choice_input, typed_input

log = logging.getLogger(__name__)
NODE = "FlexIPInfiniteYouFace"


class FlexIPInfiniteYouFace:
    DISPLAY_NAME = "FlexIP InfiniteYou Face"
    DESCRIPTION = (
        "Turns the face in a photo into InfiniteYou's identity tokens for both stages, as InfiniteYou does: "
        "InsightFace finds the largest face (or the one chosen by face), it is aligned to 112 px, facexlib's "
        "ArcFace IR-SE50 embeds it and each stage's projection makes 8 tokens. Needs the optional packages "
        "insightface and onnxruntime."
    )
    CATEGORY = "FlexIP/flux"
    RETURN_TYPES = (IDENTITY_TYPE, "IMAGE")
    RETURN_NAMES = ("identity", "face")
    OUTPUT_TOOLTIPS = (
        "The face as identity tokens of both stages (sim_stage1 and aes_stage2), for the InfiniteYou apply node.",
        "The aligned 112 px face that was embedded (connect a Preview Image to check which face was used).",
    )
    FUNCTION = "identity"

    def __init__(self) -> None:
        # this node's ArcFace, kept between runs: (file, size, modification time) -> the loaded module
        self._arcface: tuple[tuple[str, int, int], ArcFaceIRSE50] | None = None

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        files = folder_paths.get_filename_list("infiniteyou")
        default = IR_SE50_FILE if IR_SE50_FILE in files else None
        return {
            "required": {
                "pair": typed_input(PAIR_TYPE, "Both InfiniteYou stages, from the InfiniteYou loader."),
                "insightface": typed_input(
                    FACE_MODELS_TYPE,
                    "Face detection from FlexIP InsightFace Loader (antelopev2, as InfiniteYou uses), or the face "
                    "analysis loader of InstantID or PuLID.",
                ),
                "arcface": choice_input(
                    files,
                    f"facexlib's ArcFace IR-SE50 face recognition file ({IR_SE50_FILE}) in models/infiniteyou.",
                    default=default,
                ),
                "image": typed_input(
                    "IMAGE",
                    "One photo of the person; the largest face in it is used unless face chooses another. A batch of "
                    "several images is refused: pick one (e.g. with Image From Batch).",
                ),
            },
            "optional": {**face_choice_inputs(), **face_mask_input()},
        }

    def identity(
        self,
        pair: InfiniteYouPair,
        insightface: Any,  # insightface's FaceAnalysis (faces_runtime.py)
        arcface: str,
        image: torch.Tensor,
        face: str = LARGEST_FACE,
        face_index: int = 0,
        face_mask: torch.Tensor | None = None,
    ) -> tuple[InfiniteYouIdentity, torch.Tensor]:
        if image.shape[0] != 1:
            raise FlexIPError(
                f"{NODE}'s image is a batch of {image.shape[0]} images but InfiniteYou reads one face: connect a "
                "single photo (pick one of a batch with Image From Batch)."
            )
        check_face_analysis(insightface, NODE)
        choice = face_choice(face, face_index, face_mask, 1, NODE)
        path = model_file("infiniteyou", arcface, f"{NODE}'s arcface")
        landmarks = infiniteyou_face(insightface, image[0], choice, NODE).landmarks
        crop = warp(image[0, ..., :3], face_crop_matrix(landmarks, FACE_SIZE), FACE_SIZE).clamp(0, 1)
        crop = (crop * 255).round() / 255  # the 8-bit crop InfiniteYou's OpenCV alignment gives
        with torch.no_grad():
            embedding = self._model(path)(arcface_input(crop.unsqueeze(0)))  # [1, 512]
        identity = InfiniteYouIdentity(
            pair, identity_tokens(pair.sim.projection, embedding), identity_tokens(pair.aes.projection, embedding)
        )
        return identity, crop.unsqueeze(0)

    def _model(self, path: str) -> ArcFaceIRSE50:
        """The IR-SE50 of `path`, loaded once per file version for this node."""
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if self._arcface is None or self._arcface[0] != key:
            self._arcface = None  # the old model goes before the new one loads
            self._arcface = (key, load_ir_se50(path))
            log.info("FlexIP InfiniteYou: loaded ArcFace IR-SE50 from %s", path)
        return self._arcface[1]
