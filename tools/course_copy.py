"""The learner's working copy of the course (`make course`): notebooks/*.ipynb copied into a folder of your own.

    python tools/course_copy.py my-course

JupyterLab saves every edit and every output into the notebook it has open. Opened in notebooks/, that rewrites the
course's tracked, built files (and `make test` then fails its build check); opened in the copy, `git status` stays
clean (the copy is in .gitignore). The copy holds only the notebooks: not notebooks/src (the sources they are built
from), not the builder's first line ("Built from notebooks/src/... run make notebooks"), which is for the course's
authors, and not notebooks/conftest.py (the notebook tests' settings).

The copy is made on the first run. Later runs add notebooks the course gained and never overwrite yours without
asking: where the course's version of a notebook changed since your copy was made, you are asked (at a terminal)
whether to take the new one; yours is then kept beside it as NN_name.old.ipynb. The sha256 of each course notebook
copied is recorded in <copy>/.course-copy.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RECORD = ".course-copy.json"
# the builder's first line (tools/build_notebooks.py, SOURCE_NOTE), dropped from the learner's copy
BUILDER_NOTE = re.compile(r"\A<small>Built from `notebooks/src/[^`]+`.*?</small>\s*", re.S)


def learner_notebook(path: Path) -> str:
    """The notebook at `path` as the learner gets it, JSON text: the builder's note removed from its first cell,
    and that cell too when the note was all it held."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = nb["cells"][0]
    text = BUILDER_NOTE.sub("", "".join(first["source"]), count=1)    # nbformat stores a list of lines or one str
    if text.strip():
        first["source"] = text
    else:
        del nb["cells"][0]
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_name(dest: Path) -> Path:
    """NN_name.old.ipynb, or .old2, .old3, ... when that exists already."""
    n = 1
    while (old := dest.with_name(f"{dest.stem}.old{n if n > 1 else ''}.ipynb")).exists():
        n += 1
    return old


def sync(copy: Path, ask: Callable[[str], bool], source: Path = NOTEBOOKS) -> list[str]:
    """Bring `copy` up to date with the course's notebooks in `source`; returns one line per thing done or kept."""
    copy.mkdir(parents=True, exist_ok=True)
    record_path = copy / RECORD
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    said = []
    for path in sorted(source.glob("*.ipynb")):
        dest, digest = copy / path.name, sha256(path)
        if dest.exists() and record.get(path.name) == digest:
            continue                                              # your copy of the current version
        if dest.exists():
            kept = old_name(dest)
            question = (f"{dest}: the course's version changed since your copy was made. Take the new one "
                        f"(yours is kept as {kept.name})? [y/N] ")
            if not ask(question):
                said.append(f"kept your {dest} (the course's new version: {path.relative_to(source.parent)})")
                continue
            dest.rename(kept)
            said.append(f"updated {dest} (yours is now {kept})")
        else:
            said.append(f"copied {path.name} to {copy}/")
        dest.write_text(learner_notebook(path), encoding="utf-8")
        record[path.name] = digest
        record_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return said


def ask_at_terminal(question: str) -> bool:
    """y/N at a terminal; never yes without one (make run from a script, CI)."""
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    copy = Path(argv[0])
    if copy.resolve() == NOTEBOOKS.resolve():
        print(f"error: the working copy must be a folder other than {NOTEBOOKS}", file=sys.stderr)
        return 2
    for line in sync(copy, ask_at_terminal):
        print(line)
    print(f"your working copy of the course: {copy}/ (your edits and outputs stay there; notebooks/ stays as built)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
