"""Build the course notebooks (notebooks/*.ipynb) from their sources (notebooks/src/*.py), with jupytext.

The sources are jupytext's "percent" format; cell options are jupytext's own metadata syntax:

    # %% [markdown]                                           a markdown cell (every line starts with "# ")
    # %%                                                      a code cell: run, its output not stored
    # %% tags=["nbval-check-output"]                          a code cell whose output is stored; nbval compares it
    # %% tags=["solution"] jupyter={"source_hidden": true}   an exercise solution: collapsed, no stored output

`make notebooks` (this script) executes every notebook with nbclient (the working tree's mtp_lab, cwd notebooks/)
and stores it CLEAN: outputs only for nbval-check-output cells, no execution counts of other cells, no widget
state. It also
- puts a first cell in every notebook that names its source (an edit made in JupyterLab is lost at a rebuild);
- puts the set-up guard (SETUP_GUARD) at the top of the first code cell: a kernel without mtp_lab (a fresh Colab)
  gets the exact steps that install it, instead of an ImportError; on Colab it switches on Colab's custom widget
  manager, without which the live views do not show;
- gives every cell slide metadata for the presentation mode (jupyterlab-rise): a markdown cell that starts with
  a heading opens a new slide, everything else continues it (a source can set its own `slideshow`); the source
  note and the set-up cell are skipped, so the slideshow opens on the title;
- checks the prose against the output: a number the markdown quotes from an output is written `{{0.83}}` in the
  source; it is rendered as plain `0.83`, listed in the cell's metadata ("quotes"), and must appear in the
  stored output of a nbval-check-output cell of the notebook. nbval then compares those outputs with a fresh run
  on every `make test`, so the sentence cannot silently go stale when the model changes;
- fails if a solution cell's check did not print a correct verdict (✅). Solution cells start with `%%solution`
  (mtp_lab.course.solution_cell): a learner's Run All skips them, the build runs them (MTP_LAB_RUN_SOLUTIONS=1).

    python tools/build_notebooks.py            # build all, print the run time of each  (make notebooks)
    python tools/build_notebooks.py 02 03      # build the notebooks whose names start with 02, 03
    python tools/build_notebooks.py --check    # fast: stored notebooks == sources, clean, quotes present
                                               # (make check-notebooks; no kernel)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SRC_DIR = NB_DIR / "src"
CHECK, SOLUTION = "nbval-check-output", "solution"
SOLUTION_MAGIC = "%%solution"   # mtp_lab.course.solution_cell: runs the cell only with MTP_LAB_RUN_SOLUTIONS=1
QUOTE = re.compile(r"\{\{(.+?)\}\}")
KEPT_CELL_METADATA = ("jupyter", "tags", "slideshow", "quotes")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
SOURCE_NOTE = ("<small>Built from `notebooks/src/{name}.py`: edit that file, then run `make notebooks` "
               "(a change made here is lost at the next build).</small>")
SETUP_GUARD = '''\
import importlib.util, sys  # set-up: is mtp_lab installed in this kernel? (a fresh Colab: not yet)
if importlib.util.find_spec("mtp_lab") is None:
    raise ModuleNotFoundError("mtp_lab is not installed in this kernel. " + (
        "On Colab: 1. on your computer, in the mtp-lab folder, run `make colab-zip` (it writes dist/mtp-lab.zip); "
        "2. Files panel (folder icon, left) > Upload mtp-lab.zip; 3. run `!unzip -q mtp-lab.zip -d /content`, "
        "`%pip install -q --no-deps -e /content/mtp-lab` (keeps Colab's own torch) and "
        "`%pip install -q anywidget 'plotly>=6'` (the live views, with their dependencies); "
        "4. Runtime > Restart session, and run this cell again."
        if "google.colab" in sys.modules else
        "In the mtp-lab folder run `make course`: it installs everything in .venv and opens the course with it."))
if "google.colab" in sys.modules:  # Colab shows third-party widgets (the live views) only with its custom manager
    from google.colab import output; output.enable_custom_widget_manager()
'''


class BuildError(RuntimeError):
    """A notebook that cannot be built or stored as it is."""


def from_source(path: Path) -> nbformat.NotebookNode:
    """The notebook of one source, unexecuted: cells with their metadata, quotes rendered, guard and note added."""
    nb = jupytext.read(path, fmt="py:percent")
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        raise BuildError(f"{path}: the first cell must be markdown (title, goals, time)")
    first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first_code is None:
        raise BuildError(f"{path}: no code cell")
    first_code.source = SETUP_GUARD + first_code.source
    # the note and the set-up code stay off the slides: the slideshow opens on the title
    first_code.metadata.setdefault("slideshow", {"slide_type": "skip"})
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(SOURCE_NOTE.format(name=path.stem),
                                                     metadata={"slideshow": {"slide_type": "skip"}}))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"   # stable ids: rebuilding does not churn the diff
        meta = {k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA}
        if not cell.source.strip():
            raise BuildError(f"{path}: empty cell ({i})")
        tags = meta.get("tags", [])
        if cell.cell_type == "markdown":
            quotes = QUOTE.findall(cell.source)
            if quotes:
                meta["quotes"] = quotes
                cell.source = QUOTE.sub(r"\1", cell.source)
        elif SOLUTION in tags and CHECK in tags:
            raise BuildError(f"{path} cell {i}: a solution cell stores no output; drop its {CHECK} tag")
        elif SOLUTION in tags and not cell.source.startswith(SOLUTION_MAGIC):
            raise BuildError(f"{path} cell {i}: a solution cell must start with `# {SOLUTION_MAGIC}` (Run All then "
                             f"skips it, and its collapsed preview shows that line, not the answer)")
        meta.setdefault("slideshow", {"slide_type": "slide" if cell.cell_type == "markdown"
                                      and cell.source.lstrip().startswith("#") else "-"})
        cell.metadata = meta
    nb.cells[1].metadata["slideshow"] = {"slide_type": "slide"}   # the title
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def output_text(cell) -> str:
    """Everything a code cell's outputs show as text: streams, and the plain and HTML forms of results."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts += [out.data[m] for m in ("text/plain", "text/html", "text/markdown") if m in out.get("data", {})]
    return "\n".join(parts)


