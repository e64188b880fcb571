#!/usr/bin/env bash
# The GPU checks in one run: the gpu test layer (the comfy and server
# tests FlexIP's device code runs in, on CUDA in fp16 and bf16) and `python -m benchmarks --device cuda`,
# within 9 minutes (a device call may run 10).
# Needs a set-up checkout (make setup: .venv with its CUDA build of torch, .cache/comfyui) and a
# visible NVIDIA GPU. Writes gpu-tests.log, gpu-tests.xml, bench.jsonl and bench.log to $OUT when it
# is set (else to .cache/gpu-check/). Exit status: 0 when both parts passed, else that of the failing one.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export COMFYUI_PATH=${COMFYUI_PATH:-$PWD/.cache/comfyui} PYTHONUNBUFFERED=1
out=${OUT:-.cache/gpu-check}
mkdir -p "$out"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device is visible to torch ($PY); nothing to check here." >&2
    exit 2
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'

# the layer's four subprocesses (comfy and server, fp16 and bf16)
timeout 330 "$PY" -m pytest tests -m gpu -v --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}

# the CUDA figures; the server figure is a CPU one (make bench) and is skipped to stay short
timeout 200 "$PY" -m benchmarks --device cuda --no-server --budget 150 --max-rounds 5 \
    > "$out/bench.jsonl" 2> "$out/bench.log"
bench=$?
cat "$out/bench.jsonl"

echo "gpu_check: gpu layer exit $tests, bench exit $bench; files in $out"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
