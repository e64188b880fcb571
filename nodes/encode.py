"""FlexIPEncodeSubject: reference image(s) -> preservation tokens and the CLIP embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import comfy.model_management
import torch

from flexip_model.errors import FlexIPError
from flexip_model.subject import BATCH_MODES
from flexip_model.vocabulary import LARGEST_FACE, image_masks

from .bundles import EncodedSubject, LoadedFlexIP
from .encoders import check_encoders, reference_features
from .faces_runtime import FACE_MODELS_TYPE
from .faces_select import crop_for_encoding, face_choice_inputs, face_mask_input
from .inputs import choice_input, typed_input

if TYPE_CHECKING:
    from comfy.clip_vision import ClipVisionModel

_WITH_FACES = "Only with insightface connected. "


class FlexIPEncodeSubject:
    DISPLAY_NAME = "FlexIP Encode Subject"
    DESCRIPTION = (
        "Encodes the subject once: CLIP-H and DINOv2 features of the reference through the "
        "preservation adapter. Changing gate or strength later does not re-run this node."
    )
    CATEGORY = "FlexIP"
    RETURN_TYPES = ("FLEXIP_SUBJECT",)
    RETURN_NAMES = ("subject",)
    OUTPUT_TOOLTIPS = ("The encoded subject, for FlexIPApply.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "flexip": typed_input(
                    "FLEXIP", "Adapters from FlexIPLoader, or an IP-Adapter pair (compatibility mode)."
                ),
                "clip_vision": typed_input(
                    "CLIP_VISION", "CLIP ViT-H/14 from Load CLIP Vision (the file IP-Adapter uses)."
                ),
                "image": typed_input("IMAGE", "The reference image of the subject; a batch gives several views."),
                "batch_mode": choice_input(
                    BATCH_MODES,
                    "How several reference images combine: average their tokens, or concatenate them "
                    "(more tokens, more detail, a little slower).",
                    default="average",
                ),
            },
            "optional": {
                "dino": typed_input(
                    "CLIP_VISION",
                    "DINOv2-L from Load CLIP Vision (low-level detail features); not used by an IP-Adapter pair.",
                ),
                "mask": typed_input("MASK", "Subject mask over the reference: the background is blacked out."),
                "insightface": typed_input(
                    FACE_MODELS_TYPE,
                    "Optional face models: each reference is first cropped to one face (face chooses which), aligned "
                    "as FlexIP Face Crop does by default (use that node for other crop sizes).",
                ),
                **face_choice_inputs(_WITH_FACES),
                **face_mask_input(_WITH_FACES),
            },
        }

    def encode(
        self,
        flexip: LoadedFlexIP,
        clip_vision: ClipVisionModel,
        image: torch.Tensor,
        batch_mode: str,
        dino: ClipVisionModel | None = None,
        mask: torch.Tensor | None = None,
        insightface: Any = None,  # insightface's FaceAnalysis (faces_runtime.py)
        face: str = LARGEST_FACE,
        face_index: int = 0,
        face_mask: torch.Tensor | None = None,
    ) -> tuple[EncodedSubject]:
        if insightface is not None:  # faces: the aligned crop replaces the photo, the mask is cropped alike
            image, mask = crop_for_encoding(insightface, image, mask, face, face_index, face_mask)
        elif face != LARGEST_FACE or face_mask is not None:
            raise FlexIPError(
                f"FlexIPEncodeSubject's face is {face!r}{' with a face_mask' if face_mask is not None else ''} but "
                "no insightface is connected, so no face is chosen: connect face models (FlexIP InsightFace Loader) "
                "to insightface, or set face to largest and disconnect face_mask."
            )
        features = flexip.adapter.image_features
        check_encoders(features, clip_vision, dino, flexip.name)
        references = masked_references(image, mask)
        rows, uncond = reference_features(features, clip_vision, dino, references)
        with torch.no_grad(), flexip.on_device() as adapter:
            tokens = adapter.encode_subject(rows, uncond, batch_mode)
        return (EncodedSubject(flexip, tokens.to(comfy.model_management.intermediate_device()), len(references)),)


def masked_references(image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """IMAGE [N, H, W, C] with the background outside `mask` ([1 or N, h, w]) set to black."""
    if image.shape[0] == 0:
        raise FlexIPError("FlexIPEncodeSubject's image batch is empty: connect at least one reference image.")
    image = image[..., :3]
    if mask is None:
        return image
    mask = image_masks(mask, image.shape[0], image.shape[1:3], "FlexIPEncodeSubject")
    return image * mask.unsqueeze(-1).to(image)
