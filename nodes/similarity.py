"""FlexIPSubjectSimilarity: generated images against the reference, seen by the encoders that condition the model.

A quick in-graph check, not the paper's metrics: CLIP-H and DINOv2-L are what FlexIP reads, so they are
biased judges of it. `python -m flexip_eval` scores with independent ones (CLIP ViT-L/14, DINO ViT-S/16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import comfy.clip_model
import torch
import torch.nn.functional as F
from comfy.image_encoders.dino2 import Dinov2Model

from flexip_model.errors import FlexIPError

from .encoders import clip_image_embeds, clip_vision_model, dino_model, dino_tokens, encode_each
from .inputs import typed_input

if TYPE_CHECKING:
    from comfy.clip_vision import ClipVisionModel

DINO_RESOLUTION = 224  # DINO-I as usually reported: the [CLS] of a 224 px centre crop


class FlexIPSubjectSimilarity:
    DISPLAY_NAME = "FlexIP Subject Similarity (conditioning encoders)"
    DESCRIPTION = (
        "How much each generated image looks like the subject, seen by the encoders that condition "
        "the model: cosine of CLIP image embeddings and of DINOv2 [CLS] features. 1.0 = the same image. "
        "A quick check, not the paper's CLIP-I and DINO-I: those need independent judges "
        "(python -m flexip_eval)."
    )
    CATEGORY = "FlexIP/evaluation"
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("clip_i", "dino_i", "table")
    OUTPUT_IS_LIST = (True, True, False)
    OUTPUT_TOOLTIPS = (
        "CLIP-I per generated image, as a list in batch order.",
        "DINO-I per generated image, as a list in batch order.",
        "Both metrics as a text table with their means; connect to Preview as Text.",
    )
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip_vision": typed_input("CLIP_VISION", "CLIP ViT-H/14 from Load CLIP Vision (for CLIP-I)."),
                "dino": typed_input("CLIP_VISION", "DINOv2-L from Load CLIP Vision (for DINO-I)."),
                "reference": typed_input(
                    "IMAGE", "The subject's reference image(s); with several, each score is the mean over them."
                ),
                "images": typed_input("IMAGE", "The generated images to score (a batch gives one score each)."),
            },
        }

    def measure(
        self, clip_vision: ClipVisionModel, dino: ClipVisionModel, reference: torch.Tensor, images: torch.Tensor
    ) -> tuple[list[float], list[float], str]:
        _check_encoders(clip_vision, dino)
        for name, batch in (("reference", reference), ("images", images)):
            if batch.shape[0] == 0:
                raise FlexIPError(f"FlexIPSubjectSimilarity's {name} batch is empty: connect at least one image.")
        reference, images = reference[..., :3], images[..., :3]
        clip, dino_cls = encode_each(
            [*images, *reference],
            lambda one: (clip_image_embeds(clip_vision, one), dino_tokens(dino, one, DINO_RESOLUTION)[:, 0]),
        )
        count = images.shape[0]
        clip_i = mean_cosine(clip[:count], clip[count:])
        dino_i = mean_cosine(dino_cls[:count], dino_cls[count:])
        clip_i, dino_i = clip_i.tolist(), dino_i.tolist()
        return clip_i, dino_i, similarity_table(clip_i, dino_i)


def similarity_table(clip_i: list[float], dino_i: list[float]) -> str:
    """One line per image and a mean line: `image  CLIP-I  DINO-I`."""
    lines = ["image  CLIP-I  DINO-I"]
    lines += [f"{index:<5}  {clip:.4f}  {dino:.4f}" for index, (clip, dino) in enumerate(zip(clip_i, dino_i))]
    lines.append(f"{'mean':<5}  {sum(clip_i) / len(clip_i):.4f}  {sum(dino_i) / len(dino_i):.4f}")
    return "\n".join(lines)


def mean_cosine(generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[N, C] and [R, C] -> [N]: each generated row's cosine similarity, averaged over the references."""
    generated = F.normalize(generated.float(), dim=-1)
    reference = F.normalize(reference.float().to(generated.device), dim=-1)
    return (generated @ reference.T).mean(dim=1).clamp(-1.0, 1.0)


def _check_encoders(clip_vision: ClipVisionModel, dino: ClipVisionModel) -> None:
    """Both inputs must be the encoders their names say, and not swapped."""
    clip_model, dino_encoder = getattr(clip_vision, "model", None), getattr(dino, "model", None)
    if isinstance(clip_model, Dinov2Model) and isinstance(dino_encoder, comfy.clip_model.CLIPVisionModelProjection):
        raise FlexIPError(
            "FlexIPSubjectSimilarity's clip_vision and dino inputs are swapped: connect CLIP ViT-H/14 to "
            "clip_vision and DINOv2 to dino."
        )
    clip_vision_model(
        clip_vision,
        "FlexIPSubjectSimilarity's clip_vision input",
        "load CLIP ViT-H/14 with Load CLIP Vision and connect it there",
    )
    dino_model(
        dino,
        "FlexIPSubjectSimilarity's dino input",
        "load DINOv2-L (the model.safetensors of dinov2-large) with Load CLIP Vision",
    )