def quote_problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """Quotes of the markdown that no nbval-check-output cell's output contains."""
    shown = "\n".join(output_text(c) for c in nb.cells
                      if c.cell_type == "code" and CHECK in c.metadata.get("tags", []))
    return [f"{name} {c.id}: the text quotes {q!r}, which no {CHECK} cell's output shows (any more): "
            f"reword the text or print it" for c in nb.cells if c.cell_type == "markdown"
            for q in c.metadata.get("quotes", []) if q not in shown]


def clean(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Check an executed notebook and keep only the outputs of nbval-check-output cells (no run metadata).

    Checked cells keep their execution count (deterministic: the cell's place in the run): nbval
    refuses a stored output whose cell has no count ("Unrun reference cell has outputs").
    """
    problems = quote_problems(nb, name)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA}
        tags = cell.metadata.get("tags", [])
        text = output_text(cell)
        errors = [out for out in cell.outputs if out.output_type == "error"]
        if errors:
            problems.append(f"{name} {cell.id}: raised {errors[0].ename}: {errors[0].evalue}")
        if SOLUTION in tags and ("✅" not in text or "❌" in text):
            problems.append(f"{name} {cell.id}: a solution cell whose check is not correct:\n{text}")
        if CHECK not in tags:
            cell.outputs, cell.execution_count = [], None
            continue
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                problems.append(f"{name} {cell.id}: a checked cell wrote to stderr:\n{out.text}")
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                problems.append(f"{name} {cell.id}: a checked cell displays a widget; drop its {CHECK} tag")
            if "metadata" in out:
                out.metadata = {}
        if not cell.outputs:
            problems.append(f"{name} {cell.id}: a {CHECK} cell printed nothing")
        cell.outputs = coalesce_streams(cell.outputs)
    if problems:
        raise BuildError("\n".join(problems))
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of the same name (the kernel splits prints at random points),
    so that rebuilding gives the same file; nbval compares the merged text too."""
    merged = []
    for out in outputs:
        if merged and out.output_type == "stream" and merged[-1].output_type == "stream" \
                and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def write_atomic(nb: nbformat.NotebookNode, path: Path) -> None:
    nbformat.validate(nb)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(src: Path, timeout: int, threads: int | None = None) -> float:
    """Execute one notebook from source, store it clean; return the execution time in seconds."""
    from nbclient import NotebookClient

    nb = from_source(src)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if threads is not None:   # the kernel inherits it: torch reads OMP_NUM_THREADS at import
        os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MTP_LAB_RUN_SOLUTIONS"] = "1"   # the %%solution cells run, so that their checks are verified
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(NB_DIR)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    write_atomic(clean(nb, src.stem), NB_DIR / f"{src.stem}.ipynb")
    return seconds


def check_stored(src: Path) -> list[str]:
    """Problems with the stored notebook for `src` (empty list = in sync, clean, and its quotes shown)."""
    path = NB_DIR / f"{src.stem}.ipynb"
    if not path.exists():
        return [f"{path.name} is missing: run `make notebooks` (or tools/build_notebooks.py {src.stem[:2]})"]
    stored, fresh = nbformat.read(path, as_version=4), from_source(src)
    problems = []
    if set(stored.metadata) - {"kernelspec", "language_info"}:
        problems.append(f"{path.name}: extra notebook metadata {sorted(set(stored.metadata))} (widget state?)")
    if [(c.cell_type, c.source, c.get("metadata", {})) for c in stored.cells] != \
            [(c.cell_type, c.source, c.get("metadata", {})) for c in fresh.cells]:
        problems.append(f"{path.name} differs from {src.relative_to(ROOT)}: rebuild it (make notebooks)")
    for cell in stored.cells:
        if cell.cell_type != "code":
            continue
        checked = CHECK in cell.metadata.get("tags", [])
        if checked and not cell.outputs:
            problems.append(f"{path.name} {cell.id}: checked cell without stored output")
        if not checked and (cell.outputs or cell.execution_count is not None):
            problems.append(f"{path.name} {cell.id}: stored output in a cell that is not {CHECK} (a solution?)")
    return problems + quote_problems(stored, path.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="build only notebooks whose file name starts with these prefixes")
    ap.add_argument("--check", action="store_true", help="verify stored notebooks against sources, no execution")
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the kernel (OMP_NUM_THREADS); 1 is fastest on a busy machine")
    args = ap.parse_args(argv)
    sources = sorted(p for p in SRC_DIR.glob("*.py") if not args.only or p.name.startswith(tuple(args.only)))
    if not sources:
        print(f"no notebook sources match {args.only} in {SRC_DIR}", file=sys.stderr)
        return 1
    if args.check:
        stored = {p.stem for p in NB_DIR.glob("*.ipynb")}
        orphans = sorted(stored - {p.stem for p in sources}) if not args.only else []
        problems = [f"{name}.ipynb has no source in notebooks/src" for name in orphans]
        for src in sources:
            problems += check_stored(src)
        print("\n".join(problems) or f"{len(sources)} notebooks in sync with their sources, clean, quotes shown")
        return 1 if problems else 0
    total, failed = 0.0, []
    for src in sources:
        try:
            seconds = build(src, args.timeout, args.threads)
        except BuildError as e:
            print(f"{src.stem}: NOT stored:\n{e}", file=sys.stderr)
            failed.append(src.stem)
            continue
        total += seconds
        print(f"{src.stem:32s} {seconds:6.1f} s", flush=True)
    print(f"{'total':32s} {total:6.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
