# Set-up and everyday targets. `make setup` builds .venv from this repo's own files only.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test test-slow bench clean

setup: $(BIN)/mdp

$(BIN)/mdp: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch/torchvision are pinned to the builds that lie on this machine's disk (see README).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/mdp

demo: setup
	$(BIN)/mdp solve --example --budget 0.5

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python scripts/bench_solve.py

clean:
	rm -rf $(VENV) build *.egg-info
