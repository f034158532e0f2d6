# Set-up and everyday targets. `make setup` builds .venv from this repo's own files only.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS ?= 1

.PHONY: setup setup-data setup-browser demo demo-pipeline demo-solve test test-slow bench bench-latency clean

setup: $(BIN)/mdp setup-data setup-browser

# builtin:fashion-mnist (the demo/test/bench data) is the Debian package dataset-fashion-mnist (MIT licence).
setup-data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "make setup: builtin:fashion-mnist needs the Debian package dataset-fashion-mnist;" \
		     "run 'sudo apt-get install dataset-fashion-mnist', or set MDP_FASHION_MNIST_DIR to a folder" \
		     "holding the four Fashion-MNIST IDX .gz files (tests that need it are skipped meanwhile)" >&2; \
	fi

# tests/test_report.py opens the HTML of `mdp report` in headless Chromium (Debian package chromium) to check
# that it renders with every plot decoded.
setup-browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "make setup: the report's rendering test needs headless Chromium;" \
		     "run 'sudo apt-get install chromium' (that test is skipped meanwhile)" >&2; \
	fi

$(BIN)/mdp: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch/torchvision are pinned to the builds that lie on this machine's disk (see README).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	# bytecode for the editable package too (an installed one has it): `mdp solve` starts without compiling
	$(BIN)/python -m compileall -q mdp_cli
	touch $(BIN)/mdp

# The main job on the embedded default: profile -> score -> solve (budget 0.5) -> export of a random-init
# ResNet-18 at 64 px scored on real Fashion-MNIST images; ~1 min on 2 cores after set-up (measured 54 s, with the budget sweep and runs/demo/report.html).
demo: setup
	$(BIN)/mdp run configs/demo.yaml --run-dir runs/demo
	$(BIN)/mdp report runs/demo

demo-pipeline: demo

# The solver alone on the bundled example problem.
demo-solve: setup
	$(BIN)/mdp solve --example --budget 0.5

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
