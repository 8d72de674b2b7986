"""Corpus listing, the hash split, docstrings, the BPE tokenizer, the token cache and batch sampling."""

import hashlib

import numpy as np
import pytest
from stdlib_sample import sample_tokenizer

from mtp_lab.data import (
    DEFAULT_TOKENIZER,
    EOT,
    build_corpus,
    docstrings,
    documents,
    eot_id,
    eval_batches,
    list_files,
    load_tokenizer,
    sample_batch,
    split_files,
    split_of,
    train_tokenizer,
)

TRICKY = ["", " ", "def f(x):\n    return x  # tab\tand  two spaces\r\n", "Ünïcödé ✓ 😀 中文 \x00\x7f",
          "\n\n\n    \t  ", "ends with space ", "a" * 500]


@pytest.fixture(scope="module")
def small_tokenizer(sample_root):
    return sample_tokenizer(sample_root, vocab_size=400)


def test_split_rule_matches_documented_hash():
    # independent re-derivation of the documented rule: u = sha256(path)[:8] / 2^64
    for rel in ["os.py", "json/decoder.py", "asyncio/tasks.py", "email/mime/text.py"]:
        u = int(hashlib.sha256(rel.encode()).hexdigest()[:16], 16) / 2 ** 64
        assert split_of(rel) == ("val" if u < 0.05 else "test" if u < 0.10 else "train")
    assert split_of("timeit.py") == "test" and split_of("sched.py") == "val" and split_of("heapq.py") == "train"


def test_stdlib_listing_and_split_are_deterministic_and_disjoint():
    files = list_files()
    assert files == list_files() and files == sorted(files)
    assert not any(part in ("site-packages", "test", "tests", "idle_test") for f in files for part in f.split("/"))
    assert "os.py" in files and "json/decoder.py" in files
    groups = split_files(files)
    assert sorted(sum(groups.values(), [])) == files
    fractions = {s: len(v) / len(files) for s, v in groups.items()}
    assert 0.02 < fractions["val"] < 0.09 and 0.02 < fractions["test"] < 0.09


def test_docstrings_in_file_order():
    src = '"""Module doc."""\nclass A:\n    """Class doc."""\n    def f(self):\n        """  Method doc.\n\n' \
          '        More."""\n\ndef g():\n    return 1\n'
    assert docstrings(src) == ["Module doc.", "Class doc.", "Method doc.\n\nMore."]
    assert docstrings("def broken(:\n") == []


@pytest.mark.parametrize("text", TRICKY)
def test_shipped_tokenizer_round_trip(text):
    tok = load_tokenizer(DEFAULT_TOKENIZER)
    assert tok.get_vocab_size() == 2048
    assert tok.decode(tok.encode(text).ids) == text


def test_round_trip_keeps_literal_eot_when_specials_are_kept():
    tok = load_tokenizer(DEFAULT_TOKENIZER)
    text = f"a{EOT}b"
    ids = tok.encode(text).ids
    assert eot_id(tok) in ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_trained_tokenizer_round_trip_and_size(small_tokenizer):
    assert small_tokenizer.get_vocab_size() == 400
    for text in TRICKY:
        assert small_tokenizer.decode(small_tokenizer.encode(text).ids) == text
    # merges were learned: Python text takes fewer tokens than bytes
    code = "    def __init__(self, *args, **kwargs):\n        return None\n"
    assert len(small_tokenizer.encode(code).ids) < 0.7 * len(code.encode())


def test_corpus_streams_cache_and_eot(sample_root, small_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    fresh = build_corpus(small_tokenizer, root=sample_root, mix="code")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    cached = build_corpus(small_tokenizer, root=sample_root, mix="code")
    eot = eot_id(small_tokenizer)
    for split in ("train", "val", "test"):
        assert np.array_equal(fresh.splits[split], cached.splits[split])
        assert fresh.splits[split].dtype == np.uint16 and fresh.splits[split][-1] == eot
    # the test stream decodes back to exactly the test files' sources, each followed by EOT
    sources = documents(fresh.files["test"], sample_root, mix="code")
    text = small_tokenizer.decode(fresh.splits["test"].tolist(), skip_special_tokens=False)
    assert text == "".join(s + EOT for s in sources)
    both = build_corpus(small_tokenizer, root=sample_root, mix="both", use_cache=False)
    assert len(both.splits["train"]) > len(fresh.splits["train"])


def test_missing_tokenizer_is_trained_on_train_split_and_saved(sample_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tok.json"
    corpus = build_corpus(path, root=sample_root, vocab_size=300)
    assert path.is_file() and load_tokenizer(path).get_vocab_size() == corpus.vocab_size == 300


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mix"):
        documents([], mix="prose")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(ValueError, match="not a directory"):
        list_files(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="mtp-lab train"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="too short"):
        sample_batch(np.arange(10, dtype=np.uint16), 2, 16, np.random.default_rng(0))


def test_batches_are_shifted_pairs_and_seeded():
    data = np.arange(1000, dtype=np.uint16)
    x, y = sample_batch(data, 4, 16, np.random.default_rng(3))
    x2, _ = sample_batch(data, 4, 16, np.random.default_rng(3))
    assert x.shape == (4, 16) and x.dtype.is_floating_point is False
    assert (y[:, :-1] == x[:, 1:]).all() and (y == x + 1).all()   # arange: next token = id + 1
    assert (x == x2).all()
    batches = eval_batches(data, 3, 2, 16)
    assert len(batches) == 3 and batches[0][0][0, 0] == 0 and batches[-1][1][-1, -1] == 999
