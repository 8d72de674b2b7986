"""The archive to upload to Colab (`make colab-zip`): the project under one top folder, mtp-lab/.

    python tools/colab_zip.py dist/mtp-lab.zip

Whatever your clone's folder is called, the archive unpacks to mtp-lab/, the name the notebooks' set-up steps use
(`!unzip -q mtp-lab.zip -d /content`, then `%pip install ... /content/mtp-lab`). It holds the files git tracks plus
new files git does not ignore (the shipped model and corpus included); .git, the virtual environments, caches,
outputs and your working copy of the course stay out (.gitignore). Without git (a downloaded folder), every file but
those of EXCLUDED goes in.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = "mtp-lab"
# without git: the folders .gitignore keeps out, never zipped (and .venv-3.12 and the like, *.egg-info)
EXCLUDED = (".git", ".venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".ruff_cache", "artifacts",
            "runs", "build", "dist", "my-course")


def project_files(root: Path = ROOT) -> list[str]:
    """Relative paths of the files that make up the project, sorted."""
    if (root / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
        return sorted(p for p in out.split("\0") if p and (root / p).is_file())
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and not any(part in EXCLUDED or part.startswith(".venv") or part.endswith(".egg-info")
                              for part in p.relative_to(root).parts))


def write_zip(out: Path, root: Path = ROOT) -> int:
    """Write the archive (to a temporary name, then renamed); returns the number of files."""
    files = project_files(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in files:
            z.write(root / rel, f"{TOP}/{rel}")
    tmp.replace(out)
    return len(files)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    n = write_zip(out)
    print(f"{out}: {n} files under {TOP}/, {out.stat().st_size / 1e6:.1f} MB. On Colab: File > Upload notebook, pick "
          f"a notebook from notebooks/ and run its first cell: its steps upload this file (Files panel, folder icon "
          f"on the left) and install it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
