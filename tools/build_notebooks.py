"""Build the course notebooks (notebooks/*.ipynb) from their Python sources (notebooks/src/*.py).

Source format (the "percent" format of jupytext, parsed here so no extra dependency is needed):

    # %% [markdown]          a markdown cell; every line starts with "# " (or is a bare "#")
    # %%                     a code cell
    # %% [solution]          a code cell whose source is collapsed in JupyterLab (exercise solutions)

Building executes every notebook with nbclient (the working tree's mtp_lab, cwd notebooks/), then
stores it CLEAN: outputs are kept only for cells marked `# NBVAL_CHECK_OUTPUT` (the numbers nbval
compares), no execution counts, no widget state.

    python tools/build_notebooks.py            # build all, print the run time of each
    python tools/build_notebooks.py 02 03      # build the notebooks whose names start with 02, 03
    python tools/build_notebooks.py --check    # fast: stored notebooks == sources, and clean (no kernel)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SRC_DIR = NB_DIR / "src"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
HEADER = re.compile(r"^# %%(?: \[(markdown|solution)\])?\s*$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse(path: Path) -> list[nbformat.NotebookNode]:
    """Cells of one source file, in order."""
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind is None:
            if text.strip():
                raise ValueError(f"{path}: text before the first '# %%' cell marker")
            return
        if not text.strip():
            raise ValueError(f"{path}: empty cell ({len(cells)})")
        if kind == "markdown":
            bad = [ln for ln in lines if ln and not (ln == "#" or ln.startswith("# "))]
            if bad:
                raise ValueError(f"{path}: markdown line without '# ' prefix: {bad[0]!r}")
            md = "\n".join(ln[2:] for ln in lines).strip("\n")
            cells.append(nbformat.v4.new_markdown_cell(md))
        else:
            cell = nbformat.v4.new_code_cell(text)
            if kind == "solution":
                cell.metadata = {"jupyter": {"source_hidden": True}, "tags": ["solution"]}
            cells.append(cell)

    for line in path.read_text().splitlines():
        m = HEADER.match(line)
        if m:
            flush()
            kind, lines = (m.group(1) or "code"), []
        elif line.startswith("# %%"):
            raise ValueError(f"{path}: unknown cell marker {line!r}")
        else:
            lines.append(line)
    flush()
    return cells


def from_source(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(path)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"   # stable ids: rebuilding does not churn the diff
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def clean(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Drop every output except those of NBVAL_CHECK_OUTPUT cells, and run metadata.

    Checked cells keep their execution count (deterministic: the cell's place in the run): nbval
    refuses a stored output whose cell has no count ("Unrun reference cell has outputs").
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in ("jupyter", "tags")}
        if CHECK_MARK not in cell.source:
            cell.outputs, cell.execution_count = [], None
            continue
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                raise RuntimeError(f"{name} {cell.id}: a checked cell wrote to stderr:\n{out.text}")
            if out.output_type == "error":
                raise RuntimeError(f"{name} {cell.id}: a checked cell raised {out.ename}")
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                raise RuntimeError(f"{name} {cell.id}: a checked cell displays a widget; mark it NBVAL_IGNORE_OUTPUT")
            if "metadata" in out:
                out.metadata = {}
        if not cell.outputs:
            raise RuntimeError(f"{name} {cell.id}: a NBVAL_CHECK_OUTPUT cell printed nothing")
        cell.outputs = coalesce_streams(cell.outputs)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    nb.metadata["language_info"] = {"name": "python"}
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
    with os.fdopen(fd, "w") as f:
        nbformat.write(nb, f)
    os.replace(tmp, path)


def build(src: Path, timeout: int, threads: int | None = None) -> float:
    """Execute one notebook from source, store it clean; return the execution time in seconds."""
    from nbclient import NotebookClient

    nb = from_source(src)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if threads is not None:   # the kernel inherits it: torch reads OMP_NUM_THREADS at import
        os.environ["OMP_NUM_THREADS"] = str(threads)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    write_atomic(clean(nb, src.stem), NB_DIR / f"{src.stem}.ipynb")
    return seconds


def check_stored(src: Path) -> list[str]:
    """Problems with the stored notebook for `src` (empty list = in sync and clean)."""
    path = NB_DIR / f"{src.stem}.ipynb"
    if not path.exists():
        return [f"{path.name} is missing: run tools/build_notebooks.py {src.stem[:2]}"]
    stored, fresh = nbformat.read(path, as_version=4), from_source(src)
    problems = []
    if set(stored.metadata) - {"kernelspec", "language_info"}:
        problems.append(f"{path.name}: extra notebook metadata {sorted(set(stored.metadata))} (widget state?)")
    if [(c.cell_type, c.source, c.get("metadata", {})) for c in stored.cells] != \
            [(c.cell_type, c.source, c.get("metadata", {})) for c in fresh.cells]:
        problems.append(f"{path.name} differs from {src.relative_to(ROOT)}: rebuild it")
    for cell in stored.cells:
        if cell.cell_type != "code":
            continue
        if CHECK_MARK in cell.source and not cell.outputs:
            problems.append(f"{path.name} {cell.id}: checked cell without stored output")
        if CHECK_MARK not in cell.source and (cell.outputs or cell.execution_count is not None):
            problems.append(f"{path.name} {cell.id}: stale output in an unchecked cell")
    return problems


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
        problems = [f"{name}.ipynb has no source in notebooks/src" for name in sorted(stored - {p.stem for p in sources})
                    if not args.only]
        for src in sources:
            problems += check_stored(src)
        print("\n".join(problems) or f"{len(sources)} notebooks in sync with their sources and clean")
        return 1 if problems else 0
    total = 0.0
    for src in sources:
        seconds = build(src, args.timeout, args.threads)
        total += seconds
        print(f"{src.stem:32s} {seconds:6.1f} s")
    print(f"{'total':32s} {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
