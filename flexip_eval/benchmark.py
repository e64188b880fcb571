"""A DreamBench-style benchmark folder: one folder of images per subject and a prompts file.

Layout (DreamBench's dataset/ folder plus one small TOML file)::

    benchmark/
      prompts.toml
      dog/00.jpg 01.jpg ...        # the subject's photos (.jpg, .jpeg, .png, .webp), sorted by name
      backpack/00.jpg ...

prompts.toml::

    [prompts]                      # {} stands for the subject
    object = ["a {} in the jungle", "a {} on the beach"]
    live = ["a {} in the jungle", "a {} wearing a red hat"]

    [subjects.dog]                 # one table per subject folder
    class_noun = "dog"
    live = true                    # live subjects (animals) use the live list, objects the object list
    [subjects.backpack]
    class_noun = "backpack"

FlexIP and IP-Adapter are zero-shot image adapters with no learned token, so {} becomes the class
noun ("a dog in the jungle"); that same prompt is what CLIP-T scores the image against.

DreamBench's own `prompts_and_classes.txt` works as the prompts file too ([benchmark] prompts =
"prompts_and_classes.txt"): its Classes list gives each subject's class noun, its Object and Live
Subject prompt lists ('a {0} {1} in the jungle', {0} the learned token, {1} the class) become
"a {} in the jungle", and, as in DreamBench, the dogs and cats are its live subjects.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from flexip_host.images import decode_image, fit_square
from flexip_model.errors import FlexIPError
from flexip_model.mapping import Source, dataclass_from_mapping

from .config import BenchmarkConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PROMPTS = 1000
DREAMBENCH_LIVE_CLASSES = ("dog", "cat")  # DreamBench's 9 live subjects are its dogs and cats
DREAMBENCH_SECTIONS = ("Classes", "Object Prompts", "Live Subject Prompts")


@dataclass(frozen=True)
class PromptLists:
    object: tuple[str, ...] = ()
    live: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubjectEntry:
    class_noun: str
    live: bool = False


@dataclass(frozen=True)
class Subject:
    """One subject: its photos and the prompts it is generated with (class noun already in place)."""

    name: str
    class_noun: str
    images: tuple[Path, ...]
    prompts: tuple[str, ...]

    def condition(self, count: int) -> tuple[Path, ...]:
        """The photos that condition the adapters: the first `count` (0 = all)."""
        return self.images[:count] if count else self.images


@dataclass(frozen=True)
class Benchmark:
    folder: Path
    subjects: tuple[Subject, ...]

    def subject(self, name: str) -> Subject:
        return next(subject for subject in self.subjects if subject.name == name)


def _dreambench_prompts(path: Path, text: str) -> dict:
    """DreamBench's prompts_and_classes.txt as the mapping prompts.toml would hold."""
    starts = [text.find(section) for section in DREAMBENCH_SECTIONS]
    if min(starts) < 0 or starts != sorted(starts):
        raise FlexIPError(
            f"{path} is not DreamBench's prompts_and_classes.txt (it needs the sections "
            f"{', '.join(DREAMBENCH_SECTIONS)} in that order): use DreamBench's file or a prompts.toml."
        )
    classes = re.findall(r"^\s*([\w-]+)\s*,\s*([^,\n]+?)\s*$", text[starts[0] : starts[1]], flags=re.M)
    subjects = {
        name: {"class_noun": noun, "live": noun in DREAMBENCH_LIVE_CLASSES}
        for name, noun in classes
        if name != "subject_name"
    }  # the CSV header line
    lists = {
        kind: [prompt.replace("{0} {1}", "{}") for prompt in re.findall(r"'([^']*)'", part)]
        for kind, part in (("object", text[starts[1] : starts[2]]), ("live", text[starts[2] :]))
    }
    return {"prompts": lists, "subjects": subjects}


