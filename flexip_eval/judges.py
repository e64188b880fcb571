"""The judges: standard models that score generated images with the paper's five automatic metrics.

Each judge is a local folder in Hugging Face layout, loaded by transformers exactly as a user's download
loads (`local_files_only=True`: nothing is fetched), with the folder's own preprocessing:

- CLIP (a `CLIPModel`; openai/clip-vit-large-patch14 by default, openai/clip-vit-base-patch32 selectable):
  CLIP-T = cos(image, prompt), CLIP-I = mean cos(image, reference) over the subject's references, and
  CLIP-IQA = softmax(100·[cos(image, "Good photo."), cos(image, "Bad photo.")])[good].
- DINO ViT-S/16 (facebook/dino-vits16, a `ViTModel`): DINO-I = mean cos over the references of the [CLS]
  token of last_hidden_state (after the final layer norm; ViTModel's pooler is not DINO's and is not built).
- Aesthetic: the LAION predictor v2 head (flexip_eval/aesthetic.py) on the L2-normalised image embedding of
  CLIP ViT-L/14 (`aesthetic_clip`, which defaults to `clip`).

The image encoders the adapters condition on (CLIP ViT-H/14, ViT-bigG/14, DINOv2) are refused as judges:
they would score an adapter on its own features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    PretrainedConfig,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from flexip_eval.aesthetic import load_aesthetic_head
from flexip_eval.table import METRICS
from flexip_host.distributed import DEVICES
from flexip_model.errors import FlexIPError, shown
from flexip_model.vocabulary import CONDITIONING_CLIPS, HIDDEN_STATES, encoder_name

log = logging.getLogger(__name__)

CLIP_MODEL = "openai/clip-vit-large-patch14"
DINO_MODEL = "facebook/dino-vits16"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# CLIP-IQA's antonym pair, scored as CLIP's zero-shot classifier at the logit scale trained CLIPs end at (100)
IQA_PROMPTS = ("Good photo.", "Bad photo.")
IQA_SCALE = 100.0
# images per forward pass: bounds activation memory whatever batch the caller passes
CHUNK = 32


@dataclass(frozen=True)
class JudgesConfig:
    """The [judges] section of eval.toml: where the judge models are, and where they run."""

    clip: Path  # HF folder of a CLIPModel (openai/clip-vit-large-patch14 by default)
    dino: Path  # HF folder of facebook/dino-vits16 (ViTModel)
    aesthetic: Path  # safetensors of the LAION aesthetic predictor v2 head
    device: str = "auto"
    # HF folder of the CLIP ViT-L/14 whose embedding the aesthetic head reads; None: `clip` (set it when
    # `clip` is another CLIP, e.g. ViT-B/32)
    aesthetic_clip: Path | None = None


class ClipJudge:
    """A CLIPModel with its folder's image preprocessing and tokenizer; embeddings come L2-normalised."""

    def __init__(self, model: CLIPModel, processor: CLIPImageProcessor, tokenizer: CLIPTokenizer) -> None:
        self.model, self.processor, self.tokenizer = model, processor, tokenizer
        self.device = next(model.parameters()).device

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] in 0..1 -> [B, D] unit image embeddings (after the visual projection)."""
        return torch.cat([self._image_chunk(chunk) for chunk in images.split(CHUNK)])

    def _image_chunk(self, images: torch.Tensor) -> torch.Tensor:
        pixels = _pixels(self.processor, images, self.device)
        embeddings = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        return torch.nn.functional.normalize(embeddings, dim=-1)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """One prompt each -> [N, D] unit text embeddings (prompts past CLIP's 77 tokens are cut)."""
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            return_tensors="pt",
            max_length=self.model.config.text_config.max_position_embeddings,
        ).to(self.device)
        output = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return torch.nn.functional.normalize(self.model.text_projection(output.pooler_output), dim=-1)


