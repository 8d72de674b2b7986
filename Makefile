# Two commands do all the set-up on a fresh machine (Python 3.10-3.13 and the package registries):
#   make course   - create .venv if missing, install, open your working copy of the course in JupyterLab
#   make test     - create .venv if missing, install, run every test (unit, notebooks, browser)
# The Python: the first of python3.11 (tested by CI), 3.12, 3.13, 3.10, python3 that runs; or make ... PYTHON=python3.12
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3.10 python3; do \
  $$p -c 'import sys; assert (3, 10) <= sys.version_info[:2] < (3, 14)' 2>/dev/null && { command -v $$p; break; }; done)
# Where pip gets torch 2.13.0. Default: PyTorch's CPU-only build where there is no NVIDIA GPU (`nvidia-smi` absent),
# pip's default index (PyPI: the CUDA build on Linux) where there is one. Override either way:
#   make course TORCH_INDEX=                                          pip's default index (CUDA build on Linux)
#   make course TORCH_INDEX=https://download.pytorch.org/whl/cpu      CPU only
#   make course TORCH_INDEX=https://download.pytorch.org/whl/cu128    a CUDA 12.8 build
# Changing it switches the torch of an existing .venv (tools/venv_torch.py); `make clean-venv` starts afresh.
CPU_INDEX   := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,$(CPU_INDEX))
VENV   ?= .venv
BIN    := $(VENV)/bin
# the stamp names the index, so that a new TORCH_INDEX reruns the install
STAMP  := $(VENV)/.installed-torch-$(or $(notdir $(patsubst %/,%,$(TORCH_INDEX))),pypi)
COURSE_COPY := my-course
MATRIX ?= 3.11 3.12 3.13

.PHONY: course test test-fast lint notebooks check-notebooks install venv browser clean-venv colab-zip matrix

# a working venv with pip: made if missing; a half-made one (Debian's python3 without python3-venv leaves one
# without pip) is repaired with ensurepip, or named with the fix
venv:
	@if [ -e $(VENV) ] && ! $(BIN)/python -c '' 2>/dev/null; then \
	  echo "error: $(VENV)/bin/python does not run (its Python was removed or moved?): make clean-venv, then run make again" >&2; exit 1; fi
	@if [ ! -e $(VENV) ]; then \
	  if [ -z "$(PYTHON)" ]; then echo "error: no Python 3.10-3.13 found; install one, or give it: make ... PYTHON=/path/to/python3" >&2; exit 1; fi; \
	  echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "error: $(PYTHON) -m venv failed. On Debian/Ubuntu install the venv module (sudo apt install python3-venv, or python3.X-venv for your version), then run make again" >&2; exit 1; }; fi
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  echo "$(VENV) has no pip (made without python3-venv?): repairing it with ensurepip"; \
	  $(BIN)/python -m ensurepip --upgrade >/dev/null 2>&1 || { echo "error: $(VENV) has no pip and ensurepip is missing. On Debian/Ubuntu: sudo apt install python3-venv (or python3.X-venv), then make clean-venv and run make again" >&2; exit 1; }; fi

$(STAMP): pyproject.toml tools/venv_torch.py | venv
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned (never 2.14), from TORCH_INDEX (see above); switches the build when the index changed
	$(BIN)/python tools/venv_torch.py "$(TORCH_INDEX)"
	$(BIN)/python -m pip install -e ".[course,test]"
	rm -f $(VENV)/.installed-torch-*
	touch $(STAMP)

install: $(STAMP)

# Opens YOUR copy of the notebooks ($(COURSE_COPY)/: untracked, made on the first run, never overwritten without
# asking; tools/course_copy.py). The course's own notebooks/ stay as built, so `git status` stays clean.
# JupyterLab refuses to start as root (containers, Colab-like VMs) unless told that it is intended.
course: $(STAMP)
	$(BIN)/python tools/course_copy.py $(COURSE_COPY)
	$(BIN)/jupyter lab $(COURSE_COPY)/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# dist/mtp-lab.zip, to upload to Colab: the project under one top folder mtp-lab/, without .venv, .git or outputs
colab-zip: $(STAMP)
	$(BIN)/python tools/colab_zip.py dist/mtp-lab.zip

# Debian's chromium for the browser tests (root with apt-get only). Where it cannot be installed, the browser tests
# skip with a message (or fail, with MTP_LAB_REQUIRE_BROWSER=1 as in CI); the other tests run either way.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "make browser: apt-get could not install chromium; the browser tests will be skipped"; fi

# ruff: pycodestyle, pyflakes, import order, bugbear (configuration in pyproject.toml); never reformats
lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) browser
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

# the quick loop while editing (under a minute on 2 cores): no test marked slow (> ~2 s) or browser, no notebooks
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser" tests

# `make test` under each Python of MATRIX, each in its own venv (.venv-3.12, ...), with the same stored notebooks.
# A Python is found as python3.X on PATH or in pyenv's versions. Not run by CI (one Python there).
matrix:
	@for v in $(MATRIX); do \
	  py=""; for c in python$$v $$(pyenv root 2>/dev/null)/versions/$$v*/bin/python$$v; do \
	    if $$c -c '' 2>/dev/null; then py=$$(command -v $$c); break; fi; done; \
	  if [ -z "$$py" ]; then echo "matrix: no python$$v found (install it, e.g. pyenv install $$v)" >&2; exit 1; fi; \
	  start=$$(date +%s); echo "== matrix: Python $$v ($$py) in .venv-$$v"; \
	  $(MAKE) --no-print-directory test VENV=.venv-$$v PYTHON=$$py || { echo "== matrix: Python $$v FAILED" >&2; exit 1; }; \
	  echo "== matrix: Python $$v passed make test in $$(( $$(date +%s) - start )) s"; done

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

# removes the venv (VENV=.venv-3.12 for a matrix one); the next make creates it again
clean-venv:
	rm -rf $(VENV)
