"""Write the shipped corpus snapshot: the corpus files of a Python standard library as one .tar.xz, and its record.

    python tools/make_corpus_snapshot.py                    # this Python's library -> assets/stdlib_corpus.*
    python tools/make_corpus_snapshot.py --root DIR --out /tmp/snap

The course model was trained on CPython 3.11.7's library (734 files); the snapshot keeps exactly those files
(mtp_lab.data.list_files: every .py file outside site-packages and test folders) plus the library's LICENSE.txt,
so every Python reads the same corpus and the notebooks print the same numbers. The archive is byte-for-byte
reproducible: sorted members, no timestamps or owners, xz preset 9e. The record (`stdlib_corpus.json`) holds the
Python version it came from, the file count and the archive's sha256, which mtp_lab.data checks before unpacking.
Replacing the snapshot changes the corpus: the course model, its card and the notebooks' outputs then go stale.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import platform
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtp_lab.data import SNAPSHOT, SNAPSHOT_INFO, atomic_write_bytes, atomic_write_json, list_files, stdlib_root  # noqa: E402

LICENSE = "LICENSE.txt"   # the PSF licence of the library, shipped beside its code


def snapshot_bytes(root: Path, files: list[str]) -> bytes:
    """A reproducible .tar.xz of `files` (relative to `root`) and the library's licence."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel in [*files, *([LICENSE] if (root / LICENSE).is_file() else [])]:
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=None, help="library folder (default: this Python's)")
    ap.add_argument("--python", default=platform.python_version(),
                    help="the Python version the library belongs to (default: this Python's)")
    ap.add_argument("--out", type=Path, default=None, help="folder for stdlib_corpus.tar.xz and .json "
                                                           "(default: assets/, the shipped snapshot)")
    args = ap.parse_args(argv)
    root = args.root or stdlib_root()
    files = list_files(root)
    data = snapshot_bytes(root, files)
    archive = args.out / SNAPSHOT.name if args.out else SNAPSHOT
    record = {"python": args.python, "files": len(files),
              "source_bytes": sum((root / f).stat().st_size for f in files), "archive_bytes": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "made_by": "python tools/make_corpus_snapshot.py"}
    atomic_write_bytes(archive, data)
    atomic_write_json(archive.with_name(SNAPSHOT_INFO.name), record)
    print(f"{archive}: {record['files']} files, {record['source_bytes'] / 1e6:.1f} MB of source, "
          f"{len(data) / 1e6:.2f} MB as .tar.xz, sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