def _read_prompts(path: Path) -> tuple[PromptLists, dict[str, SubjectEntry]]:
    try:
        text = path.read_text(encoding="utf-8")
        raw = _dreambench_prompts(path, text) if path.suffix == ".txt" else tomllib.loads(text)
    except FileNotFoundError:
        raise FlexIPError(
            f"the benchmark's prompts file {path} was not found: write it as described in "
            "flexip_eval/benchmark.py, or set [benchmark] prompts to its name."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise FlexIPError(f"{path.name} is not valid TOML ({error}): fix the syntax.") from None
    source = Source(path.name, "see flexip_eval/benchmark.py for the prompts file's format")
    unknown = sorted(set(raw) - {"prompts", "subjects"})
    if unknown:
        raise source.error(f"has unknown table {unknown[0]!r} (known: prompts, subjects)")
    lists = dataclass_from_mapping(PromptLists, raw.get("prompts", {}), source.child("prompts"))
    tables = raw.get("subjects", {})
    if not isinstance(tables, dict) or not tables:
        raise source.error("has no [subjects.<folder>] tables")
    entries = {
        name: dataclass_from_mapping(SubjectEntry, table, source.child(f"subjects.{name}"))
        for name, table in tables.items()
    }
    for kind, prompts in (("object", lists.object), ("live", lists.live)):
        if len(prompts) > MAX_PROMPTS:
            raise source.error(f"[prompts] {kind} lists {len(prompts)} prompts, over {MAX_PROMPTS}")
        for prompt in prompts:
            if prompt.count("{}") != 1:
                raise source.error(f"[prompts] {kind} prompt {prompt!r} must hold {{}} once, where the subject goes")
    for name, entry in entries.items():
        if not entry.class_noun.strip():
            raise source.error(f"[subjects.{name}] class_noun is empty")
        if not (lists.live if entry.live else lists.object):
            raise source.error(
                f"[subjects.{name}] is {'live' if entry.live else 'an object'} but [prompts] "
                f"{'live' if entry.live else 'object'} is empty"
            )
    return lists, entries


def read_benchmark(config: BenchmarkConfig) -> Benchmark:
    """The subjects of the benchmark folder (all, or [benchmark] subjects), each with its photos and prompts."""
    folder = config.folder
    if not folder.is_dir():
        raise FlexIPError(
            f"[benchmark] folder {folder} was not found: give the folder that holds one folder of "
            "images per subject and the prompts file."
        )
    lists, entries = _read_prompts(folder / config.prompts)
    folders = sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    for name in folders:
        if name not in entries:
            raise FlexIPError(
                f"the benchmark folder {name} has no [subjects.{name}] table in {config.prompts}: "
                f'add one (class_noun = "...") or move the folder out of {folder}.'
            )
    for name in list(entries) + list(config.subjects):
        if name not in folders:
            raise FlexIPError(
                f"the subject {name!r} ({config.prompts} or [benchmark] subjects) has no folder in "
                f"{folder}: add the folder of its images or remove the name."
            )
    subjects = []
    for name in config.subjects or folders:
        entry = entries[name]
        images = tuple(
            sorted(
                path for path in (folder / name).iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            )
        )
        if not images:
            raise FlexIPError(
                f"the subject folder {folder / name} holds no image ({', '.join(IMAGE_SUFFIXES)}): "
                "add the subject's photos or remove the subject."
            )
        prompts = lists.live if entry.live else lists.object
        if config.prompts_per_subject:
            prompts = prompts[: config.prompts_per_subject]
        subjects.append(
            Subject(name, entry.class_noun, images, tuple(p.replace("{}", entry.class_noun) for p in prompts))
        )
    return Benchmark(folder, tuple(subjects))


def read_image(path: Path, size: int | None = None) -> torch.Tensor:
    """A photo as [H, W, 3] float in [0, 1] (fitted to size×size when given); FlexIPError naming the file."""
    pixels = decode_image(path.read_bytes(), str(path), fix="re-save it as PNG or JPEG")
    return fit_square(pixels, size) if size else pixels


def subject_images(paths: tuple[Path, ...], size: int) -> torch.Tensor:
    """Photos as one ComfyUI IMAGE batch [N, size, size, 3] (short side resized, center-cropped)."""
    return torch.stack([read_image(path, size) for path in paths])
