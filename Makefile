# Developer entry points. `make demo` and `make test` work on a fresh clone.
PY := .venv/bin/python
export COMFYUI_PATH ?= $(CURDIR)/.cache/comfyui

.PHONY: setup validate test test-unit test-comfy test-train test-eval test-server test-ui test-gpu demo bench bench-train clean

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

test: setup validate
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
