"""A small copy of real standard-library files, with files in every split, for fast data/training tests.

Helpers only: the fixtures built on them (sample_root, corpus, one_thread) live in tests/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from mtp_lab.data import documents, list_files, split_files, split_of, stdlib_root, train_tokenizer

# stable module names present in Python 3.10-3.13; split_of puts them in train / val / test
SAMPLE_FILES = ["textwrap.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "glob.py", "colorsys.py",
                "keyword.py", "sched.py", "secrets.py", "timeit.py", "bz2.py"]


def make_sample_root(tmp: Path) -> Path:
    """Copy SAMPLE_FILES into tmp/stdlib (skipping any this Python lacks); returns that folder."""
    root = tmp / "stdlib"
    root.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        if (stdlib_root() / name).is_file():
            shutil.copy(stdlib_root() / name, root / name)
    splits = {split_of(p.name) for p in root.iterdir()}
    assert splits == {"train", "val", "test"}, f"sample lacks a split: {splits}"
    return root


def sample_tokenizer(root: Path, vocab_size: int):
    """A byte-level BPE trained on the sample's train split."""
    return train_tokenizer(documents(split_files(list_files(root))["train"], root), vocab_size=vocab_size)
