"""`make demo-eval`: `python -m flexip_eval` end to end on generated models; it prints the table.

Two drawn subjects, two prompts each, FlexIP at two γ, IP-Adapter at γ = 1 and the base model, one
seed, 64 px, 2 steps (tools/fixtures/evaluation.py). Every model, adapter and judge has RANDOM
weights: the run shows the command works, the numbers mean nothing. Files go to .cache/demo-eval/;
a second run reuses its images and scores.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tools.fixtures.evaluation import write_evaluation
from tools.fixtures.paths import CACHE_DIR, REPO_ROOT

FOLDER = CACHE_DIR / "demo-eval"


def main() -> int:
    print("demo-eval: generating the benchmark (2 drawn subjects, 2 prompts each) and random-weight models")
    config = write_evaluation(FOLDER, gammas=(0.25, 1.0), prompts=2, seeds=(0,))
    print(f"demo-eval: python -m flexip_eval --config {config}")
    result = subprocess.run(
        [sys.executable, "-m", "flexip_eval", "--config", str(config)],
        cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
    )
    if result.returncode != 0:
        print(f"demo-eval: the evaluation failed (exit {result.returncode}); the reason is above.")
        return result.returncode
    output = FOLDER / "out"
    print(
        "demo-eval: every model here (UNet, encoders, adapters, judges) has RANDOM weights, so these numbers "
        "are meaningless; they show the pipeline runs end to end."
    )
    print(f"demo-eval: images, results.jsonl, table.csv, tradeoff.png and contact sheets are in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
