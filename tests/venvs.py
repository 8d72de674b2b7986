"""Fresh virtual environments for the install tests (test_install.py), with the running Python's torch lent to them.

A new venv holds nothing; installing torch into each (1 GB on 3.11, several GB of CUDA build on 3.12/3.13) would make
these tests take minutes. So `venv_with_torch` lends it: a folder of symlinks to the files of torch and of the
distributions it requires (found through importlib.metadata, with their .dist-info, so pip sees them installed), put
on the new venv's path by a .pth file. Everything else the venv has is what the test installs.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement


def required_distributions(name: str) -> list[md.Distribution]:
    """`name` and, recursively, the distributions its requirements (markers evaluated, no extras) name."""
    seen: dict[str, md.Distribution] = {}
    todo = [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(key)
        except md.PackageNotFoundError:
            continue                                   # an optional requirement this machine lacks
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**default_environment(), "extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def lend(dists: list[md.Distribution], folder: Path) -> Path:
    """Symlink the top-level files and folders of `dists` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not Path(f).parts[0].startswith("..")}:
            if (base / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(base / top)
    return folder


def venv_with_torch(path: Path) -> Path:
    """A new venv at `path` (pip included) that imports the running Python's torch; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    lent = lend(required_distributions("torch"), path / "lent-torch")
    (site / "lent-torch.pth").write_text(f"{lent}\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)
