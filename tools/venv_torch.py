"""Install torch==2.13.0 into the running Python's environment from the index `make` chose, switching builds when
the index changed. Run by the Makefile with the venv's own Python:

    .venv/bin/python tools/venv_torch.py https://download.pytorch.org/whl/cpu   # PyTorch's CPU-only build
    .venv/bin/python tools/venv_torch.py ""                                     # pip's default index (PyPI)

The index a venv's torch came from is recorded in <venv>/.torch-index. When it differs from the one asked for, torch
is reinstalled from the new index (--force-reinstall: `torch==2.13.0` alone is already satisfied by any 2.13.0
build, so pip would keep the old one); the old build stays until the new one has downloaded. A venv made before
the record existed is judged by its torch: a CUDA build counts as pip's default index, a CPU build as CPU_INDEX.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"       # the pin of pyproject.toml (tests/test_packaging.py checks they agree)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
RECORD = Path(sys.prefix) / ".torch-index"


def installed_index() -> str | None:
    """The index the installed torch came from (the record, else judged by its build); None without torch."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.version.cuda is None)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    if RECORD.is_file():
        return RECORD.read_text(encoding="utf-8").strip()
    return CPU_INDEX if probe.stdout.strip() == "True" else ""


def steps(have: str | None, want: str) -> list[tuple[str, ...]]:
    """The pip installs (their extra arguments) that take torch from index `have` (None: no torch) to `want`."""
    if have is None:
        return [()]
    if have != want:                                          # then the new build's own dependencies (CUDA libraries)
        return [("--force-reinstall", "--no-deps"), ()]
    return []


def pip(*args: str, index: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *args, TORCH, *(["--index-url", index] if index else [])]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def describe(index: str) -> str:
    return index or "pip's default index"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    want, have = argv[0].strip(), installed_index()
    if have is not None and have != want:
        print(f"torch came from {describe(have)}; switching to {describe(want)}", flush=True)
    try:
        for extra in steps(have, want):
            pip(*extra, index=want)
    except subprocess.CalledProcessError:
        print(f"error: pip could not install {TORCH} from {describe(want)}. Check the network, or pick another "
              f"index: TORCH_INDEX= (pip's default), TORCH_INDEX={CPU_INDEX} (CPU only)", file=sys.stderr)
        return 1
    RECORD.write_text(want + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
