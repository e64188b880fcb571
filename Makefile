# Developer entry points. `make demo` and `make test` work on a fresh clone.
PY := .venv/bin/python
export COMFYUI_PATH ?= $(CURDIR)/.cache/comfyui
# ruff's cache under .cache (ignored by git), not .ruff_cache in the tree.
RUFF := RUFF_CACHE_DIR="$(CURDIR)/.cache/ruff" $(PY) -m ruff

.PHONY: setup validate lint format test test-unit test-comfy test-train test-eval test-server test-ui test-gpu demo bench bench-train clean

setup:
	bash tools/setup.sh

# The Registry's check of pyproject.toml (comfy-cli, pinned in tools/requirements-dev.txt), with
# no prompt, no telemetry and its config under .cache. It exits 0 on a malformed field (it only
# warns, and publishing then drops the field), so any warning fails here.
validate: setup
	@mkdir -p .cache/comfy-cli
	@out=$$(HOME="$(CURDIR)/.cache/comfy-cli" DO_NOT_TRACK=1 RUFF_CACHE_DIR="$(CURDIR)/.cache/ruff" \
		$(PY) -m comfy_cli --skip-prompt --no-json node validate </dev/null 2>&1); status=$$?; \
	echo "$$out"; \
	if [ $$status -ne 0 ] || echo "$$out" | grep -qi warning; then \
		echo "validate: comfy node validate failed or warned (above): fix pyproject.toml (docs.comfy.org/registry/specifications)" >&2; \
		exit 1; \
	fi

# Static checks (docs/development.md, "Static checks"). Every step runs; each failure ends in one
# line naming its tool, and lint fails if any did. basedpyright types against the pinned host in
# .cache/comfyui (extraPaths in [tool.basedpyright]), whatever COMFYUI_PATH says.
lint: setup
	@status=0; \
	$(RUFF) check . || { echo "lint: FAILED: ruff check (lint rules, [tool.ruff.lint]); make format fixes many" >&2; status=1; }; \
	$(RUFF) format --check . || { echo "lint: FAILED: ruff format --check (files listed above); run make format" >&2; status=1; }; \
	.venv/bin/basedpyright || { echo "lint: FAILED: basedpyright (types in flexip_model/ and nodes/, [tool.basedpyright])" >&2; status=1; }; \
	.venv/bin/lint-imports --no-logo --cache-dir .cache/import-linter || { echo "lint: FAILED: lint-imports (layer contracts, [tool.importlinter])" >&2; status=1; }; \
	exit $$status

# Rewrites the tree the way lint wants it: ruff's safe fixes, then ruff's format. What ruff cannot
# fix is listed, to fix by hand (make lint fails on it).
format: setup
	$(RUFF) check --fix --exit-zero .
	$(RUFF) format .

test: setup validate lint
	$(PY) -m pytest tests --durations=20

test-unit test-comfy test-train test-eval test-server test-ui test-gpu: setup
	$(PY) -m pytest tests -m $(subst test-,,$@)

demo: setup
	$(PY) -m tools.demo

# python -m flexip_eval end to end on generated random-weight models (the numbers mean nothing)
.PHONY: demo-eval
demo-eval: setup
	$(PY) -m tools.demo_eval

# make bench ARGS="--device cuda" for the GPU figures
bench: setup
	$(PY) -m benchmarks $(ARGS)

bench-train: setup
	$(PY) -m benchmarks.train_data

clean:
	rm -rf .cache output
