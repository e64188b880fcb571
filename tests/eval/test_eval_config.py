"""The evaluation's config, benchmark folder and work list: checked up front, one sentence per problem.

No ComfyUI and no models: files the config names are empty stand-ins (only their existence is checked here).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flexip_eval.benchmark import read_benchmark
from flexip_eval.config import load_config
from flexip_eval.worklist import missing, rank_share, work_items
from flexip_model.errors import FlexIPError
from tests.support.assertions import assert_example_shows_defaults, assert_one_sentence
from tools.fixtures import REPO_ROOT
from tools.fixtures.evaluation import write_benchmark

pytestmark = pytest.mark.eval

EXAMPLE = REPO_ROOT / "flexip_eval" / "eval.example.toml"
BASE = """
[benchmark]
folder = "bench"
[model]
checkpoint = "sd15.safetensors"
clip_vision = "clip_h.safetensors"
dino = "dinov2.safetensors"
[judges]
clip = "judges/clip"
dino = "judges/dino"
aesthetic = "judges/aesthetic.safetensors"
[output]
dir = "out"
"""
FLEXIP = '[[methods]]\nname = "FlexIP"\nkind = "flexip"\nfile = "flexip.safetensors"\ngammas = [0.5, 1.0]\n'
BASE_METHOD = '[[methods]]\nname = "SD1.5"\nkind = "base"\n'


def write(folder: Path, text: str) -> Path:
    (folder / "flexip.safetensors").touch()
    path = folder / "eval.toml"
    path.write_text(text)
    return path


def test_example_config_loads_and_shows_the_defaults(tmp_path: Path):
    config_path = tmp_path / "eval.toml"
    shutil.copy(EXAMPLE, config_path)
    for name in (
        "runs/flexip_sd15/flexip_sd15-010000.safetensors",
        "models/ipadapter/ip-adapter_sd15.safetensors",
        "models/ipadapter/ip-adapter_sd15_light.safetensors",
    ):  # the methods' files must exist
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    config = load_config(config_path)
    assert [method.kind for method in config.methods] == ["flexip", "flexip", "ip_adapter", "base"]
    assert_example_shows_defaults(config, "flexip_eval/eval.example.toml")


@pytest.mark.parametrize(
    "methods, mention",
    [
        ("", "'methods'"),
        (FLEXIP.replace('"flexip"\nfile', '"flexipp"\nfile'), "kind"),
        (FLEXIP.replace("flexip.safetensors", "other.safetensors"), "other.safetensors"),
        (FLEXIP.replace("gammas = [0.5, 1.0]", 'gammas = [0.5]\nschedule = "0:1, 1:0"'), "not both"),
        (FLEXIP.replace("gammas = [0.5, 1.0]", "gammas = [1.5]"), "[0, 1]"),
        (FLEXIP.replace("gammas = [0.5, 1.0]", 'schedule = "0:1, 1:2"'), "schedule"),
        (BASE_METHOD + "gammas = [0.5]\n", "no gate"),
        (BASE_METHOD + 'file = "flexip.safetensors"\n', "file"),
        (FLEXIP + FLEXIP.replace('"FlexIP"', '"flexip"'), "used twice"),
        (FLEXIP.replace('"FlexIP"', '"../up"'), "name"),
        (FLEXIP + "colour = 1\n", "colour"),
    ],
)
def test_a_bad_method_is_one_sentence(tmp_path: Path, methods: str, mention: str):
    with pytest.raises(FlexIPError) as error:
        load_config(write(tmp_path, BASE + methods))
    assert_one_sentence(str(error.value), mention)


@pytest.mark.parametrize(
    "change, mention",
    [
        ("[generation]\nresolution = 500\n", "multiple of 8"),
        ("[generation]\nseeds = [1, 1]\n", "seeds"),
        ("[generation]\nsteps = 10000\n", "steps"),
        ('[generation]\ndevice = "tpu"\n', "device"),
        ("[benchmark2]\n", "benchmark2"),
    ],
)
def test_a_bad_setting_is_one_sentence(tmp_path: Path, change: str, mention: str):
    with pytest.raises(FlexIPError) as error:
        load_config(write(tmp_path, BASE + change + FLEXIP))
    assert_one_sentence(str(error.value), mention)


def test_benchmark_puts_the_class_noun_in_each_prompt(tmp_path: Path):
    write_benchmark(tmp_path / "bench")
    config = load_config(
        write(tmp_path, BASE.replace('folder = "bench"', 'folder = "bench"\nprompts_per_subject = 2') + FLEXIP)
    )
    benchmark = read_benchmark(config.benchmark)
    assert [(s.name, s.class_noun, len(s.images)) for s in benchmark.subjects] == [
        ("blue_cat", "cat", 3),
        ("red_toy", "toy", 3),
    ]
    assert benchmark.subject("blue_cat").prompts == ("a cat sleeping on a sofa", "a cat in a garden")  # live list
    assert benchmark.subject("red_toy").prompts == ("a toy on a beach", "a toy in the snow")  # object list


@pytest.mark.parametrize(
    "damage, mention",
    [
        (lambda bench: (bench / "green_dog").mkdir(), "green_dog"),
        (lambda bench: shutil.rmtree(bench / "red_toy"), "red_toy"),
        (lambda bench: [path.unlink() for path in (bench / "red_toy").iterdir()], "red_toy"),
        (
            lambda bench: (bench / "prompts.toml").write_text(
                (bench / "prompts.toml").read_text().replace("a {} on a beach", "a beach")
            ),
            "a beach",
        ),
        (lambda bench: (bench / "prompts.toml").unlink(), "prompts.toml"),
    ],
)
def test_a_bad_benchmark_folder_is_one_sentence(tmp_path: Path, damage, mention: str):
    damage(write_benchmark(tmp_path / "bench"))
    config = load_config(write(tmp_path, BASE + FLEXIP))
    with pytest.raises(FlexIPError) as error:
        read_benchmark(config.benchmark)
    assert_one_sentence(str(error.value), mention)


def test_ranks_share_the_work_list_with_no_image_twice(tmp_path: Path):
    write_benchmark(tmp_path / "bench")
    config = load_config(write(tmp_path, BASE + FLEXIP + BASE_METHOD))
    items = work_items(config.methods, read_benchmark(config.benchmark), config.generation.seeds)
    assert len(items) == 3 * 2 * 3 * 4  # rows (two γ and the base model) x subjects x prompts x seeds
    names = [item.image.as_posix() for item in items]
    assert len(set(names)) == len(names)
    assert names[:2] == ["images/FlexIP/gamma_0.5/blue_cat/p00_s0.png", "images/FlexIP/gamma_0.5/blue_cat/p00_s1.png"]
    assert names[-1] == "images/SD1.5/no_adapter/red_toy/p02_s3.png"
    for world_size in (1, 2, 3, 5):
        shares = [rank_share(items, rank, world_size) for rank in range(world_size)]
        assert sorted(item.image for share in shares for item in share) == sorted(item.image for item in items)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    done = tmp_path / "out" / items[0].image
    done.parent.mkdir(parents=True)
    done.touch()
    assert missing(items, tmp_path / "out") == items[1:]


DREAMBENCH_PROMPTS = """Classes
subject_name,class
blue_cat,cat
red_toy,toy

