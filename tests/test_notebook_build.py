"""tools/build_notebooks.py: jupytext sources -> clean notebooks; the prose's quoted numbers must be in the outputs."""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
build = importlib.util.module_from_spec(spec)
sys.modules["build_notebooks"] = build
spec.loader.exec_module(build)

SOURCE = '''\
# %% [markdown]
# # 99 · A test notebook

# %% tags=["nbval-check-output"]
print("tau 2.31")

# %% [markdown]
# ## Reading it
# The drafts are worth {{2.31}} tokens per forward.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
print("✅ done")
'''


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "99_test.py"
    path.write_text(SOURCE)
    return path


def executed(nb, outputs):
    """`nb` as if run: outputs[i] is the stdout of the i-th code cell."""
    for cell, text in zip((c for c in nb.cells if c.cell_type == "code"), outputs, strict=True):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        cell.execution_count = 1
    return nb


def test_source_cells_metadata_note_guard_and_slides(source):
    nb = build.from_source(source)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds == ["markdown", "markdown", "code", "markdown", "code"]
    assert nb.cells[0].source.startswith("<small>Built from `notebooks/src/99_test.py`: edit that file")
    assert nb.cells[2].source.startswith(build.SETUP_GUARD) and nb.cells[2].source.endswith('print("tau 2.31")')
    # the note and the set-up cell are off the slides: the slideshow opens on the title
    assert nb.cells[0].metadata["slideshow"] == nb.cells[2].metadata["slideshow"] == {"slide_type": "skip"}
    assert nb.cells[2].metadata["tags"] == ["nbval-check-output"]
    assert nb.cells[3].source == "## Reading it\nThe drafts are worth 2.31 tokens per forward."
    assert nb.cells[3].metadata == {"quotes": ["2.31"], "slideshow": {"slide_type": "slide"}}
    assert nb.cells[4].metadata["jupyter"] == {"source_hidden": True}
    assert nb.cells[1].metadata["slideshow"] == {"slide_type": "slide"} and nb.cells[1].source.startswith("# 99")


def test_clean_keeps_checked_outputs_only_and_finds_stale_quotes(source):
    nb = build.clean(executed(build.from_source(source), ["tau 2.31\n", "✅ done\n"]), "99")
    assert nb.cells[2].outputs[0].text == "tau 2.31\n"
    assert nb.cells[4].outputs == [] and nb.cells[4].execution_count is None      # the solution: no output
    with pytest.raises(build.BuildError, match="quotes '2.31', which no nbval-check-output"):
        build.clean(executed(build.from_source(source), ["tau 2.40\n", "✅ done\n"]), "99")


def test_a_solution_that_does_not_pass_is_not_stored(source):
    with pytest.raises(build.BuildError, match="solution cell whose check is not correct"):
        build.clean(executed(build.from_source(source), ["tau 2.31\n", "❌ wrong\n"]), "99")


def test_a_solution_cell_cannot_store_output(tmp_path):
    path = tmp_path / "98_bad.py"
    path.write_text(SOURCE.replace('tags=["solution"]', 'tags=["solution", "nbval-check-output"]'))
    with pytest.raises(build.BuildError, match="a solution cell stores no output"):
        build.from_source(path)


def test_every_stored_course_notebook_has_a_source_note_and_slides():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert f"notebooks/src/{path.stem}.py" in nb.cells[0].source.splitlines()[0], path.name
        assert all("slideshow" in c.metadata for c in nb.cells), path.name
        assert not any("NBVAL" in c.source for c in nb.cells), path.name   # markers are tags, unseen by learners


def test_setup_guard_says_how_to_install_where_mtp_lab_is_missing():
    """The guard in every first code cell, run by a Python that cannot import mtp_lab (-S: no site-packages)."""
    import subprocess

    def run(prelude: str) -> str:
        proc = subprocess.run([sys.executable, "-S", "-c", prelude + build.SETUP_GUARD], capture_output=True,
                              text=True, cwd="/")
        assert proc.returncode == 1
        return proc.stderr.strip().splitlines()[-1]

    local = run("")
    assert local.startswith("ModuleNotFoundError: mtp_lab is not installed") and "make course" in local
    colab = run(FAKE_COLAB)
    assert "On Colab:" in colab and "make colab-zip" in colab and "Upload mtp-lab.zip" in colab
    assert "`%pip install -q --no-deps -e /content/mtp-lab`" in colab
    assert "`%pip install -q anywidget 'plotly>=6'`" in colab    # with dependencies: psygnal comes with anywidget
    installed = subprocess.run([sys.executable, "-c", build.SETUP_GUARD], capture_output=True, text=True)
    assert installed.returncode == 0 and installed.stdout == installed.stderr == ""          # installed: silent


# a google.colab module whose output.enable_custom_widget_manager() says that it was called
FAKE_COLAB = """import sys, types
colab = sys.modules['google.colab'] = types.ModuleType('google.colab')
colab.output = sys.modules['google.colab.output'] = types.ModuleType('google.colab.output')
colab.output.enable_custom_widget_manager = lambda: print('custom widget manager on')
"""


def test_setup_guard_enables_colabs_widget_manager_on_colab_only():
    import subprocess

    def run(prelude: str) -> str:
        proc = subprocess.run([sys.executable, "-c", prelude + build.SETUP_GUARD], capture_output=True, text=True,
                              cwd=ROOT, check=True)
        return proc.stdout
    assert run(FAKE_COLAB) == "custom widget manager on\n"
    assert run("") == ""
