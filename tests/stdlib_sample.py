"""A small copy of real standard-library files, with files in every split, for fast data/training tests.

Helpers only: the fixtures built on them (sample_root, corpus, one_thread) live in tests/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from mtp_lab.data import documents, list_files, snapshot_root, split_files, split_of, train_tokenizer

# files of the shipped corpus snapshot (the same on every Python); split_of puts them in train / val / test
SAMPLE_FILES = ["textwrap.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "glob.py", "colorsys.py",
                "keyword.py", "sched.py", "secrets.py", "timeit.py", "bz2.py"]


def make_sample_root(tmp: Path) -> Path:
    """Copy SAMPLE_FILES from the corpus snapshot into tmp/stdlib; returns that folder."""
    root = tmp / "stdlib"
    root.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        shutil.copy(snapshot_root() / name, root / name)
    splits = {split_of(p.name) for p in root.iterdir()}
    assert splits == {"train", "val", "test"}, f"sample lacks a split: {splits}"
    return root


def sample_tokenizer(root: Path, vocab_size: int):
    """A byte-level BPE trained on the sample's train split."""
    return train_tokenizer(documents(split_files(list_files(root))["train"], root), vocab_size=vocab_size)
