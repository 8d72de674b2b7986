"""The corpus (the Python standard library), its train/val/test split, the BPE tokenizer, and the token streams
the trainer samples from.

Corpus: every `*.py` file under a standard library root, except `site-packages/` (third-party code) and test
suites (any directory named `test`, `tests` or `idle_test`). By default the root is the shipped snapshot
(`assets/stdlib_corpus.tar.xz`: the 734 files of CPython 3.11.7's library that the course model was trained on,
its version and sha256 in `assets/stdlib_corpus.json`), unpacked once into cache_dir(), so every Python reads
the same corpus and prints the same numbers; `root=stdlib_root()` (`mtp-lab train --root`) reads this
interpreter's own library instead.
Each file gives up to two documents: its source code, and its docstrings (module, class and function
docstrings, extracted with `ast`, joined by blank lines). `mix` picks "code", "docstrings" or "both".

Split, by file: u = first 8 bytes of sha256(path relative to the library root, '/'-separated) as an
integer / 2^64. u < 0.05 -> "val", 0.05 <= u < 0.10 -> "test", otherwise "train". The rule depends
only on the path, so it is the same on every machine and every run, and the docstrings of a held-out
file are held out with it.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import shutil
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import check_choice

SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.05
TEST_FRACTION = 0.05
Mix = Literal["code", "docstrings", "both"]   # the documents of each corpus file: source, docstrings, or both
EOT = "<|endoftext|>"                       # separates documents in the token stream
EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})
_PACKAGE = Path(__file__).resolve().parent
# the shipped files: mtp_lab/assets in an installed wheel (package data), assets/ beside the package in a checkout
ASSETS = _PACKAGE / "assets" if (_PACKAGE / "assets").is_dir() else _PACKAGE.parent / "assets"
DEFAULT_TOKENIZER = ASSETS / "course_model" / "tokenizer.json"   # the course model's BPE, the one shipped copy
SNAPSHOT = ASSETS / "stdlib_corpus.tar.xz"        # the corpus the course model was trained on (module docstring)
SNAPSHOT_INFO = ASSETS / "stdlib_corpus.json"     # its Python version, file count and sha256


def stdlib_root() -> Path:
    """The standard library of the running interpreter (the corpus with `root=stdlib_root()`)."""
    return Path(sysconfig.get_paths()["stdlib"])


def snapshot_root() -> Path:
    """The shipped corpus snapshot as a folder: unpacked on first use into cache_dir()/stdlib-<python>-<sha256[:12]>
    after its sha256 is checked against SNAPSHOT_INFO (regular files with relative paths only), then reused."""
    try:
        info = json.loads(SNAPSHOT_INFO.read_text(encoding="utf-8"))
        target = cache_dir() / f"stdlib-{info['python']}-{info['sha256'][:12]}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileNotFoundError(f"corpus snapshot record {SNAPSHOT_INFO} is missing or unreadable ({e}); reinstall "
                                f"mtp-lab, or pass a corpus folder (root=stdlib_root(), mtp-lab train --root)") from e
    if (target / ".complete").is_file():
        return target
    data = SNAPSHOT.read_bytes() if SNAPSHOT.is_file() else b""
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise ValueError(f"corpus snapshot {SNAPSHOT} is missing or does not match the sha256 in {SNAPSHOT_INFO}; "
                         f"restore it (git checkout assets/, or reinstall mtp-lab)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
            for member in tar.getmembers():
                rel = PurePosixPath(member.name)
                if not member.isfile() or rel.is_absolute() or ".." in rel.parts:
                    raise ValueError(f"corpus snapshot {SNAPSHOT}: unexpected member {member.name!r}")
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                (staging / rel).write_bytes(tar.extractfile(member).read())
        (staging / ".complete").write_text(info["sha256"] + "\n", encoding="utf-8")
        try:
            os.rename(staging, target)
        except OSError:                       # another process (a torchrun rank) unpacked it first
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def list_files(root: Path | None = None) -> list[str]:
    """Relative '/'-separated paths of the corpus files under `root` (default: the shipped snapshot), sorted."""
    root = Path(root) if root is not None else snapshot_root()
    if not root.is_dir():
        raise ValueError(f"corpus root {root} is not a directory; pass the Python standard library folder")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        rel_dir = Path(dirpath).relative_to(root)
        out += [(rel_dir / f).as_posix() for f in filenames      # regular files only: a FIFO named x.py would hang
                if f.endswith(".py") and os.path.isfile(os.path.join(dirpath, f))]
    return sorted(out)


def split_of(rel_path: str) -> str:
    """The split of one file: u = sha256(rel_path)[:8 bytes] / 2^64; val below 0.05, test below 0.10."""
    u = int.from_bytes(hashlib.sha256(rel_path.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    if u < VAL_FRACTION:
        return "val"
    return "test" if u < VAL_FRACTION + TEST_FRACTION else "train"


def read_source(path: Path) -> str:
    """A source file's text (UTF-8, the encoding of every standard library file; bad bytes replaced)."""
    if not path.is_file():                   # reading a FIFO or a device would block or never end
        raise ValueError(f"corpus file {path} is not a regular file; the corpus reads regular .py files only")
    return path.read_text(encoding="utf-8", errors="replace")


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one source file, in file order ([] if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]


