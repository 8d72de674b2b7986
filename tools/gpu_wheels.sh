#!/bin/sh
# Wheels for part 6 of tools/gpu_check.py (the notebooks) on a GPU machine that has torch but no network and no
# Jupyter: run this where pip reaches a package index, carry .whl/ (git-ignored) to the GPU machine, and there
#   python3 -m pip install -q --no-index --find-links .whl $(cat .whl/requirements.txt)
# pip takes from .whl/ only what that Python lacks (its torch, numpy, ... stay).
#   tools/gpu_wheels.sh            # for CPython 3.12 on x86-64 Linux (PYVER=3.11 ... for another Python)
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
PACKAGES="nbclient nbformat ipykernel jupytext plotly ipywidgets anywidget"
mkdir -p .whl
$PY -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl $PACKAGES
echo "$PACKAGES" > .whl/requirements.txt
du -sh .whl
