"""`python -m flexip_eval` end to end on generated models (tools/fixtures/evaluation.py), CPU, subprocesses.

A 2-subject, 2-prompt, 2-seed evaluation of FlexIP at two γ and with a gate schedule, IP-Adapter at
γ = 1 and the base model: 40 images at 64 px, 2 sampling steps, random judges. The numbers mean nothing;
what is tested is that every image is made once, scored once and reported.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.assertions import assert_one_sentence
from tests.support.smoke import run_process, trainer_env
from tools.fixtures.evaluation import write_evaluation

pytestmark = pytest.mark.eval

METRICS = ("clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic")
SCHEDULE = "0:1.0, 1:0.25"
IMAGES = 5 * 2 * 2 * 2  # rows (FlexIP γ 0.25 and 1, its schedule, IP-Adapter, base) x subjects x prompts x seeds


def evaluate(config: Path, ranks: int = 1) -> str:
    """Run the command (under torchrun with `ranks` CPU processes when more than one); asserts exit 0."""
    command = [sys.executable, "-m", "flexip_eval", "--config", str(config)]
    if ranks > 1:
        command[1:3] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "flexip_eval"]
    # torchrun's scratch folder (torchelastic_*) beside the run, which tmp_path removes
    result = run_process(command, timeout=300, env=dict(trainer_env(), TMPDIR=str(config.parent)))
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def written(output: Path) -> dict[str, int]:
    """Every PNG and score file under `output` with its modification time in ns."""
    return {
        path.relative_to(output).as_posix(): path.stat().st_mtime_ns
        for path in (output / "images").rglob("*")
        if path.is_file()
    }


def generated(output: Path) -> list[str]:
    """The images the runs made, from every rank's log, in log order."""
    return [
        json.loads(line)["image"]
        for path in sorted((output / "logs").glob("generated-rank*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def first_run(world: Path) -> Path:
    evaluate(write_evaluation(world, schedule=SCHEDULE))
    return world / "out"


def test_evaluation_scores_every_image_and_writes_the_reports(first_run: Path):
    records = [json.loads(line) for line in (first_run / "results.jsonl").read_text().splitlines()]
    assert len(records) == IMAGES and len({record["image"] for record in records}) == IMAGES
    for record in records:
        assert all(isinstance(record[name], float) for name in METRICS), record
        with Image.open(first_run / record["image"]) as image:
            assert image.size == (64, 64)
            stored = json.loads(image.text["flexip_eval"])
        assert stored["item"] == {key: record[key] for key in stored["item"]}  # the PNG says what it shows
        assert stored["settings"]["steps"] == 2 and stored["settings"]["resolution"] == 64
    rows = list(csv.DictReader(io.StringIO((first_run / "table.csv").read_text())))
    assert [(row["method"], row["gamma"]) for row in rows] == [
        ("FlexIP", "0.25"),
        ("FlexIP", "1.0"),
        ("FlexIP schedule", ""),
        ("IP-Adapter", "1.0"),
        ("SD1.5", ""),
    ]
    assert all(row["mrank"] for row in rows)
    table = (first_run / "table.md").read_text()
    assert all(name in table for name in ("FlexIP", "IP-Adapter", "SD1.5"))
    with Image.open(first_run / "tradeoff.png") as chart:
        assert chart.size[0] > chart.size[1]
    for subject in ("red_toy", "blue_cat"):  # a label column, then 2 prompts x 2 seeds; the photos + 5 rows
        with Image.open(first_run / "sheets" / f"{subject}.png") as sheet:
            assert sheet.size == (160 + 4 * 128, 6 * 128)
    assert sorted(generated(first_run)) == sorted(record["image"] for record in records)


def test_each_row_samples_its_own_model(first_run: Path):
    # one prompt and seed in every row: each γ, the schedule, the IP-Adapter pair and the unpatched model
    # give another image (the generated adapters' weights are large enough to move every pixel value)
    images = {}
    for row in (
        "FlexIP/gamma_0.25",
        "FlexIP/gamma_1",
        "FlexIP schedule/schedule",
        "IP-Adapter/gamma_1",
        "SD1.5/no_adapter",
    ):
        with Image.open(first_run / "images" / row / "red_toy" / "p00_s0.png") as image:
            images[row] = image.tobytes()
    assert len(set(images.values())) == len(images)
    with Image.open(first_run / "images" / "SD1.5/no_adapter/red_toy/p00_s1.png") as other_seed:
        assert other_seed.tobytes() != images["SD1.5/no_adapter"]


def test_second_run_writes_no_image_and_gives_the_same_table(world: Path, first_run: Path):
    before, table = written(first_run), (first_run / "table.md").read_text()
    log = evaluate(world / "out.toml")
    assert f"0 of {IMAGES} images to make, 0 to score" in log
    assert written(first_run) == before  # no PNG and no score file written again
    assert (first_run / "table.md").read_text() == table
    assert len(generated(first_run)) == IMAGES


def test_two_torchrun_ranks_split_the_images_and_make_none_twice(world: Path, first_run: Path):
    output = world / "ranks"
    evaluate(write_evaluation(world, output="ranks", schedule=SCHEDULE), ranks=2)
    logs = [
        [
            json.loads(line)["image"]
            for line in (output / "logs" / f"generated-rank{rank}.jsonl").read_text().splitlines()
        ]
        for rank in (0, 1)
    ]
    assert [len(images) for images in logs] == [IMAGES // 2] * 2
    assert not set(logs[0]) & set(logs[1])
    assert sorted(logs[0] + logs[1]) == sorted(
        json.loads(line)["image"] for line in (first_run / "results.jsonl").read_text().splitlines()
    )
    one = {
        record["image"]: record for record in map(json.loads, (first_run / "results.jsonl").read_text().splitlines())
    }
    two = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    assert [record["image"] for record in two] == list(one)  # rank 0 merged every rank's images, in work order
    for record in two:
        # each image comes from its own seed's noise whatever batch it was sampled in; batch size may
        # change float rounding (~1e-6) and, through 8-bit PNG rounding, a pixel by one level: metrics
        # move by far less than 1e-3, while another image moves them by O(0.01) or more
        for name in METRICS:
            assert record[name] == pytest.approx(one[record["image"]][name], abs=1e-3), (record["image"], name)


def test_missing_judge_model_is_one_sentence(world: Path):
    missing = world / "judges" / "no-clip-here"
    config = write_evaluation(world, output="no_judge", judges=missing)
    result = run_process([sys.executable, "-m", "flexip_eval", "--config", str(config)], timeout=120)
    assert result.returncode == 1, result.stderr[-4000:]
    message = result.stderr.strip().splitlines()[-1]
    assert_one_sentence(message, str(missing))
    assert not (world / "no_judge" / "images").exists()  # stopped before any image was made


def test_images_made_with_other_settings_stop_the_run(world: Path, first_run: Path):
    config = world / "more_steps.toml"  # the first run's config and folder, one sampling step more
    config.write_text((world / "out.toml").read_text().replace("steps = 2", "steps = 3"))
    before = written(first_run)
    result = run_process([sys.executable, "-m", "flexip_eval", "--config", str(config)], timeout=120)
    assert result.returncode == 1, result.stderr[-4000:]
    assert_one_sentence(result.stderr.strip().splitlines()[-1], "steps", "[output] dir")
    assert written(first_run) == before
