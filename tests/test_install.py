"""Wherever a learner opens the course: the venv and torch choice of the Makefile, a wheel that works without the
checkout, the Colab steps giving live widgets, the learner's working copy, the Colab archive, and views that say
why they are static."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
from venvs import pip_install, venv_with_torch

from mtp_lab.viz import common

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- torch and the venv

def make_dry(*args: str, path: str | None = None) -> str:
    """What `make -n` would run (nothing is run)."""
    env = {k: v for k, v in os.environ.items()    # not the variables of a make that runs these tests (CI: TORCH_INDEX=)
           if k not in ("TORCH_INDEX", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL")}
    env["PATH"] = path or os.environ["PATH"]
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True).stdout


def test_torch_index_cpu_without_nvidia_smi_pypi_with_it_override_either_way(tmp_path):
    venv = f"VENV={tmp_path}/v"
    no_gpu = make_dry("install", venv, path="/usr/bin:/bin")
    assert 'venv_torch.py "https://download.pytorch.org/whl/cpu"' in no_gpu and ".installed-torch-cpu" in no_gpu
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    gpu = make_dry("install", venv, path=f"{tmp_path}/bin:/usr/bin:/bin")
    assert 'venv_torch.py ""' in gpu and ".installed-torch-pypi" in gpu
    chosen = make_dry("install", venv, "TORCH_INDEX=https://download.pytorch.org/whl/cu128", path="/usr/bin:/bin")
    assert 'venv_torch.py "https://download.pytorch.org/whl/cu128"' in chosen and ".installed-torch-cu128" in chosen
    assert 'venv_torch.py ""' in make_dry("install", venv, "TORCH_INDEX=", path="/usr/bin:/bin")


def test_ci_keeps_pips_default_index():
    run = (ROOT / ".ci" / "run").read_text()
    assert "make test TORCH_INDEX=\n" in run and "make lint TORCH_INDEX=\n" in run


def test_switching_the_index_reinstalls_torch_and_keeping_it_does_not():
    steps = tool("venv_torch").steps
    cpu = "https://download.pytorch.org/whl/cpu"
    assert steps(None, cpu) == [()]                                      # no torch yet: install it
    assert steps(cpu, cpu) == [] and steps("", "") == []                # same index: nothing to do
    assert steps("", cpu) == [("--force-reinstall", "--no-deps"), ()]   # switch: `torch==2.13.0` alone would not
    assert steps(cpu, "") == [("--force-reinstall", "--no-deps"), ()]


@pytest.mark.slow        # 10 s: ensurepip
def test_half_made_venv_is_repaired_or_named(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True)
    run = subprocess.run(["make", "--no-print-directory", "venv", f"VENV={tmp_path}/v"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0 and "repairing it with ensurepip" in run.stdout, run.stderr
    assert subprocess.run([tmp_path / "v" / "bin" / "python", "-m", "pip", "--version"]).returncode == 0
    # a Python whose venv module fails half-way (Debian without python3-venv): the half-made folder is removed
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nmkdir -p \"$3/bin\"; echo 'ensurepip is not available' >&2; exit 1\n")
    fake.chmod(0o755)
    run = subprocess.run(["make", "--no-print-directory", "venv", f"VENV={tmp_path}/w", f"PYTHON={fake}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "sudo apt install python3-venv" in run.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="make browser installs chromium only as root")
def test_failed_chromium_install_does_not_stop_make_test(tmp_path):
    (tmp_path / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package chromium' >&2\nexit 100\n")
    (tmp_path / "apt-get").chmod(0o755)
    run = subprocess.run(["make", "--no-print-directory", "browser", f"CHROMIUM={tmp_path}/no-chromium"], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert run.returncode == 0 and "the browser tests will be skipped" in run.stdout, run.stderr


# ---------------------------------------------------------------------------------------------- a wheel, a clean venv

@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory):
    """A new venv that has only the running Python's torch (tests/venvs.py)."""
    return venv_with_torch(tmp_path_factory.mktemp("venv") / "v")