class Judges:
    """The loaded judge models on one device (fp32, eval mode); `score` is all a caller needs."""

    def __init__(
        self,
        clip: ClipJudge,
        dino: ViTModel,
        dino_images: ViTImageProcessor,
        aesthetic_clip: ClipJudge,
        aesthetic: torch.nn.Sequential,
    ) -> None:
        self.clip, self.dino, self.dino_images = clip, dino, dino_images
        self.aesthetic_clip, self.aesthetic = aesthetic_clip, aesthetic
        self.device = clip.device
        with torch.no_grad():
            self.iqa_texts = clip.texts(list(IQA_PROMPTS))  # [2, D], the same for every image

    @torch.no_grad()
    def score(
        self, images: torch.Tensor, prompts: list[str], references: torch.Tensor | list[torch.Tensor]
    ) -> list[dict[str, float]]:
        """images [B, H, W, 3] float 0..1 (ComfyUI IMAGE), one prompt each (subject token already replaced by the
        class noun), references [R, H, W, 3] of the subject -> per image {"clip_t", "clip_i", "dino_i",
        "clip_iqa", "aesthetic"}; CLIP-I/DINO-I are the mean cosine over the R references.

        References of different sizes (DreamBench's photos) may come as a list of [n, H, W, 3] batches: each judge
        then resizes and crops every photo itself, as it does the images.
        """
        batches = references if isinstance(references, list) else [references]
        for name, batch in [("images", images), *(("references", batch) for batch in batches)]:
            if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[0] == 0:
                raise FlexIPError(
                    f"Judges.score got {name} of shape {list(batch.shape)}: pass a non-empty "
                    "[B, H, W, 3] RGB batch (ComfyUI IMAGE)."
                )
        if len(prompts) != images.shape[0]:
            raise FlexIPError(
                f"Judges.score got {len(prompts)} prompts for {images.shape[0]} images: pass one prompt per image."
            )
        clip_images = self.clip.images(images)
        clip_references = torch.cat([self.clip.images(batch) for batch in batches])
        dino_images = self._dino(images)
        dino_references = torch.cat([self._dino(batch) for batch in batches])
        # the head reads unit ViT-L/14 embeddings: the judging CLIP's own when it is that CLIP
        aesthetic_input = clip_images if self.aesthetic_clip is self.clip else self.aesthetic_clip.images(images)
        columns = torch.stack(
            [
                (clip_images * self.clip.texts(prompts)).sum(dim=-1),
                (clip_images @ clip_references.T).mean(dim=-1),
                (dino_images @ dino_references.T).mean(dim=-1),
                torch.softmax(IQA_SCALE * clip_images @ self.iqa_texts.T, dim=-1)[:, 0],
                self.aesthetic(aesthetic_input)[:, 0],
            ],
            dim=-1,
        )
        return [dict(zip(METRICS, row)) for row in columns.double().cpu().tolist()]

    def _dino(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] -> [B, D] unit [CLS] tokens of DINO's last_hidden_state."""
        return torch.cat([self._dino_chunk(chunk) for chunk in images.split(CHUNK)])

    def _dino_chunk(self, images: torch.Tensor) -> torch.Tensor:
        pixels = _pixels(self.dino_images, images, self.device)
        return torch.nn.functional.normalize(self.dino(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)


def _pixels(
    processor: CLIPImageProcessor | ViTImageProcessor, images: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """A judge's input [B, 3, h, w] from [B, H, W, 3] 0..1, by the folder's processor (resize, crop, normalise);
    the values are already 0..1, so the processor's 1/255 rescale is off."""
    channels_first = list(images.detach().float().cpu().permute(0, 3, 1, 2))
    pixels = processor(
        images=channels_first, do_rescale=False, return_tensors="pt", input_data_format="channels_first"
    )["pixel_values"]
    return pixels.to(device)


def judge_device(name: str) -> torch.device:
    """The device of [judges] device: auto is the current CUDA device (a torchrun rank's own) or the CPU."""
    if name not in DEVICES:
        raise FlexIPError(f"[judges] device is {shown(name)}: use one of {', '.join(DEVICES)}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise FlexIPError(
            "[judges] device is 'cuda' but PyTorch sees no CUDA GPU: install a CUDA build of PyTorch "
            "or set device = 'auto'."
        )
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return shown(text.splitlines()[0], 120) if text else type(error).__name__


def _missing_file(folder: Path, tokenizer: bool) -> str | None:
    """What a judge's folder lacks of the files transformers loads, or None."""
    if not (folder / "config.json").is_file():
        return "config.json"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return "weights (model.safetensors or pytorch_model.bin)"
    if not (folder / "preprocessor_config.json").is_file():
        return "preprocessor_config.json (its image preprocessing)"
    has_tokenizer = (folder / "tokenizer.json").is_file() or all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt")
    )
    if tokenizer and not has_tokenizer:
        return "tokenizer files (tokenizer.json, or vocab.json and merges.txt)"
    return None


def _model_config(folder: Path, key: str, model: str, tokenizer: bool) -> PretrainedConfig:
    """The folder's model config, after checking it holds every file a judge loads; no weights are read."""
    place = f"[judges] {key} folder {folder}"
    if not folder.is_dir():
        raise FlexIPError(
            f"the {place} does not exist: download {model} (Hugging Face layout) into it or point "
            f"[judges] {key} at its folder."
        )
    missing = _missing_file(folder, tokenizer)
    if missing:
        raise FlexIPError(f"the {place} has no {missing}: put the files of {model} there (Hugging Face layout).")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise FlexIPError(
            f"the {place} has a config.json transformers cannot read ({_first_line(error)}): "
            f"download the files of {model} again."
        ) from None


def _clip_config(folder: Path, key: str) -> CLIPConfig:
    config = _model_config(folder, key, CLIP_MODEL, tokenizer=True)
    if not isinstance(config, CLIPConfig):
        raise FlexIPError(
            f"the [judges] {key} folder {folder} holds a {config.model_type!r} model, not a CLIPModel: "
            f"point it at a folder of {CLIP_MODEL}."
        )
    # a CLIP is known by the width of its hidden states, which its vision config gives
    encoder = encoder_name(HIDDEN_STATES, config.vision_config.hidden_size)
    if encoder in CONDITIONING_CLIPS:
        raise FlexIPError(
            f"the [judges] {key} folder {folder} holds {encoder}, the image encoder "
            f"the adapters condition on, so it would judge them on their own features: use {CLIP_MODEL}."
        )
    return config


def _loaded(load, folder: Path, model: str):
    """`load()` with transformers' errors (damaged or mismatched files) turned into one sentence."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError) as error:
        raise FlexIPError(
            f"{folder} could not be loaded ({_first_line(error)}): download the files of {model} again."
        ) from None


def _clip_judge(folder: Path, device: torch.device) -> ClipJudge:
    path = str(folder)
    model = _loaded(lambda: CLIPModel.from_pretrained(path, local_files_only=True), folder, CLIP_MODEL)
    images = _loaded(lambda: CLIPImageProcessor.from_pretrained(path, local_files_only=True), folder, CLIP_MODEL)
    tokenizer = _loaded(lambda: CLIPTokenizer.from_pretrained(path, local_files_only=True), folder, CLIP_MODEL)
    return ClipJudge(model.to(device, torch.float32).eval(), images, tokenizer)


def load_judges(config: JudgesConfig) -> Judges:
    """Every judge checked from its files first (FlexIPError naming the folder or file and the model to put
    there), then loaded onto `config.device`."""
    device = judge_device(config.device)
    aesthetic_folder = config.aesthetic_clip or config.clip
    clip_config = _clip_config(config.clip, "clip")
    aesthetic_config = (
        clip_config if aesthetic_folder == config.clip else _clip_config(aesthetic_folder, "aesthetic_clip")
    )
    dino_config = _model_config(config.dino, "dino", DINO_MODEL, tokenizer=False)
    if not isinstance(dino_config, ViTConfig):
        raise FlexIPError(
            f"the [judges] dino folder {config.dino} holds a {dino_config.model_type!r} model, not "
            f"DINO's ViTModel (DINOv2 is what the adapters condition on): put {DINO_MODEL} there."
        )
    aesthetic = load_aesthetic_head(config.aesthetic, aesthetic_config.projection_dim)

    clip = _clip_judge(config.clip, device)
    aesthetic_clip = clip if aesthetic_folder == config.clip else _clip_judge(aesthetic_folder, device)
    path = str(config.dino)
    dino = _loaded(
        lambda: ViTModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True), config.dino, DINO_MODEL
    )
    dino_images = _loaded(
        lambda: ViTImageProcessor.from_pretrained(path, local_files_only=True), config.dino, DINO_MODEL
    )
    log.info("judges on %s: CLIP %s, DINO %s, aesthetic head %s", device, config.clip, config.dino, config.aesthetic)
    return Judges(clip, dino.to(device, torch.float32).eval(), dino_images, aesthetic_clip, aesthetic.to(device))
