"""Repeat of the issue-21 audit with NEW hostile inputs (none of them is a case of tests/test_hostile.py).

Each case runs one `mtp-lab` command in this process (a watchdog stops a hang after --timeout seconds) on copies of
a tiny trained run and model, and is classed:
    OK    refused with one line naming the problem (exit 2; argparse's usage line plus its error line counts as one)
          and nothing on disk changed; or, where the input is legitimate, the command succeeded;
    weak  refused, but in more than one line;
    bad   a traceback, a hang, success where it must refuse, a refusal where it must succeed, or a file changed.
Prints one row per case, then the counts.

    .venv/bin/python tools/hostile_audit.py            # about 70 cases, under a minute on one core
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mtp_lab.checkpoint import PRETRAINED_DIR, load_pretrained, save_model
from mtp_lab.cli import main as cli_main
from mtp_lab.data import DEFAULT_TOKENIZER, snapshot_root

SAMPLE = ["textwrap.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "glob.py", "colorsys.py", "keyword.py",
          "sched.py", "secrets.py", "timeit.py", "bz2.py"]
TINY = ["--preset", "tiny", "--vocab-size", "300", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1",
        "--threads", "1"]
SMALL_DISTILL = ["--steps", "1", "--batch-size", "4", "--seq-len", "32", "--prompt-len", "8", "--generated", "4",
                 "--threads", "1"]
SMALL_BENCH = ["--prompts", "1", "--prompt-len", "8", "--new-tokens", "8", "--threads", "1"]


class Hang(Exception):
    pass


def tree(*folders: Path) -> dict:
    """{path: sha256, 'dir', or the mode of a special file} under `folders` (the token cache left out)."""
    out = {}
    for folder in folders:
        if not folder.exists() and not folder.is_symlink():
            continue
        for p in [folder, *sorted(folder.rglob("*"))] if folder.is_dir() else [folder]:
            if "cache" in p.parts:
                continue
            st = os.lstat(p)
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink()
                           else "dir" if p.is_dir() else st.st_mode)
    return out


def edit_json(path: Path, change, rehash_in: Path | None = None) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))
    if rehash_in is not None:
        rehash(rehash_in, path.name)


def rehash(run: Path, name: str) -> None:
    meta = json.loads((run / "trainer.json").read_text())
    meta["sha256"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
    (run / "trainer.json").write_text(json.dumps(meta))


def edit_tensors(path: Path, change, rehash_in: Path | None = None) -> None:
    tensors = st_load(path.read_bytes())
    change(tensors)
    path.write_bytes(st_save(tensors))
    if rehash_in is not None:
        rehash(rehash_in, path.name)


def cases(t: Path, root: Path, run: Path, model: Path, tok: Path):
    """(name, expect "refuse" | "ok", setup(case folder) -> argv). Each case gets fresh copies: c/run, c/model."""
    train = ["train", "--root", str(root), *TINY]

    def r(c):                       # the run copy of this case
        return c / "run"

    def m(c):
        return c / "model"

    def resume(c, *extra):
        return ["train", "--out", str(r(c)), "--resume", "--steps", "3", "--threads", "1", *extra]

    yield "export through a symlink to a model", "refuse", lambda c: (
        os.symlink(m(c), c / "link"), train + ["--out", str(c / "new"), "--export", str(c / "link")])[1]
    yield "bench json through a symlink to optimizer", "refuse", lambda c: (
        os.symlink(r(c) / "optimizer.safetensors", c / "o.json"),
        ["bench", "--random", "tiny", "--json", str(c / "o.json"), *SMALL_BENCH])[1]
    yield "distill out through a symlink to a run", "refuse", lambda c: (
        os.symlink(r(c), c / "runlink"), ["distill", "--checkpoint", str(m(c)), "--out", str(c / "runlink"),
                                          "--overwrite"])[1]
    yield "train out is the corpus root", "refuse", lambda c: train + ["--out", str(root)]
    yield "out in the assets via ..", "refuse", lambda c: train + [
        "--out", str(PRETRAINED_DIR / ".." / PRETRAINED_DIR.name / "sub"), "--overwrite"]
    yield "fp8 json over the shipped tokenizer", "refuse", lambda c: [
        "fp8-bench", "--parts", "quantization", "--json", str(DEFAULT_TOKENIZER)]
    yield "new tokenizer inside a model folder", "refuse", lambda c: train + [
        "--out", str(c / "new"), "--tokenizer", str(m(c) / "new_tok.json")]
    yield "bench json a unix socket", "refuse", lambda c: (
        socket.socket(socket.AF_UNIX).bind(str(c / "sock")),
        ["bench", "--random", "tiny", "--json", str(c / "sock"), *SMALL_BENCH])[1]
    yield "train out a model folder, no flag", "refuse", lambda c: train + ["--out", str(m(c))]
    yield "resume a model folder", "refuse", lambda c: ["train", "--out", str(m(c)), "--resume"]
    yield "export to an empty folder", "ok", lambda c: (
        (c / "empty").mkdir(), train + ["--out", str(c / "new"), "--steps", "1", "--tokenizer", str(tok),
                                        "--export", str(c / "empty")])[1]
    yield "distill replaces a model with --overwrite", "ok", lambda c: (
        shutil.copytree(m(c), c / "m2"), ["distill", "--checkpoint", str(m(c)), "--out", str(c / "m2"), "--root",
                                          str(root), "--overwrite", *SMALL_DISTILL])[1]

    # the recorded corpus
    yield "resume after the recorded root moved", "refuse", lambda c: (
        edit_json(r(c) / "trainer.json", lambda o: o["data"].update(root=str(c / "gone"))), resume(c))[1]
    yield "resume, --root the same folder via a symlink", "ok", lambda c: (
        os.symlink(root, c / "rootlink"), resume(c, "--root", str(c / "rootlink")))[1]
    yield "resume --mix docstrings", "refuse", lambda c: resume(c, "--mix", "docstrings")
    yield "resume after a file was added to the corpus", "refuse", lambda c: (
        shutil.copytree(root, c / "root2"), (c / "root2" / "extra.py").write_text("def f():\n    return 1\n"),
        edit_json(r(c) / "trainer.json", lambda o: o["data"].update(root=str(c / "root2"))), resume(c))[-1]
    yield "resume, record points at another corpus", "refuse", lambda c: (
        (c / "other").mkdir(), shutil.copy(root / "heapq.py", c / "other"), shutil.copy(root / "bz2.py", c / "other"),
        edit_json(r(c) / "trainer.json", lambda o: o["data"].update(root=str(c / "other"))), resume(c))[-1]
    yield "resume --steps at the saved step", "ok", lambda c: [
        "train", "--out", str(r(c)), "--resume", "--steps", "2", "--threads", "1"]
    yield "resume --preset shallow (ignored, named)", "ok", lambda c: resume(c, "--preset", "shallow")
    yield "resume --mtp-depth 1 (conflict)", "refuse", lambda c: resume(c, "--mtp-depth", "1")

    # state
    yield "step 0 with moments", "refuse", lambda c: (edit_json(r(c) / "trainer.json", lambda o: o.update(step=0)),
                                                       resume(c))[1]
    yield "step 2^40 + 1", "refuse", lambda c: (
        edit_json(r(c) / "trainer.json", lambda o: o.update(step=2 ** 40 + 1)), resume(c))[1]
    yield "step NaN literal", "refuse", lambda c: (
        (r(c) / "trainer.json").write_text((r(c) / "trainer.json").read_text().replace('"step": 2', '"step": NaN')),
        resume(c))[1]
    yield "AdamW step counts NaN, rehashed", "refuse", lambda c: (edit_tensors(
        r(c) / "optimizer.safetensors", lambda t: t.update({k: torch.tensor(float("nan")) for k in t
                                                            if k.endswith(".step")}), r(c)), resume(c))[1]
    yield "AdamW step count of shape (2,), rehashed", "refuse", lambda c: (edit_tensors(
        r(c) / "optimizer.safetensors", lambda t: t.update({"0.step": torch.tensor([2.0, 2.0])}), r(c)),
        resume(c))[1]
    yield "sha256 map with an unknown file", "refuse", lambda c: (
        edit_json(r(c) / "trainer.json", lambda o: o["sha256"].update({"x.bin": "0" * 64})), resume(c))[1]
    yield "sha256 upper-case", "refuse", lambda c: (
        edit_json(r(c) / "trainer.json", lambda o: o["sha256"].update(
            {"model.safetensors": o["sha256"]["model.safetensors"].upper()})), resume(c))[1]
    yield "another valid tokenizer, rehashed", "refuse", lambda c: (
        shutil.copy(DEFAULT_TOKENIZER, r(c) / "tokenizer.json"), rehash(r(c), "tokenizer.json"), resume(c))[-1]
    yield "config d_model 2^29, rehashed", "refuse", lambda c: (
        edit_json(r(c) / "config.json", lambda o: o["model"].update(d_model=2 ** 29), r(c)), resume(c))[1]
    yield "config max_seq_len 10^6, rehashed", "refuse", lambda c: (
        edit_json(r(c) / "config.json", lambda o: o["model"].update(max_seq_len=10 ** 6), r(c)), resume(c))[1]
    yield "trainer.json deleted", "refuse", lambda c: ((r(c) / "trainer.json").unlink(), resume(c))[1]
    yield "model.safetensors a FIFO", "refuse", lambda c: (
        (r(c) / "model.safetensors").unlink(), os.mkfifo(r(c) / "model.safetensors"), resume(c))[-1]
    yield "config.json a FIFO", "refuse", lambda c: (
        (r(c) / "config.json").unlink(), os.mkfifo(r(c) / "config.json"), resume(c))[-1]
    yield "trainer.json a FIFO", "refuse", lambda c: (
        (r(c) / "trainer.json").unlink(), os.mkfifo(r(c) / "trainer.json"), resume(c))[-1]
    yield "optimizer header claims 10^12 bytes, rehashed", "refuse", lambda c: (
        (r(c) / "optimizer.safetensors").write_bytes((10 ** 12).to_bytes(8, "little") + b"{}"),
        rehash(r(c), "optimizer.safetensors"), resume(c))[-1]
    yield ".lock is a folder", "refuse", lambda c: ((r(c) / ".lock").mkdir(), resume(c))[1]
    yield ".lock a symlink to a victim file", "refuse", lambda c: (
        (c / "victim").write_text("keep me\n"), os.symlink(c / "victim", r(c) / ".lock"), resume(c))[-1]
    yield "bench on a run whose config was edited", "refuse", lambda c: (
        edit_json(r(c) / "config.json", lambda o: o.update(note="x")),
        ["bench", "--checkpoint", str(r(c)), "--json", str(c / "b.json"), *SMALL_BENCH])[1]
    yield "distill a model with weights_dtype int8", "refuse", lambda c: (
        edit_json(m(c) / "config.json", lambda o: o.update(weights_dtype="int8")),
        ["distill", "--checkpoint", str(m(c)), "--out", str(c / "d"), "--root", str(root), *SMALL_DISTILL])[1]
    yield "distill a model with weights_dtype Tensor", "refuse", lambda c: (
        edit_json(m(c) / "config.json", lambda o: o.update(weights_dtype="Tensor")),
        ["distill", "--checkpoint", str(m(c)), "--out", str(c / "d"), "--root", str(root), *SMALL_DISTILL])[1]

    # distillation settings
    distill = ["distill", "--checkpoint", str(model), "--root", str(root), *SMALL_DISTILL]
    for flag, value in (("--generated-fraction", "1.5"), ("--seed", "-5"), ("--lr", "11"), ("--grad-clip", "inf"),
                        ("--prompt-len", "200"), ("--seq-len", "100000"), ("--warmup", "-1"), ("--lr", "-0.0")):
        yield f"distill {flag} {value}", "refuse", lambda c, f=flag, v=value: distill + ["--out", str(c / "d"), f, v]

    # bounds
    yield "info --mtp-depth -1", "refuse", lambda c: ["info", "--preset", "tiny", "--mtp-depth", "-1"]
    yield "info --mtp-depth 33", "refuse", lambda c: ["info", "--preset", "tiny", "--mtp-depth", "33"]
    yield "train --batch-size 2^50", "refuse", lambda c: train + ["--out", str(c / "new"), "--batch-size",
                                                                   str(2 ** 50)]
    yield "train --batch-size 0", "refuse", lambda c: train + ["--out", str(c / "new"), "--batch-size", "0"]
    yield "train --seq-len 2^20 (beyond the model)", "refuse", lambda c: train + [
        "--out", str(c / "new"), "--seq-len", str(2 ** 20), "--tokenizer", str(tok)]
    yield "train --threads 2^63", "refuse", lambda c: train + ["--out", str(c / "new"), "--threads", str(2 ** 63)]
    yield "train --warmup 1e3 (not an int)", "refuse", lambda c: train + ["--out", str(c / "new"), "--warmup", "1e3"]
    yield "train --lr 10.5", "refuse", lambda c: train + ["--out", str(c / "new"), "--lr", "10.5"]
    yield "train --min-lr -1", "refuse", lambda c: train + ["--out", str(c / "new"), "--min-lr", "-1"]
    yield "bench --prompts 10^12", "refuse", lambda c: ["bench", "--random", "tiny", "--prompts", str(10 ** 12),
                                                         "--json", str(c / "b.json")]
    yield "bench --prompt-len 10^9", "refuse", lambda c: ["bench", "--random", "tiny", "--prompt-len", str(10 ** 9),
                                                           "--json", str(c / "b.json")]
    yield "bench --new-tokens 10^9", "refuse", lambda c: ["bench", "--random", "tiny", "--new-tokens", str(10 ** 9),
                                                           "--prompts", "1", "--json", str(c / "b.json")]
    yield "bench --threads 0", "refuse", lambda c: ["bench", "--random", "tiny", "--threads", "0"]
    yield "bench --k 0", "refuse", lambda c: ["bench", "--random", "tiny", "--k", "0"]
    yield "bench --seed 1.5", "refuse", lambda c: ["bench", "--random", "tiny", "--seed", "1.5"]
    yield "bench --temperature 1e-45", "ok", lambda c: [
        "bench", "--random", "tiny", "--temperature", "1e-45", "--k", "1", "--json", str(c / "b.json"), *SMALL_BENCH]
    yield "bench --temperature -1e-9", "refuse", lambda c: ["bench", "--random", "tiny", "--temperature", "-1e-9"]
    yield "bench --k 3 1 unsorted", "ok", lambda c: [
        "bench", "--random", "tiny", "--k", "3", "1", "--json", str(c / "b.json"), *SMALL_BENCH]
    yield "bench ngram --profile", "ok", lambda c: [
        "bench", "--random", "tiny", "--drafters", "ngram", "--k", "1", "--profile", "--json", str(c / "b.json"),
        *SMALL_BENCH]
    yield "bench --random no-such-preset", "refuse", lambda c: ["bench", "--random", "huge", "--json",
                                                                 str(c / "b.json")]
    yield "fp8-bench --parts ''", "refuse", lambda c: ["fp8-bench", "--parts", ","]

    # the corpus
    def fifo_root(c):
        shutil.copytree(root, c / "fr")
        os.mkfifo(c / "fr" / "pipe.py")
        os.symlink("/dev/urandom", c / "fr" / "random.py")
        os.symlink(".", c / "fr" / "loop")
        return train + ["--root", str(c / "fr"), "--out", str(c / "new"), "--steps", "1", "--tokenizer", str(tok)]
    yield "--root holding a FIFO, /dev/urandom link, a loop", "ok", fifo_root
    yield "--root is a FIFO", "refuse", lambda c: (os.mkfifo(c / "rf"), train + ["--root", str(c / "rf"), "--out",
                                                                                  str(c / "new")])[1]
    yield "--root is empty", "refuse", lambda c: ((c / "er").mkdir(), train + ["--root", str(c / "er"), "--out",
                                                                                str(c / "new")])[1]
    yield "--tokenizer a folder named .json", "refuse", lambda c: (
        (c / "t.json").mkdir(), train + ["--out", str(c / "new"), "--tokenizer", str(c / "t.json")])[1]


def run_case(argv: list[str], timeout: int) -> tuple[str, int | None, str]:
    """(what happened: "exit" | "traceback" | "hang", exit code, stderr)."""
    err = io.StringIO()

    def alarm(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli_main(argv)
            except SystemExit as e:                       # argparse
                code = e.code
        return "exit", code, err.getvalue()
    except Hang:
        return "hang", None, err.getvalue()
    except BaseException:
        return "traceback", None, err.getvalue() + traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def classify(expect: str, outcome: str, code, err: str, changed: bool) -> tuple[str, str]:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("note:", "train:",
                                                                                         "distill:"))]
    last = lines[-1] if lines else ""
    if outcome != "exit":
        return "bad", f"{outcome}: {last[:150]}"
    if expect == "ok":
        return ("OK", "succeeded") if code == 0 else ("bad", f"exit {code}: {last[:150]}")
    if code == 0:
        return "bad", "exit 0: the input was accepted"
    if changed:
        return "bad", f"exit {code} but a file changed: {last[:120]}"
    usage = len(lines) == 2 and lines[0].startswith("usage:")          # argparse: usage, then its error line
    if code == 2 and (len(lines) == 1 or usage) and ": error: " in last:
        return "OK", last[:150]
    return "weak", f"exit {code}, {len(lines)} lines: {last[:120]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=60, help="seconds before a case counts as a hang")
    parser.add_argument("-k", default="", help="run only the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        os.environ["MTP_LAB_CACHE"] = str(t / "cache")
        root = t / "root"
        root.mkdir()
        for name in SAMPLE:
            shutil.copy(snapshot_root() / name, root / name)
        tok = t / "tok.json"
        assert cli_main(["train", "--root", str(root), *TINY, "--tokenizer", str(tok), "--out", str(t / "run"),
                         "--steps", "2", "--save-interval", "1"]) == 0
        model, tokenizer = load_pretrained(t / "run")
        save_model(t / "model", model, tokenizer)
        protected = [root, t / "run", t / "model", tok, PRETRAINED_DIR.parent]
        before_all = tree(*protected)
        counts = {"OK": 0, "weak": 0, "bad": 0}
        for i, (name, expect, setup) in enumerate(cases(t, root, t / "run", t / "model", tok)):
            if args.k not in name:
                continue
            c = t / f"case{i}"
            c.mkdir()
            shutil.copytree(t / "run", c / "run")
            shutil.copytree(t / "model", c / "model")
            argv = setup(c)
            before = tree(c, *protected)
            outcome, code, err = run_case(argv, args.timeout)
            after = tree(c, *protected)
            created = {k for k in after if k not in before}
            changed = any(after.get(k) != v for k, v in before.items()) or (expect == "refuse" and created)
            verdict, why = classify(expect, outcome, code, err, changed)
            counts[verdict] += 1
            print(f"{verdict:4}  {name:48} {why}", flush=True)
            shutil.rmtree(c, ignore_errors=True)
        assert tree(*protected) == before_all, "a protected file changed during the audit"
    print(f"\n{sum(counts.values())} cases: {counts['OK']} OK, {counts['weak']} weak, {counts['bad']} bad")
    return 1 if counts["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