@pytest.mark.slow        # about 40 s: builds the wheel, installs it and four dependencies
def test_wheel_ships_model_tokenizer_and_corpus(clean_venv, tmp_path):
    source = tmp_path / "mtp-lab"                      # a copy: building in the checkout would leave build/ there
    for rel in tool("colab_zip").project_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, source / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(source)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("mtp_lab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert sum(n.endswith("tokenizer.json") for n in names) == 1                    # one tokenizer copy
    pip_install(clean_venv, "--no-deps", str(wheel))
    pip_install(clean_venv, "numpy>=1.26", "safetensors>=0.4", "tokenizers>=0.19", "tqdm>=4.66")
    probe = """
import mtp_lab, mtp_lab.data as data
from mtp_lab import load_pretrained, speculative_generate
from mtp_lab.checkpoint import SHALLOW_DIR
model, tok = load_pretrained()
res = speculative_generate(model, tok.encode("def f(x):").ids, max_new_tokens=8, num_draft=2)
print(mtp_lab.__file__, mtp_lab.__version__, len(data.list_files()), model.config.n_layers,
      load_pretrained(SHALLOW_DIR)[0].config.n_layers, len(res.tokens) > 0)
"""
    out = subprocess.run([clean_venv, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "MTP_LAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    where, version, files, layers, shallow_layers, generated = out.stdout.split()
    assert where.startswith(str(clean_venv.parents[1])) and "site-packages" in where    # the wheel, not the checkout
    assert (version, files, layers, shallow_layers, generated) == ("0.1.0", "734", "24", "4", "True")


# ---------------------------------------------------------------------------------------------- Colab

COLAB_PREINSTALLED = ["ipykernel", "ipywidgets==7.7.1", "plotly<6", "numpy", "tokenizers", "safetensors", "tqdm"]


def colab_steps() -> list[list[str]]:
    """The `%pip install ...` commands of the set-up guard's Colab steps, as pip arguments."""
    guard = tool("build_notebooks").SETUP_GUARD
    return [cmd.split("%pip install ", 1)[1].replace("'", "").split() for cmd in guard.split("`")
            if cmd.startswith("%pip install ")]


@pytest.mark.slow        # about 60 s: a kernel in a new venv with what Colab has and what the steps add
def test_colab_steps_give_live_widgets(clean_venv, tmp_path):
    """The Colab branch as far as this machine allows: a venv with Colab's usual packages (ipywidgets 7.7.1, plotly 5,
    and torch), the archive of `make colab-zip` unpacked as on Colab, exactly the guard's %pip steps, then a kernel
    with a stand-in google.colab: the guard switches on the custom widget manager and the views are live."""
    subprocess.run([clean_venv, "-m", "pip", "uninstall", "-q", "-y", "mtp-lab"], check=False)
    pip_install(clean_venv, *COLAB_PREINSTALLED)
    tool("colab_zip").write_zip(tmp_path / "mtp-lab.zip")
    zipfile.ZipFile(tmp_path / "mtp-lab.zip").extractall(tmp_path / "content")
    steps = colab_steps()
    assert steps == [["-q", "--no-deps", "-e", "/content/mtp-lab"], ["-q", "anywidget", "plotly>=6"]]
    for args in steps:
        pip_install(clean_venv, *[a.replace("/content", str(tmp_path / "content")) for a in args])
    colab = tmp_path / "fake" / "google" / "colab"
    colab.mkdir(parents=True)
    (colab / "__init__.py").write_text("")
    (colab / "output.py").write_text("def enable_custom_widget_manager():\n    print('custom widget manager on')\n")
    cells = ["import google.colab", tool("build_notebooks").SETUP_GUARD,
             "from mtp_lab import load_pretrained\nfrom mtp_lab.viz import fp8_explorer, widgets_available\n"
             "print('widgets', widgets_available())\nmodel, tokenizer = load_pretrained()\n"
             "fp8_explorer(model, tokenizer)",
             "from mtp_lab.viz import speculative_dashboard\n"
             "speculative_dashboard(model, tokenizer, prompt='def f(x):')"]
    outputs = run_kernel(clean_venv, cells, tmp_path, {"PYTHONPATH": str(tmp_path / "fake")})
    assert outputs[1] == ["custom widget manager on\n"]
    assert outputs[2][0] == "widgets True\n"
    for cell in outputs[2:]:                                                    # live views, displayed
        assert ["application/vnd.jupyter.widget-view+json", "text/plain"] in cell


def run_kernel(python: Path, cells: list[str], tmp_path: Path, env: dict) -> list[list]:
    """Run `cells` in a Jupyter kernel of `python`; per cell, its outputs (stream text or a display's mime types)."""
    import nbformat
    from nbclient import NotebookClient

    spec = tmp_path / "kernels" / "kernels" / "under-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "under test", "language": "python", "env": env}))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    os.environ["JUPYTER_PATH"] = str(tmp_path / "kernels")
    try:
        NotebookClient(nb, kernel_name="under-test", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
                       ).execute()
    finally:
        del os.environ["JUPYTER_PATH"]
    return [[o.get("text") or sorted(o.get("data", {})) for o in c.outputs] for c in nb.cells]


class FakeShell:
    kernel = object()


def test_views_say_once_why_they_are_static(monkeypatch, capsys):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeShell())
    monkeypatch.setattr(common, "_STATIC_SAID", [])
    assert common.widgets_available() is True                                   # a kernel, everything installed
    monkeypatch.setitem(sys.modules, "anywidget", None)                         # import anywidget fails
    assert common.widgets_available() is False and common.widgets_available() is False
    err = capsys.readouterr().err
    assert err.count("live views are off") == 1 and "%pip install anywidget" in err
    monkeypatch.setattr(common, "_STATIC_SAID", [])
    monkeypatch.setitem(sys.modules, "anywidget", types.ModuleType("anywidget"))
    monkeypatch.setattr(sys.modules["plotly"], "__version__", "5.24.1")        # Colab's plotly
    assert common.widgets_available() is False and "plotly 5.24.1 is older than 6" in capsys.readouterr().err
    monkeypatch.setenv("MTP_LAB_STATIC", "1")                                   # asked for: static, silently
    monkeypatch.setattr(common, "_STATIC_SAID", [])
    assert common.widgets_available() is False and capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- the learner's copy

def test_learner_copy_has_notebooks_only_and_is_never_overwritten_without_asking(tmp_path):
    copier = tool("course_copy")
    source = tmp_path / "notebooks"
    source.mkdir()
    for name in ("00_welcome.ipynb", "01_main_model.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, source / name)
    (source / "conftest.py").write_text("")
    copy = tmp_path / "my-course"
    asked = []

    def ask(question):
        asked.append(question)
        return answer

    answer = False
    said = copier.sync(copy, ask, source)
    assert sorted(p.name for p in copy.iterdir()) == [".course-copy.json", "00_welcome.ipynb", "01_main_model.ipynb"]
    copied, built = (json.loads((folder / "00_welcome.ipynb").read_text())["cells"] for folder in (copy, source))
    assert "".join(copied[0]["source"]).startswith("# 00") and "Built from" not in json.dumps(copied)
    assert copied[1:] == built[-len(copied) + 1:]                     # the rest as built
    assert len(said) == 2 and asked == []
    (copy / "00_welcome.ipynb").write_text("my edits")
    assert copier.sync(copy, ask, source) == [] and asked == []                  # nothing new: yours untouched
    (source / "00_welcome.ipynb").write_text((source / "00_welcome.ipynb").read_text().replace("MTP", "M.T.P."))
    assert "kept your" in copier.sync(copy, ask, source)[0] and len(asked) == 1  # declined: kept
    assert (copy / "00_welcome.ipynb").read_text() == "my edits"
    answer = True
    assert "updated" in copier.sync(copy, ask, source)[0]                       # accepted: yours kept beside it
    assert (copy / "00_welcome.old.ipynb").read_text() == "my edits"
    assert "M.T.P." in (copy / "00_welcome.ipynb").read_text()


def test_learner_copy_and_outputs_are_ignored_by_git():
    names = ["my-course/00_welcome.ipynb", "dist/mtp-lab.zip", ".venv-3.12/bin/python", "runs/x/model.safetensors",
             "notebooks/.ipynb_checkpoints/00_welcome-checkpoint.ipynb", "artifacts/bench.json"]
    out = subprocess.run(["git", "check-ignore", *names], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert out == names


# ---------------------------------------------------------------------------------------------- the Colab archive

@pytest.mark.slow        # 3 s: zips 20 MB
def test_colab_archive_has_one_top_folder_and_no_venv_or_git(tmp_path):
    n = tool("colab_zip").write_zip(tmp_path / "mtp-lab.zip")
    names = zipfile.ZipFile(tmp_path / "mtp-lab.zip").namelist()
    assert len(names) == n and all(name.startswith("mtp-lab/") for name in names)
    for needed in ("pyproject.toml", "assets/stdlib_corpus.tar.xz", "assets/course_model/model.safetensors",
                   "notebooks/00_welcome.ipynb", "mtp_lab/__init__.py"):
        assert f"mtp-lab/{needed}" in names
    parts = {part for name in names for part in name.split("/")}
    assert not parts & {".git", ".venv", "my-course", "__pycache__", "dist"}
    assert not any(part.startswith(".venv") or part.endswith(".egg-info") for part in parts)
