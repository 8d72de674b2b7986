"""The shipped corpus snapshot: its record is true, it unpacks to the course model's corpus on every Python, and a
damaged or unsafe archive is refused rather than unpacked."""

import hashlib
import importlib.util
import io
import json
import platform
import tarfile
from pathlib import Path

import pytest

from mtp_lab import data
from mtp_lab.data import SNAPSHOT, SNAPSHOT_INFO, list_files, snapshot_root, split_files, stdlib_root

ROOT = Path(__file__).resolve().parents[1]
INFO = json.loads(SNAPSHOT_INFO.read_text())


def test_record_matches_the_archive_and_the_course_models_corpus():
    blob = SNAPSHOT.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == INFO["sha256"] and len(blob) == INFO["archive_bytes"]
    assert INFO["python"] == "3.11.7"            # the course model's corpus (assets/MODEL_CARD.md)
    files = list_files(snapshot_root())
    assert len(files) == INFO["files"] == 734
    assert sum((snapshot_root() / f).stat().st_size for f in files) == INFO["source_bytes"]
    # the split of the model card: 650 / 42 / 42 files, on whatever Python runs this
    assert {s: len(v) for s, v in split_files(files).items()} == {"train": 650, "val": 42, "test": 42}
    assert list_files() == files                 # the default corpus is the snapshot


@pytest.mark.skipif(platform.python_version() != INFO["python"], reason="compares with Python 3.11.7's own library")
def test_snapshot_is_this_pythons_library_file_for_file():
    files = list_files(stdlib_root())
    assert files == list_files(snapshot_root())
    assert all((stdlib_root() / f).read_bytes() == (snapshot_root() / f).read_bytes() for f in files)


@pytest.mark.slow        # 8 s: xz at preset 9e
def test_snapshot_tool_remakes_the_archive_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("make_corpus_snapshot", ROOT / "tools" / "make_corpus_snapshot.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = snapshot_root()
    assert tool.snapshot_bytes(root, list_files(root)) == SNAPSHOT.read_bytes()


def use_archive(monkeypatch, tmp_path, blob: bytes) -> None:
    """Point data at an archive `blob` with a true record, and at an empty cache."""
    archive, record = tmp_path / "a.tar.xz", tmp_path / "a.json"
    archive.write_bytes(blob)
    record.write_text(json.dumps({**INFO, "sha256": hashlib.sha256(blob).hexdigest()}))
    monkeypatch.setattr(data, "SNAPSHOT", archive)
    monkeypatch.setattr(data, "SNAPSHOT_INFO", record)
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))


def test_damaged_archive_is_refused(monkeypatch, tmp_path):
    use_archive(monkeypatch, tmp_path, SNAPSHOT.read_bytes())
    data.SNAPSHOT.write_bytes(SNAPSHOT.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        snapshot_root()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("name", ["../escape.py", "/abs.py"])
def test_archive_member_outside_the_folder_is_refused(monkeypatch, tmp_path, name):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x=1"))
    use_archive(monkeypatch, tmp_path, buffer.getvalue())
    with pytest.raises(ValueError, match="unexpected member"):
        snapshot_root()
    assert not (tmp_path / "escape.py").exists() and list((tmp_path / "cache").iterdir()) == []


def test_unpacks_once_then_reuses(monkeypatch, tmp_path):
    use_archive(monkeypatch, tmp_path, SNAPSHOT.read_bytes())
    first = snapshot_root()
    assert len(list_files(first)) == 734
    data.SNAPSHOT.write_bytes(b"")                # a second call does not read the archive again
    assert snapshot_root() == first
