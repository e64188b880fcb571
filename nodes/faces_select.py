"""Face choice and cropping for FlexIP's encoders: detect, choose and align one face per image.

FlexIPFaceCrop, FlexIPEncodeSubject's insightface input and FlexIPInfiniteYouFace choose a face through
here, with the same inputs and rules (docs/faces.md, "Which face")."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flexip_model.errors import FlexIPError
from flexip_model.vocabulary import FACE_BY_INDEX, FACE_CHOICES, FACE_IN_MASK, LARGEST_FACE, image_masks, mask_batch

from .faces_align import centre_crop_matrix, ellipse_mask, face_crop_matrix, warp
from .faces_runtime import (
    DETECTION_SIZES,
    INFINITEYOU_DETECTION_SIZES,
    DetectedFace,
    check_face_analysis,
    detect_faces,
)
from .inputs import InputSpec, choice_input, int_input, typed_input
from .progress import with_progress

log = logging.getLogger(__name__)
NO_FACE_POLICIES = ("error", "use_whole_image", "skip_image")
DEFAULT_CROP_SIZE = 224  # what CLIP-H and FlexIP's DINOv2 read
DEFAULT_CROP_SCALE = 1.5  # the whole head with some hair; 1.0 is ArcFace's tight crop
FACE_INDEX_MAX = 63
_NO_FACE_REMEDY = ", or set no_face to use_whole_image or skip_image"


def face_choice_inputs(when: str = "") -> dict[str, InputSpec]:
    """The `face` and `face_index` widgets every face-choosing node declares (default: the largest face);
    `when` opens their tooltips where the choice applies only sometimes, e.g. "With insightface connected: "."""
    return {
        "face": choice_input(
            FACE_CHOICES,
            f"{when}Which face to use when an image has several: the largest; the one at face_index (counting from 0 "
            "left to right); or the one face_mask covers most.",
            default=LARGEST_FACE,
        ),
        "face_index": int_input(
            0,
            0,
            FACE_INDEX_MAX,
            f"{when}With face = by index: which face, counting from 0 left to right (FlexIP Face Crop's preview "
            "shows the numbers).",
        ),
    }


def face_mask_input(when: str = "") -> dict[str, InputSpec]:
    """The optional `face_mask` socket that goes with face = in mask."""
    return {
        "face_mask": typed_input(
            "MASK",
            f"{when}With face = in mask: paint over the face to use; the face whose box the mask covers most is used. "
            "Any size (it is stretched to the image); one mask for all images or one per image.",
        )
    }


def left_to_right(faces: list[DetectedFace]) -> list[DetectedFace]:
    """`faces` ordered by the centre of their box, left to right (top to bottom where two centres share x):
    the order face_index counts in and the preview numbers."""
    return sorted(faces, key=lambda found: ((found.box[0] + found.box[2]) / 2, (found.box[1] + found.box[3]) / 2))


@dataclass(frozen=True)
class FaceChoice:
    """Which face of an image with several: `face` one of FACE_CHOICES, `index` counting from 0 at the left,
    `masks` [1 or N, h, w] (any size, stretched to each image) for FACE_IN_MASK. Build it with `face_choice`."""

    face: str = LARGEST_FACE
    index: int = 0
    masks: torch.Tensor | None = None

    def pick(self, faces: list[DetectedFace], image_index: int, size: tuple[int, int]) -> int | None:
        """The index into `faces` (left to right, found in image `image_index` of `size` (H, W)) of the chosen
        face; None where there is none: no face, face_index past the last face, or a mask over no face.

        Ties (equal area and score, or equal mask cover, area and score) go to the leftmost face."""
        if not faces:
            return None
        if self.face == FACE_BY_INDEX:
            return self.index if self.index < len(faces) else None
        if self.face == FACE_IN_MASK:
            assert self.masks is not None  # face_choice refuses in mask without a mask
            mask = self.masks[image_index if self.masks.shape[0] > 1 else 0]
            cover = [mask_cover(mask, found.box, size) for found in faces]
            inside = [i for i in range(len(faces)) if cover[i] > 0]
            return max(inside, key=lambda i: (cover[i], faces[i].area, faces[i].score)) if inside else None
        return max(range(len(faces)), key=lambda i: (faces[i].area, faces[i].score))


def face_choice(face: str, face_index: int, face_mask: torch.Tensor | None, count: int, node: str) -> FaceChoice:
    """The checked choice for `count` images: FlexIPError, in one sentence and before any detection, for an
    unknown `face`, a negative index, in mask without a mask, a mask count that fits neither one mask nor one per
    image, or an empty mask."""
    if face not in FACE_CHOICES:
        raise FlexIPError(f"{node}'s face is {face!r}, which is unknown: use one of {', '.join(FACE_CHOICES)}.")
    if face_index < 0:
        raise FlexIPError(f"{node}'s face_index is {face_index}: faces count from 0 at the left, so use 0 or more.")
    if face != FACE_IN_MASK:
        if face_mask is not None:
            log.warning("%s: face_mask is connected but face is %r, so the mask is not used.", node, face)
        return FaceChoice(face, face_index)
    if face_mask is None:
        raise FlexIPError(
            f"{node}'s face is {FACE_IN_MASK!r} but no face_mask is connected: connect a MASK painted over the face "
            f"to use, or set face to {LARGEST_FACE} or {FACE_BY_INDEX}."
        )
    if face_mask.ndim not in (2, 3) or face_mask.numel() == 0:
        raise FlexIPError(
            f"{node}'s face_mask has shape {list(face_mask.shape)}, which is no mask: connect a MASK "
            "([H, W] or [N, H, W]), e.g. from Load Image's mask output."
        )
    masks = mask_batch(face_mask).detach().cpu()
    if masks.shape[0] not in (1, count):
        raise FlexIPError(
            f"{node}'s face_mask holds {masks.shape[0]} masks for {count} image(s): give one mask for all images "
            "or one per image."
        )
    for position, mask in enumerate(masks):
        if not bool((mask > 0).any()):
            which = "" if masks.shape[0] == 1 else f" for image {position} (counting from 0, of {count})"
            raise FlexIPError(
                f"{node}'s face_mask is empty{which}: paint over the face to use, or set face to {LARGEST_FACE} or "
                f"{FACE_BY_INDEX}."
            )
    return FaceChoice(face, face_index, masks)


def mask_cover(mask: torch.Tensor, box: np.ndarray, size: tuple[int, int]) -> float:
    """The mean of `mask` [h, w] over a face `box` (x1, y1, x2, y2) in pixels of an image of `size` (H, W): the box
    is scaled to the mask, as the mask is stretched to the image, and covers at least one mask pixel."""
    height, width = mask.shape
    scale_x, scale_y = width / size[1], height / size[0]
    x0 = min(max(math.floor(box[0] * scale_x), 0), width - 1)
    y0 = min(max(math.floor(box[1] * scale_y), 0), height - 1)
    x1 = max(min(math.ceil(box[2] * scale_x), width), x0 + 1)
    y1 = max(min(math.ceil(box[3] * scale_y), height), y0 + 1)
    return float(mask[y0:y1, x0:x1].clamp(min=0).mean())


def unchosen_message(
    node: str, where: str, faces: list[DetectedFace], choice: FaceChoice, sizes: tuple[int, ...], remedy: str = ""
) -> str:
    """Why `choice` found no face in `where` (e.g. "image 1 (counting from 0, of 3)"), in one sentence; `remedy`
    is appended to the fix (FlexIPFaceCrop's no_face policies)."""
    if faces and choice.face == FACE_BY_INDEX:
        valid = "0" if len(faces) == 1 else f"0..{len(faces) - 1}"
        return (
            f"{node} found {len(faces)} face(s) in {where} but face_index is {choice.index}: faces count from 0, "
            f"left to right (FlexIP Face Crop's preview numbers them), so use {valid}{remedy}."
        )
    if faces and choice.face == FACE_IN_MASK:
        return (
            f"{node}'s face_mask covers none of the {len(faces)} face(s) found in {where}: paint the mask over the "
            f"face to use (FlexIP Face Crop's preview shows where the faces are){remedy}."
        )
    return (
        f"{node} found no face in {where} at detection sizes {', '.join(str(size) for size in sizes)} px: use a "
        f"photo with a clearly visible face{remedy}."
    )


def infiniteyou_face(analysis: Any, image: torch.Tensor, choice: FaceChoice, node: str) -> DetectedFace:
    """The chosen face of one IMAGE [H, W, C], found as InfiniteYou's pipeline finds faces (its detection sizes);
    FlexIPError naming `node`, in one sentence, when the choice finds none."""
    faces = left_to_right(detect_faces(analysis, image, INFINITEYOU_DETECTION_SIZES)[0])
    pick = choice.pick(faces, 0, (image.shape[0], image.shape[1]))
    if pick is None:
        raise FlexIPError(unchosen_message(node, "its image", faces, choice, INFINITEYOU_DETECTION_SIZES))
    return faces[pick]


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
    face: str = LARGEST_FACE,
    face_index: int = 0,
    crop_size: int = DEFAULT_CROP_SIZE,
    crop_scale: float = DEFAULT_CROP_SCALE,
    no_face: str | None = None,
    node: str = "FlexIPFaceCrop",
    face_mask: torch.Tensor | None = None,
) -> FaceCrops:
    """Detect, choose and align one face per image of IMAGE [N, H, W, C]; `no_face` (one of NO_FACE_POLICIES)
    decides the images without the chosen face, None where the node has no such input (an error)."""
    if images.shape[0] == 0:
        raise FlexIPError(f"{node}'s image batch is empty: connect at least one image.")
    check_face_analysis(analysis, node)
    choice = face_choice(face, face_index, face_mask, images.shape[0], node)
    crops, masks, kept, matrices, all_faces, chosen = [], [], [], [], [], []
    for index, image in enumerate(with_progress(images)):
        faces = left_to_right(detect_faces(analysis, image)[0])
        all_faces.append(faces)
        pick = choice.pick(faces, index, (image.shape[0], image.shape[1]))
        chosen.append(pick)
        if pick is None:
            if no_face in (None, "error"):
                where = f"image {index} (counting from 0, of {len(images)})"
                remedy = "" if no_face is None else _NO_FACE_REMEDY
                raise FlexIPError(unchosen_message(node, where, faces, choice, DETECTION_SIZES, remedy))
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


def crop_like(crops: FaceCrops, values: torch.Tensor) -> torch.Tensor:
    """Crop another per-image tensor [N or 1, H', W', C] (a mask, say) exactly as `crops` cropped the images."""
    out = []
    for position, index in enumerate(crops.kept):
        out.append(warp(values[index if values.shape[0] > 1 else 0], crops.matrices[position], crops.crops.shape[1]))
    return torch.stack(out)


def crop_for_encoding(
    analysis: Any,
    image: torch.Tensor,
    mask: torch.Tensor | None,
    face: str = LARGEST_FACE,
    face_index: int = 0,
    face_mask: torch.Tensor | None = None,
):
    """FlexIPEncodeSubject's `insightface` input: the chosen face of each reference (the largest by default),
    cropped with FlexIPFaceCrop's defaults; a subject mask is cropped the same way. Returns (crops, mask or None)."""
    faces = crop_faces(analysis, image, face, face_index, node="FlexIPEncodeSubject", face_mask=face_mask)
    if mask is None:
        return faces.crops, None
    mask = image_masks(mask, image.shape[0], image.shape[1:3], "FlexIPEncodeSubject")
    return faces.crops, crop_like(faces, mask.unsqueeze(-1)).squeeze(-1)
