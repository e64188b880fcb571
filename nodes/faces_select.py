"""Face cropping for FlexIP's encoders: detect, choose and align one face per image (FlexIPFaceCrop and
FlexIPEncodeSubject's insightface input both crop through here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flexip_model.errors import FlexIPError
from flexip_model.vocabulary import image_masks

from .faces_align import centre_crop_matrix, ellipse_mask, face_crop_matrix, warp
from .faces_runtime import DETECTION_SIZES, DetectedFace, check_face_analysis, detect_faces
from .progress import with_progress

FACE_CHOICES = ("largest", "by index")
NO_FACE_POLICIES = ("error", "use_whole_image", "skip_image")
DEFAULT_CROP_SIZE = 224  # what CLIP-H and FlexIP's DINOv2 read
DEFAULT_CROP_SCALE = 1.5  # the whole head with some hair; 1.0 is ArcFace's tight crop


@dataclass(frozen=True)
class FaceCrops:
    """Crops of the kept images, in input order.

    crops [K, S, S, 3]; masks [K, S, S]; kept: input index of each crop; matrices: image -> crop
    [2, 3] per crop; faces: every face found per input image (left to right); chosen: the index
    into `faces` of the cropped face per input image, None where no face was used.
    """

    crops: torch.Tensor
    masks: torch.Tensor
    kept: list[int]
    matrices: list[np.ndarray]
    faces: list[list[DetectedFace]]
    chosen: list[int | None]


def crop_faces(
    analysis: Any,  # insightface's FaceAnalysis (faces_runtime.py)
    images: torch.Tensor,
    face: str = "largest",
    face_index: int = 0,
    crop_size: int = DEFAULT_CROP_SIZE,
    crop_scale: float = DEFAULT_CROP_SCALE,
    no_face: str = "error",
    node: str = "FlexIPFaceCrop",
) -> FaceCrops:
    """Detect, choose and align one face per image of IMAGE [N, H, W, C]; `no_face` decides the rest."""
    if images.shape[0] == 0:
        raise FlexIPError(f"{node}'s image batch is empty: connect at least one image.")
    check_face_analysis(analysis, node)
    crops, masks, kept, matrices, all_faces, chosen = [], [], [], [], [], []
    for index, image in enumerate(with_progress(images)):
        faces, _ = detect_faces(analysis, image)
        faces.sort(key=lambda found: ((found.box[0] + found.box[2]) / 2, (found.box[1] + found.box[3]) / 2))
        all_faces.append(faces)
        pick = _choose(faces, face, face_index)
        chosen.append(pick)
        if pick is None:
            if no_face == "error":
                raise FlexIPError(_no_face_message(node, index, len(images), faces, face, face_index))
            if no_face == "skip_image":
                continue
            matrix = centre_crop_matrix(image.shape[0], image.shape[1], crop_size)
            mask = torch.ones(crop_size, crop_size)
        else:
            matrix = face_crop_matrix(faces[pick].landmarks, crop_size, crop_scale)
            mask = ellipse_mask(faces[pick].box, matrix, crop_size)
        crops.append(warp(image[..., :3], matrix, crop_size).clamp(0, 1))
        masks.append(mask)
        kept.append(index)
        matrices.append(matrix)
    if not kept:
        raise FlexIPError(
            f"{node} found no face in any of the {len(images)} images and no_face is skip_image, which leaves "
            "nothing to crop: use photos with visible faces or set no_face to use_whole_image."
        )
    return FaceCrops(torch.stack(crops), torch.stack(masks), kept, matrices, all_faces, chosen)


def _choose(faces: list[DetectedFace], face: str, face_index: int) -> int | None:
    if not faces:
        return None
    if face == "largest":
        return max(range(len(faces)), key=lambda i: (faces[i].area, faces[i].score))
    return face_index if face_index < len(faces) else None


def _no_face_message(node: str, index: int, count: int, faces: list[DetectedFace], face: str, face_index: int) -> str:
    where = f"image {index} (counting from 0, of {count})"
    if faces and face == "by index":
        return (
            f"{node} found {len(faces)} face(s) in {where} but face_index is {face_index}: faces count from 0, "
            "left to right (see the preview); lower face_index or set no_face to use_whole_image or skip_image."
        )
    sizes = ", ".join(str(size) for size in DETECTION_SIZES)
    return (
        f"{node} found no face in {where} at detection sizes {sizes} px: use a photo with a clearly visible "
        "face, or set no_face to use_whole_image or skip_image."
    )


def crop_like(crops: FaceCrops, values: torch.Tensor) -> torch.Tensor:
    """Crop another per-image tensor [N or 1, H', W', C] (a mask, say) exactly as `crops` cropped the images."""
    out = []
    for position, index in enumerate(crops.kept):
        out.append(warp(values[index if values.shape[0] > 1 else 0], crops.matrices[position], crops.crops.shape[1]))
    return torch.stack(out)


def crop_for_encoding(analysis: Any, image: torch.Tensor, mask: torch.Tensor | None):
    """FlexIPEncodeSubject's `insightface` input: the largest face of each reference, cropped with
    FlexIPFaceCrop's defaults; a subject mask is cropped the same way. Returns (crops, mask or None)."""
    faces = crop_faces(analysis, image, node="FlexIPEncodeSubject")
    if mask is None:
        return faces.crops, None
    mask = image_masks(mask, image.shape[0], image.shape[1:3], "FlexIPEncodeSubject")
    return faces.crops, crop_like(faces, mask.unsqueeze(-1)).squeeze(-1)
