"""The judges load from Hugging Face folders through transformers, as a user's downloads load, and score what
the metrics define: CLIP-T, CLIP-I, DINO-I, CLIP-IQA and Aesthetic (generated random-weight models)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer, ViTImageProcessor, ViTModel

from flexip_eval.judges import Judges, JudgesConfig, load_judges
from flexip_eval.table import METRICS
from flexip_model.errors import FlexIPError
from tests.support.assertions import assert_one_sentence
from tools.fixtures.images import drawn_subject
from tools.fixtures.judges import write_judges

pytestmark = pytest.mark.eval

# Two images embedded in separate forward passes (different batch sizes, so different GEMM blocking) agree to
# ~1e-7 per fp32 element; a cosine of two such unit vectors of width 32..768 is 1 within ~1e-6.
SELF_TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def judges_config(cache_dir: Path) -> JudgesConfig:
    return dataclasses.replace(write_judges(cache_dir / "fixtures" / "judges_v1"), device="cpu")


@pytest.fixture(scope="session")
def judges(judges_config: JudgesConfig) -> Judges:
    return load_judges(judges_config)


def _image(seed: int, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    """[1, H, W, 3] in 0..1, a ComfyUI IMAGE."""
    return torch.rand(1, *size, 3, generator=torch.Generator().manual_seed(seed))


def _subject(size: int = 224) -> torch.Tensor:
    return torch.from_numpy(numpy.asarray(drawn_subject(size), dtype=numpy.float32) / 255)[None]


def test_an_image_against_itself_scores_clip_i_and_dino_i_one(judges: Judges):
    subject, other = _subject(96), _image(1, (96, 96))
    scores = judges.score(
        torch.cat([subject, other, subject]), ["a photo of a toy"] * 3, references=torch.cat([subject, subject])
    )
    for index in (0, 2):
        assert scores[index]["clip_i"] == pytest.approx(1.0, abs=SELF_TOLERANCE)
        assert scores[index]["dino_i"] == pytest.approx(1.0, abs=SELF_TOLERANCE)
    # a different image is not itself: the 1.0 above is the identity, not a saturated random model
    assert scores[1]["clip_i"] < 1 - 1e-3 and scores[1]["dino_i"] < 1 - 1e-3


def test_every_metric_is_a_float_in_its_range(judges: Judges):
    images = torch.cat([_image(seed) for seed in range(3)])
    prompts = ["a photo of a toy on the beach", "a toy", "a red toy with a city in the background"]
    # references of different sizes, as DreamBench's photos are: a list of batches
    scores = judges.score(images, prompts, references=[torch.cat([_image(7), _image(8)]), _image(9, (64, 200))])
    assert len(scores) == 3
    for row in scores:
        assert tuple(row) == METRICS and all(type(value) is float for value in row.values())
        assert -1 <= row["clip_t"] <= 1 and -1 <= row["clip_i"] <= 1 and -1 <= row["dino_i"] <= 1
        assert 0 < row["clip_iqa"] < 1  # the probability of "Good photo." between two prompts


def test_scores_match_the_models_run_as_transformers_documents(judges: Judges, judges_config: JudgesConfig):
    """An independent float64 recomputation from the same folders: the processors on PIL images, CLIPModel's own
    forward (its normalised embeddings), ViTModel's [CLS], the aesthetic file's five linear layers. At 224 px the
    processors do not resize, so both paths see the same pixels; 1e-5 covers fp32 against float64."""
    image = drawn_subject(224)
    reference = drawn_subject(224).rotate(90)
    prompt = "a photo of a toy"
    scores = judges.score(_subject(), [prompt], torch.from_numpy(numpy.asarray(reference, numpy.float32) / 255)[None])

    clip_folder = str(judges_config.clip)
    clip = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_folder, local_files_only=True)(
        [prompt, "Good photo.", "Bad photo."], padding=True, return_tensors="pt"
    )
    pixels = CLIPImageProcessor.from_pretrained(clip_folder, local_files_only=True)(
        images=[image, reference], return_tensors="pt"
    )
    with torch.no_grad():
        output = clip(**tokens, **pixels)
    image_embeds, text_embeds = output.image_embeds.double(), output.text_embeds.double()
    dino = ViTModel.from_pretrained(str(judges_config.dino), add_pooling_layer=False, local_files_only=True).eval()
    dino_pixels = ViTImageProcessor.from_pretrained(str(judges_config.dino), local_files_only=True)(
        images=[image, reference], return_tensors="pt"
    )
    with torch.no_grad():
        cls = torch.nn.functional.normalize(dino(**dino_pixels).last_hidden_state[:, 0].double(), dim=-1)
    head = {name: tensor.double() for name, tensor in load_file(str(judges_config.aesthetic)).items()}
    aesthetic = image_embeds[0]
    for index in (0, 2, 4, 6, 7):  # no activations in the original head
        aesthetic = head[f"layers.{index}.weight"] @ aesthetic + head[f"layers.{index}.bias"]

    expected = {
        "clip_t": image_embeds[0] @ text_embeds[0],
        "clip_i": image_embeds[0] @ image_embeds[1],
        "dino_i": cls[0] @ cls[1],
        "clip_iqa": torch.softmax(100 * text_embeds[1:] @ image_embeds[0], dim=0)[0],
        "aesthetic": aesthetic[0],
    }
    assert scores[0] == pytest.approx({key: float(value) for key, value in expected.items()}, abs=1e-5)


def test_references_as_a_list_score_as_one_batch(judges: Judges):
    images, references = torch.cat([_image(10), _image(11)]), torch.cat([_image(12), _image(13)])
    as_list = judges.score(images, ["a toy"] * 2, list(references.split(1)))
    # each reference embedded alone rather than in a batch of two: fp32 agreement, see SELF_TOLERANCE
    assert as_list == [
        pytest.approx(row, abs=SELF_TOLERANCE) for row in judges.score(images, ["a toy"] * 2, references)
    ]


def test_scores_are_deterministic_across_calls_and_loads(judges: Judges, judges_config: JudgesConfig):
    images, references = torch.cat([_image(3), _image(4)]), _image(5)
    prompts = ["a toy", "a toy in the snow"]
    first = judges.score(images, prompts, references)
    assert judges.score(images, prompts, references) == first  # exactly: same inputs, same batch
    assert load_judges(judges_config).score(images, prompts, references) == first


def test_a_separate_aesthetic_clip_folder_gives_the_same_aesthetic(
    judges: Judges, judges_config: JudgesConfig, tmp_path: Path
):
    # the same CLIP under another folder takes the second-model path; equal weights give equal scores
    copy = Path(shutil.copytree(judges_config.clip, tmp_path / "clip-vit-large-patch14"))
    separate = load_judges(dataclasses.replace(judges_config, aesthetic_clip=copy))
    assert separate.aesthetic_clip is not separate.clip
    images = torch.cat([_image(6), _image(9)])
    expected = judges.score(images, ["a toy", "a toy"], images[:1])
    assert [row["aesthetic"] for row in separate.score(images, ["a toy", "a toy"], images[:1])] == pytest.approx(
        [row["aesthetic"] for row in expected], abs=1e-6
    )


def test_the_aesthetic_head_is_read_with_safetensors_never_torch_load(judges_config: JudgesConfig, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    load_judges(judges_config)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        table, _, name = key.rpartition("__")
        (config[table] if table else config)[name] = value
    (folder / "config.json").write_text(json.dumps(config))


def _small_head(path: Path) -> None:
    weights = load_file(str(path))
    weights["layers.7.weight"] = weights["layers.7.weight"][:, :8].contiguous()
    save_file(weights, str(path))


# (what breaks the copied judge files, the JudgesConfig key it lives under, what the sentence must name)
BROKEN: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "clip folder missing": (shutil.rmtree, "clip", ("clip", "openai/clip-vit-large-patch14")),
    "clip without weights": (
        lambda f: (f / "model.safetensors").unlink(),
        "clip",
        ("clip", "model.safetensors", "openai/clip-vit-large-patch14"),
    ),
    "clip without preprocessing": (
        lambda f: (f / "preprocessor_config.json").unlink(),
        "clip",
        ("preprocessor_config.json", "openai/clip-vit-large-patch14"),
    ),
    "clip without tokenizer": (
        lambda f: [(f / n).unlink() for n in ("tokenizer.json", "merges.txt")],
        "clip",
        ("tokenizer", "openai/clip-vit-large-patch14"),
    ),
    "clip is CLIP-H": (
        lambda f: _edit_config(f, vision_config__hidden_size=1280),
        "clip",
        ("CLIP ViT-H/14", "openai/clip-vit-large-patch14"),
    ),
    "clip narrower than the head": (
        lambda f: _edit_config(f, projection_dim=512),
        "clip",
        ("aesthetic_clip", "openai/clip-vit-large-patch14"),
    ),
    "dino folder missing": (shutil.rmtree, "dino", ("dino", "facebook/dino-vits16")),
    "dino without weights": (lambda f: (f / "model.safetensors").unlink(), "dino", ("dino", "facebook/dino-vits16")),
    "dino is DINOv2": (lambda f: _edit_config(f, model_type="dinov2"), "dino", ("dinov2", "facebook/dino-vits16")),
    "aesthetic file missing": (lambda f: f.unlink(), "aesthetic", ("aesthetic.safetensors", "LAION aesthetic")),
    "aesthetic head of other shapes": (_small_head, "aesthetic", ("aesthetic.safetensors", "LAION aesthetic")),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_missing_or_wrong_judge_file_is_one_sentence(case: str, judges_config: JudgesConfig, tmp_path: Path):
    break_it, key, mentions = BROKEN[case]
    copies = {name: tmp_path / getattr(judges_config, name).name for name in ("clip", "dino", "aesthetic")}
    for name, copy in copies.items():
        source = getattr(judges_config, name)
        shutil.copytree(source, copy) if source.is_dir() else shutil.copy(source, copy)
    break_it(copies[key])
    with pytest.raises(FlexIPError) as error:
        load_judges(dataclasses.replace(judges_config, **copies))
    assert_one_sentence(str(error.value), *mentions)


def test_a_pickled_aesthetic_head_is_refused_unread(judges_config: JudgesConfig, tmp_path: Path):
    pickled = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    pickled.write_bytes(b"not read")
    with pytest.raises(FlexIPError) as error:
        load_judges(dataclasses.replace(judges_config, aesthetic=pickled))
    assert_one_sentence(str(error.value), str(pickled), "safetensors")


def test_an_unknown_device_is_one_sentence(judges_config: JudgesConfig):
    with pytest.raises(FlexIPError) as error:
        load_judges(dataclasses.replace(judges_config, device="tpu"))
    assert_one_sentence(str(error.value), "[judges] device", "auto")
