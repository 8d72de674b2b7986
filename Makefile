# Two commands do all the set-up on a fresh machine (Python 3.10+ and the package registries):
#   make course   - create .venv if missing, install, open the course in JupyterLab
#   make test     - create .venv if missing, install, run every test (unit, notebooks, browser)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Where pip looks for torch. Empty (the default) = pip's own index: on this project's machines that finds the CPU
# wheel, but on an ordinary Linux laptop PyPI serves the multi-GB CUDA build. For the CPU-only wheel:
#   make course TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: course test test-fast lint notebooks check-notebooks install browser clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned (never 2.14); TORCH_INDEX picks the wheel index (see above)
	$(BIN)/python -m pip install "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# JupyterLab refuses to start as root (containers, Colab-like VMs) unless told that it is intended
course: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# Debian's chromium for the browser tests (root with apt-get only; elsewhere those tests skip)
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

# ruff: pycodestyle, pyflakes, import order, bugbear (configuration in pyproject.toml); never reformats
lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) browser
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

# the quick loop while editing (under a minute on 2 cores): no test marked slow (> ~2 s) or browser, no notebooks
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser" tests

# notebooks/*.ipynb are built from notebooks/src/*.py (jupytext percent format): edit the source, then rebuild.
# Executes every notebook (about 3 min on 2 cores); NB=02 builds only the notebooks whose names start with 02
notebooks: $(STAMP)
	$(BIN)/python tools/build_notebooks.py --threads 1 $(NB)

# fast, no kernel: stored notebooks == sources, clean, and every number the prose quotes is in a checked output
check-notebooks: $(STAMP)
	$(BIN)/python tools/build_notebooks.py --check

# The course on a GPU, measured (docs/fp8.md, "The GPU check"): unit tests, FP8 simulation vs real FP8 GEMMs,
# throughput, decoding, training, notebooks; about 6 minutes; writes docs/results/gpu_check_<device>.{json,md}.
# Needs no install: GPU_PYTHON (default: .venv's python if there is one, else python3) must have CUDA torch.
# GPU_CHECK_ARGS passes options, e.g. GPU_CHECK_ARGS="--parts simulation throughput".
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