Prompts
Object Prompts
prompt_list = [
'a {0} {1} on a beach'.format(unique_token, class_token),
'a {0} {1} in the snow'.format(unique_token, class_token)
]

Live Subject Prompts
prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token)
]
"""


def test_dreambench_prompts_and_classes_file_is_read_as_it_is(tmp_path: Path):
    bench = write_benchmark(tmp_path / "bench")
    (bench / "prompts.toml").unlink()
    (bench / "prompts_and_classes.txt").write_text(DREAMBENCH_PROMPTS)  # DreamBench's own layout and syntax
    config = load_config(
        write(
            tmp_path, BASE.replace('folder = "bench"', 'folder = "bench"\nprompts = "prompts_and_classes.txt"') + FLEXIP
        )
    )
    benchmark = read_benchmark(config.benchmark)
    # the class noun in place of DreamBench's learned token and class; cats and dogs take the live list
    assert benchmark.subject("blue_cat").prompts == ("a cat in the jungle", "a cat wearing a red hat")
    assert benchmark.subject("red_toy").prompts == ("a toy on a beach", "a toy in the snow")
    (bench / "prompts_and_classes.txt").write_text(DREAMBENCH_PROMPTS.replace("Live Subject Prompts", "Live"))
    with pytest.raises(FlexIPError) as error:
        read_benchmark(config.benchmark)
    assert_one_sentence(str(error.value), "prompts_and_classes.txt", "Live Subject Prompts")
