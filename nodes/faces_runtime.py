"""The one place that talks to insightface and ONNX Runtime: import, providers, load, detect, embed.

The `INSIGHTFACE` value is insightface's own `FaceAnalysis`, the object IPAdapter plus passes
under that type name and InstantID and PuLID pass as `FACEANALYSIS`, so loaders and face nodes
of those packs and of FlexIP can be mixed. Only `det_model.detect` and the recognition model
are used, so a pack loaded with more modules or not prepared works too. Both packages are
optional: they are imported only when a face node runs, never when the FlexIP pack is imported.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexip_model.errors import FlexIPError

log = logging.getLogger(__name__)

# The node's provider choice -> ONNX Runtime's execution provider name.
PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCm": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
}
CPU = PROVIDERS["CPU"]
# The face nodes' input type: a comma union, which ComfyUI's validate_node_input and the
# frontend's isValidConnection both split on ",", so links from either loader type validate.
FACE_MODELS_TYPE = "INSIGHTFACE,FACEANALYSIS"
# Detection input sizes, tried in turn until a face is found: SCRFD misses faces that fill
# most of a 640 px input, and finds them again at a smaller size.
DETECTION_SIZES = (640, 512, 384, 256)
# InfiniteYou's own sizes, which its face and keypoint nodes use to find the faces its pipeline finds
INFINITEYOU_DETECTION_SIZES = (640, 320, 160)
_INSTALL = (
    'install them into ComfyUI\'s Python environment with `python -m pip install "insightface>=1.0" onnxruntime` '
    "(for CUDA, then swap in the GPU runtime with `python -m pip uninstall -y onnxruntime onnxruntime-gpu` "
    "and `python -m pip install onnxruntime-gpu`) and restart ComfyUI"
)


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face in image pixels: box [4] (x1, y1, x2, y2), landmarks [5, 2] (eyes, nose, mouth corners)."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def import_insightface():
    """The insightface module (ONNX Runtime first); FlexIPError that says how to install what is missing."""
    for name in ("onnxruntime", "insightface", "insightface.app"):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise FlexIPError(
                f"The FlexIP face nodes need the optional packages insightface and onnxruntime, and {name} could "
                f"not be imported ({error}): {_INSTALL}."
            ) from None
    return importlib.import_module("insightface")


def onnx_providers(choice: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for the node's `choice`, with CPU after it; CPU alone if the runtime lacks it."""
    wanted = PROVIDERS[choice]
    if wanted == CPU:
        return [CPU]
    if wanted not in available:
        log.warning(
            "FlexIP faces: ONNX Runtime has no %s (available: %s); running InsightFace on the CPU. "
            "Install the onnxruntime build for %s to use it.",
            wanted,
            ", ".join(available) or "none",
            choice,
        )
        return [CPU]
    return [wanted, CPU]


def load_face_analysis(pack: str, folder: Path, choice: str):
    """insightface.app.FaceAnalysis of the pack in `folder` (detection and recognition only), prepared at 640 px."""
    insightface = import_insightface()
    import onnxruntime

    providers = onnx_providers(choice, list(onnxruntime.get_available_providers()))
    try:
        # An absolute folder as the name: insightface reads it in place and never downloads.
        analysis = insightface.app.FaceAnalysis(
            name=str(folder),
            root=str(folder.parent.parent),
            providers=providers,
            allowed_modules=["detection", "recognition"],
        )
    except AssertionError:  # insightface asserts that a detection model was found
        raise FlexIPError(
            f"The InsightFace pack '{pack}' in {folder} has no face detection model: put the complete pack there "
            "(antelopev2 has scrfd_10g_bnkps.onnx, buffalo_l has det_10g.onnx)."
        ) from None
    except Exception as error:  # a truncated or foreign .onnx file
        raise FlexIPError(
            f"insightface could not load the pack '{pack}' in {folder} ({type(error).__name__}: {error}): download "
            "the pack again and unzip it there."
        ) from None
    analysis.prepare(ctx_id=0, det_size=(DETECTION_SIZES[0], DETECTION_SIZES[0]))
    log.info(
        "FlexIP faces: loaded InsightFace pack %s from %s (%s) on %s",
        pack,
        folder,
        ", ".join(sorted(analysis.models)),
        ", ".join(providers),
    )
    return analysis


def check_face_analysis(analysis: object, node: str) -> None:
    """FlexIPError unless `analysis` is an insightface FaceAnalysis (has a face detector)."""
    if not callable(getattr(getattr(analysis, "det_model", None), "detect", None)):
        raise FlexIPError(
            f"{node}'s insightface input is not an InsightFace FaceAnalysis with a face detector (got "
            f"{type(analysis).__name__}): connect FlexIP InsightFace Loader or the InsightFace/face analysis "
            "loader of IPAdapter plus, InstantID or PuLID."
        )


def bgr_pixels(image: torch.Tensor) -> np.ndarray:
    """IMAGE [H, W, C] in 0..1 -> the uint8 BGR array [H, W, 3] insightface reads."""
    pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(pixels[..., ::-1])


def detect_faces(
    analysis: Any, image: torch.Tensor, sizes: Sequence[int] = DETECTION_SIZES
) -> tuple[list[DetectedFace], int | None]:
    """The faces in one IMAGE [H, W, C] and the detection size that found them, trying `sizes` in turn
    (None: no face at any size)."""
    pixels = bgr_pixels(image)
    for size in sizes:
        boxes, landmarks = analysis.det_model.detect(pixels, input_size=(size, size))
        if len(boxes):
            if landmarks is None:
                raise FlexIPError(
                    "The InsightFace detection model gives no facial landmarks, so faces cannot be aligned: use "
                    "a pack whose detector has landmarks (antelopev2 or buffalo_l)."
                )
            return [
                DetectedFace(np.asarray(box[:4], np.float64), np.asarray(points, np.float64), float(box[4]))
                for box, points in zip(boxes, landmarks)
            ], size
    return [], None


def recognition_model(analysis: object, node: str) -> Any:
    """The pack's ArcFace model; FlexIPError if the pack has none."""
    model = getattr(analysis, "models", {}).get("recognition")
    if model is None:
        raise FlexIPError(
            f"{node} needs a face recognition model but the loaded InsightFace pack has none: load antelopev2 or "
            "buffalo_l (they include glintr100.onnx or w600k_r50.onnx)."
        )
    return model


def face_embedding(model: Any, image: torch.Tensor, face: DetectedFace) -> np.ndarray:
    """The unit-length ArcFace embedding [D] of `face` in IMAGE [H, W, C], aligned the way ArcFace expects."""
    from insightface.app.common import Face

    embedding = np.asarray(
        model.get(bgr_pixels(image), Face(bbox=face.box, kps=face.landmarks, det_score=face.score)), np.float64
    ).ravel()
    return embedding / max(np.linalg.norm(embedding), 1e-12)
