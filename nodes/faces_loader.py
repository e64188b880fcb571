"""FlexIPInsightFaceLoader: an InsightFace model pack -> INSIGHTFACE for the face nodes."""

from __future__ import annotations

from typing import Any

from .faces_packs import pack_folder, pack_names
from .faces_runtime import PROVIDERS, load_face_analysis
from .inputs import choice_input


class FlexIPInsightFaceLoader:
    DISPLAY_NAME = "FlexIP InsightFace Loader"
    DESCRIPTION = (
        "Loads an InsightFace model pack (face detection with landmarks, and ArcFace recognition) from "
        "models/insightface/models/. Needs the optional packages insightface and onnxruntime."
    )
    CATEGORY = "FlexIP/faces"
    RETURN_TYPES = ("INSIGHTFACE",)
    RETURN_NAMES = ("insightface",)
    OUTPUT_TOOLTIPS = (
        "The face models, for FlexIP Face Crop, FlexIP Face Similarity and FlexIP Encode Subject "
        "(the same INSIGHTFACE other face packs use).",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pack": choice_input(
                    pack_names(),
                    "The model pack: a folder in models/insightface/models/ holding its .onnx files "
                    "(antelopev2 or buffalo_l; see docs/faces.md).",
                ),
                "provider": choice_input(
                    list(PROVIDERS),
                    "Where ONNX Runtime runs the face models; falls back to the CPU (with a warning in the log) "
                    "when the installed onnxruntime build lacks it.",
                    default="CPU",
                ),
            }
        }

    def load(self, pack: str, provider: str):
        folder = pack_folder(pack)
        return (load_face_analysis(pack, folder, provider),)
