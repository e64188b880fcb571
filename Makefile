# Developer entry points. `make demo` and `make test` work on a fresh clone.
PY := .venv/bin/python
export COMFYUI_PATH ?= $(CURDIR)/.cache/comfyui

.PHONY: setup test test-unit test-comfy test-train test-eval test-server test-ui test-gpu demo bench bench-train clean

setup:
	bash tools/setup.sh

test: setup
	$(PY) -m pytest tests

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
