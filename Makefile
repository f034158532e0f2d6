# Set-up and everyday targets. `make setup` builds .venv from this repo's own files only.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo demo-pipeline test test-slow bench bench-latency clean

setup: $(BIN)/mdp

$(BIN)/mdp: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch/torchvision are pinned to the builds that lie on this machine's disk (see README).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/mdp

demo: setup
	$(BIN)/mdp solve --example --budget 0.5

# The full pipeline (profile -> score -> solve -> export) on a random-init ResNet-18 at 64 px: ~30 s on 2 cores.
demo-pipeline: setup
	$(BIN)/mdp run configs/demo.yaml --run-dir runs/demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python scripts/bench_solve.py

bench-latency: setup
	$(BIN)/python scripts/bench_latency_model.py --model resnet50 --resolution 64 --configs 32

clean:
	rm -rf $(VENV) build *.egg-info
