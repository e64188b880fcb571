#!/usr/bin/env bash
# The GPU checks in one run: the gpu test layer (the comfy and server
# tests FlexIP's device code runs in, on CUDA in fp16 and bf16), `python -m benchmarks --device cuda`
# and the FLUX blend's added time per step (`python -m benchmarks.flux_gpu`, one line), within
# 9 minutes (a device call may run 10).
# Needs a set-up checkout (make setup: .venv with its CUDA build of torch, .cache/comfyui) and a
# visible NVIDIA GPU. Writes gpu-tests.log, gpu-tests.xml, bench.jsonl, bench.log, flux.jsonl and
# flux.log to $OUT when it is set (else to .cache/gpu-check/). Exit status: 0 when all three parts
# passed, else that of the first failing one.
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
timeout 320 "$PY" -m pytest tests -m gpu -v --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}

# the CUDA figures; the server figure is a CPU one (make bench) and is skipped to stay short
timeout 150 "$PY" -m benchmarks --device cuda --no-server --budget 110 --max-rounds 5 \
    > "$out/bench.jsonl" 2> "$out/bench.log"
bench=$?
cat "$out/bench.jsonl"

# FLUX: a full-width (3072) random FLUX and two InfuseNets, 1 + 1 blocks, bf16: the blend of both
# stages against one stage alone, A-B-B-A rounds for 25 s (about 45 s in all)
timeout 60 "$PY" -m benchmarks.flux_gpu --device cuda --budget 25 > "$out/flux.jsonl" 2> "$out/flux.log"
flux=$?
cat "$out/flux.jsonl"

echo "gpu_check: gpu layer exit $tests, bench exit $bench, flux exit $flux; files in $out"
[ "$tests" -ne 0 ] && exit "$tests"
[ "$bench" -ne 0 ] && exit "$bench"
exit "$flux"