def documents(files: list[str], root: Path | None = None, mix: Mix = "both") -> list[str]:
    """The documents of `files`: source code and/or joined docstrings, per file, in file order."""
    check_choice("mix", mix, Mix)
    root = Path(root) if root is not None else snapshot_root()
    docs = []
    for rel in files:
        source = read_source(root / rel)
        if mix in ("code", "both"):
            docs.append(source)
        if mix in ("docstrings", "both") and (ds := docstrings(source)):
            docs.append("\n\n".join(ds))
    return docs


def split_files(files: list[str]) -> dict[str, list[str]]:
    """Files grouped by split_of, each list sorted."""
    groups = {s: [] for s in SPLITS}
    for rel in files:
        groups[split_of(rel)].append(rel)
    return groups


# ---------------------------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> Tokenizer:
    """A byte-level BPE: the 256 byte symbols, EOT, then merges learned from `texts` up to vocab_size.

    Byte-level means every string maps to byte symbols first, so encode -> decode is the identity
    on any text (no unknown tokens, no normalisation).
    """
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be > 257 (256 bytes + EOT), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path = DEFAULT_TOKENIZER) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found; create it with "
                                f"`mtp-lab train --tokenizer {path}` (it is trained when missing)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"tokenizer file {path} is not a valid tokenizers JSON file: {e}") from e


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    atomic_write_bytes(Path(path), tok.to_str(pretty=False).encode("utf-8"))


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise ValueError(f"tokenizer has no {EOT} token; train it with mtp_lab.data.train_tokenizer")
    return i


def encode_documents(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """All documents as one uint16 stream, each followed by EOT."""
    if tok.get_vocab_size() > 2 ** 16:
        raise ValueError(f"vocabulary {tok.get_vocab_size()} does not fit uint16 token streams")
    eot = eot_id(tok)
    ids = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.uint16)


# ---------------------------------------------------------------------------------------------- files

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then os.replace: readers see the old or new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)                      # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno and e.filename is None:    # a full disk: name the file written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_json(path: Path, obj, **dumps) -> None:
    """`obj` as JSON (json.dumps keyword arguments: indent 2 unless given) and a final newline, atomically."""
    atomic_write_bytes(Path(path), (json.dumps(obj, **{"indent": 2, **dumps}) + "\n").encode("utf-8"))


def cache_dir() -> Path:
    """$MTP_LAB_CACHE, else ~/.cache/mtp_lab."""
    return Path(os.environ.get("MTP_LAB_CACHE", Path.home() / ".cache" / "mtp_lab"))


# ---------------------------------------------------------------------------------------------- corpus

@dataclass
class Corpus:
    """Token streams per split, and the tokenizer that made them."""
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]        # split -> uint16 token ids
    files: dict[str, list[str]]          # split -> relative paths

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def build_corpus(tokenizer: Tokenizer | str | Path | None = DEFAULT_TOKENIZER, root: Path | None = None,
                 files: list[str] | None = None, mix: Mix = "both", vocab_size: int = 2048,
                 use_cache: bool = True) -> Corpus:
    """Split the corpus files, get a tokenizer, and encode each split.

    tokenizer: a Tokenizer, or a path; a missing path is trained on the TRAIN split and saved there;
    None trains one without saving. Encoded streams are cached under cache_dir(), keyed by a hash of
    the tokenizer, mix and each file's path and size (written atomically; delete the folder to reset).
    """
    root = Path(root) if root is not None else snapshot_root()
    files = list_files(root) if files is None else sorted(files)
    groups = split_files(files)
    if not groups["train"]:
        raise ValueError(f"no training files among the {len(files)} corpus files; pass more files")
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    elif tokenizer is not None and Path(tokenizer).is_file():
        tok = load_tokenizer(tokenizer)
    else:
        tok = train_tokenizer(documents(groups["train"], root, mix), vocab_size)
        if tokenizer is not None:
            save_tokenizer(tok, tokenizer)
    key = hashlib.sha256(json.dumps({
        "tokenizer": tok.to_str(), "mix": mix, "root": str(root),
        "files": [(rel, (root / rel).stat().st_size) for rel in files]}).encode()).hexdigest()[:16]
    streams = {}
    for split, split_list in groups.items():
        path = cache_dir() / f"{key}-{split}.npy"
        if use_cache and path.is_file():
            try:
                streams[split] = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError):          # a damaged cache file is encoded again, below
                pass
            if split in streams and streams[split].dtype == np.uint16 and streams[split].ndim == 1:
                continue
        streams[split] = encode_documents(tok, documents(split_list, root, mix))
        if use_cache:
            buffer = io.BytesIO()
            np.save(buffer, streams[split], allow_pickle=False)
            try:
                atomic_write_bytes(path, buffer.getvalue())
            except OSError as e:
                raise OSError(e.errno, f"cannot write the token cache {path} ({e.strerror}); set MTP_LAB_CACHE "
                                       f"to a writable folder") from e
    return Corpus(tokenizer=tok, splits=streams, files=groups)


def sample_batch(data: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of seq_len + 1 tokens: x = window[:-1], y = window[1:] (nanoGPT pairs), int64."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"token stream of {len(data)} tokens is too short for seq_len {seq_len}; "
                         f"use a shorter seq_len or more files")
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    windows = np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int64)  # (B, T+1)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]


def eval_batches(data: np.ndarray, n_batches: int, batch_size: int, seq_len: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed evaluation set: n_batches * batch_size windows spread evenly over the stream."""
    n = n_batches * batch_size
    if len(data) <= seq_len + 1:
        raise ValueError(f"token stream of {len(data)} tokens is too short for seq_len {seq_len}")
    starts = np.linspace(0, len(data) - seq_len - 1, num=n).astype(np.int64)
    windows = torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int64))
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]
