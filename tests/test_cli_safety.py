"""Bad input and interruptions on the command line: each ends in one line that names the problem and the fix
(exit 2, or 130 for Ctrl-C), output paths are checked before any long work, and nothing written is lost.
Also the prompt forms the decoding engine accepts (numpy arrays)."""

import dataclasses
import errno
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
from cli_errors import one_line_error, train_tiny_run
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import mtp_lab.bench
import mtp_lab.checkpoint
import mtp_lab.data
import mtp_lab.fp8_bench
import mtp_lab.train
from mtp_lab import MTPModel, get_preset
from mtp_lab.cli import main as cli_main
from mtp_lab.decoding import speculative_generate

pytestmark = pytest.mark.usefixtures("one_thread")
UNWRITABLE = "/sys/mtp_lab_out"       # sysfs: no new files there, even for root


@pytest.fixture(scope="module")
def run(sample_root, tmp_path_factory):
    """(train arguments without --out, a finished 2-step tiny run with a checkpoint at each step)."""
    tmp = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        args = train_tiny_run(mp, tmp, sample_root)
        yield args, tmp / "run"


# ---------------------------------------------------------------- output paths, flags: refused before any work

TRAIN_CASES = {  # name -> (arguments after the common ones; {tmp}: a fresh folder, {run}: a finished run), message
    "out is a file": (["--out", "{tmp}/a_file"], r"--out .*a_file is a file; give a folder"),
    "out under a file": (["--out", "{tmp}/a_file/run"], r"a_file is a file, so nothing can be created"),
    "out unwritable": (["--out", UNWRITABLE], r"cannot write in /sys \(Permission denied\)"),
    "out holds a run": (["--out", "{run}"], r"already holds a checkpoint; continue it with --resume, "
                                            r"replace it with --overwrite"),
    "export is a file": (["--out", "{tmp}/new", "--export", "{tmp}/a_file"], r"--export .*a_file is a file"),
    "export is out": (["--out", "{tmp}/new", "--export", "{tmp}/new/sub/.."],
                      r"--export .* would overwrite --out .*new, which this command reads; give another --export"),
    "export is a run": (["--out", "{tmp}/new", "--export", "{run}"], r"--export .* is a training run's folder: a "
                        r"model written there would replace its fp32 weights and break its --resume"),
    "tokenizer is a folder": (["--out", "{tmp}/new", "--tokenizer", "{tmp}"], r"--tokenizer .* is a folder"),
    "tokenizer unwritable": (["--out", "{tmp}/new", "--tokenizer", UNWRITABLE + "/tok.json"], r"cannot write in /sys"),
    "lambda nan": (["--out", "{tmp}/new", "--lambda", "nan"], r"lambda must be a finite number >= 0"),
    "lambda inf": (["--out", "{tmp}/new", "--lambda", "inf"], r"lambda must be a finite number >= 0"),
    "lr nan": (["--out", "{tmp}/new", "--lr", "nan"], r"TrainConfig\.lr must be a finite number"),
    "lr inf": (["--out", "{tmp}/new", "--lr", "inf"], r"TrainConfig\.lr must be a finite number"),
    "lr 0": (["--out", "{tmp}/new", "--lr", "0"], r"TrainConfig\.lr must be a finite number > 0"),
    "min-lr nan": (["--out", "{tmp}/new", "--min-lr", "nan"], r"TrainConfig\.min_lr must be a finite"),
    "weight-decay inf": (["--out", "{tmp}/new", "--weight-decay", "inf"], r"TrainConfig\.weight_decay must be"),
    "grad-clip nan": (["--out", "{tmp}/new", "--grad-clip", "nan"], r"TrainConfig\.grad_clip must be"),
    "warmup -1": (["--out", "{tmp}/new", "--warmup", "-1"], r"TrainConfig\.warmup must be an integer >= 0"),
    "seed -1": (["--out", "{tmp}/new", "--seed", "-1"], r"seed must be an integer in \[0, 2\^64\)"),
    "threads -1": (["--out", "{tmp}/new", "--threads", "-1"], r"--threads must be a positive integer .*got -1"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_bad_outputs_and_flags_before_the_corpus(run, tmp_path, capsys, no_long_work, case):
    args, folder = run
    (tmp_path / "a_file").write_text("not a folder")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    extra, message = TRAIN_CASES[case]
    err = one_line_error(capsys, args + [a.format(tmp=tmp_path, run=folder) for a in extra])
    assert re.search(message, err), err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before        # the existing run is untouched


def test_train_resume_and_overwrite_are_exclusive(run, capsys):
    args, folder = run
    with pytest.raises(SystemExit) as e:
        cli_main(args + ["--out", str(folder), "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_overwrite_replaces_a_run_at_its_first_checkpoint(run, tmp_path, capsys):
    args, folder = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    assert cli_main(args + ["--out", str(out), "--overwrite", "--steps", "1", "--seed", "5"]) == 0
    state = json.loads((out / "trainer.json").read_text())
    assert state["step"] == 1 and state["train_config"]["seed"] == 5


@pytest.mark.parametrize("argv, message", [
    (["bench", "--random", "tiny", "--json", "{tmp}"], r"--json .* is a folder; give a file name"),
    (["bench", "--random", "tiny", "--json", "{tmp}/a_file/x.json"], r"a_file is a file, so nothing can be created"),
    (["bench", "--random", "tiny", "--json", UNWRITABLE + "/x.json"], r"cannot write in /sys"),
    (["distill", "--checkpoint", "{tmp}/model", "--out", "{tmp}/a_file"], r"--out .*a_file is a file"),
    (["distill", "--checkpoint", "{tmp}/model", "--out", UNWRITABLE], r"cannot write in /sys"),
    (["distill", "--checkpoint", "{tmp}/model", "--out", "{tmp}/model/."], r"would overwrite --checkpoint .*model, "
                                                                            r"which this command reads"),
    (["distill", "--checkpoint", "{tmp}/model", "--out", "{tmp}/new", "--threads", "-1"],
     r"--threads must be a positive integer"),
    (["fp8-bench", "--parts", "quantization", "--json", "{tmp}"], r"--json .* is a folder"),
    (["fp8-bench", "--parts", "quantization", "--json", UNWRITABLE + "/x.json"], r"cannot write in /sys"),
], ids=["bench json folder", "bench json under a file", "bench json unwritable", "distill out file",
        "distill out unwritable", "distill out is source", "distill threads", "fp8 json folder", "fp8 json unwritable"])
def test_other_commands_check_outputs_first(tmp_path, capsys, no_long_work, argv, message):
    (tmp_path / "a_file").write_text("not a folder")
    err = one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert re.search(message, err), err


# ---------------------------------------------------------------- corrupt checkpoints: refused at --resume

def rewrite(folder, name, data: bytes, rehash: bool = True) -> None:
    """Replace one checkpoint file; rehash=True records its sha256 in trainer.json, as if it had been saved so."""
    (folder / name).write_bytes(data)
    if rehash:
        meta = json.loads((folder / "trainer.json").read_text())
        meta.setdefault("sha256", {})[name] = hashlib.sha256(data).hexdigest()
        (folder / "trainer.json").write_text(json.dumps(meta))


def edit_json(folder, name, change) -> None:
    meta = json.loads((folder / name).read_text())
    data = json.dumps(change(meta)).encode()
    rewrite(folder, name, data, rehash=name != "trainer.json")


def edit_tensors(folder, name, change, rehash: bool = True) -> None:
    tensors = st_load((folder / name).read_bytes())
    change(tensors)
    rewrite(folder, name, st_save(tensors), rehash)


def nan_first(tensors):
    key = sorted(tensors)[1]
    tensors[key] = torch.full_like(tensors[key], float("nan"))


CORRUPTIONS = {  # name -> (how the checkpoint is damaged, what the one line says)
    "trainer.json not JSON": (lambda f: (f / "trainer.json").write_text("{"), r"trainer\.json: not valid JSON"),
    "trainer.json a list": (lambda f: (f / "trainer.json").write_text("[]"),
                            r"trainer\.json: holds a JSON list, not an object"),
    "trainer.json empty": (lambda f: (f / "trainer.json").write_text("{}"), r"trainer\.json: no 'step'"),
    "trainer.json step -1": (lambda f: edit_json(f, "trainer.json", lambda m: {**m, "step": -1}),
                             r"trainer\.json: no 'step' \(an integer >= 0\)"),
    "no train_config": (lambda f: edit_json(f, "trainer.json", lambda m: {**m, "train_config": None}),
                        r"trainer\.json: invalid train_config \(it is not an object\)"),
    "unknown train_config field": (
        lambda f: edit_json(f, "trainer.json", lambda m: {**m, "train_config": {**m["train_config"], "foo": 1}}),
        r"trainer\.json: invalid train_config \(.*'foo'"),
    "train_config lambda nan": (
        lambda f: edit_json(f, "trainer.json", lambda m: {**m, "train_config": {**m["train_config"],
                                                                                 "lam": float("nan")}}),
        r"trainer\.json: invalid train_config \(lambda must be a finite number"),
    "param_groups not a list": (lambda f: edit_json(f, "trainer.json", lambda m: {**m, "param_groups": "x"}),
                                r"trainer\.json: optimizer groups do not match the model"),
    "optimizer not safetensors": (lambda f: rewrite(f, "optimizer.safetensors", b"\x00" * 64),
                                  r"optimizer\.safetensors: not a readable safetensors file"),
    "optimizer tensor renamed": (lambda f: edit_tensors(f, "optimizer.safetensors",
                                                        lambda t: t.update({"x.exp_avg": t.pop("0.exp_avg")})),
                                 r"optimizer\.safetensors: unexpected tensor 'x\.exp_avg'"),
    "optimizer tensor reshaped": (lambda f: edit_tensors(f, "optimizer.safetensors",
                                                         lambda t: t.update({"0.exp_avg": t["0.exp_avg"][:1]})),
                                  r"optimizer\.safetensors: tensor '0\.exp_avg' has shape"),
    "optimizer state NaN": (lambda f: edit_tensors(f, "optimizer.safetensors", nan_first),
                            r"optimizer\.safetensors: tensor .* holds NaN or inf"),
    "optimizer from elsewhere": (lambda f: edit_tensors(f, "optimizer.safetensors",
                                                        lambda t: t["0.exp_avg"].mul_(2), rehash=False),
                                 r"optimizer\.safetensors: does not match the sha256 recorded in trainer\.json"),
    "config.json a list": (lambda f: rewrite(f, "config.json", b"[]"), r"config\.json: holds a JSON list"),
    "config.json without model": (lambda f: edit_json(f, "config.json", lambda m: {**m, "model": 3}),
                                  r"config\.json: no 'model' object"),
    "model int tensor": (lambda f: edit_tensors(f, "model.safetensors",
                                                lambda t: t.update({"norm.weight": t["norm.weight"].long()})),
                         r"model\.safetensors: tensor 'norm\.weight' has dtype int64"),
    "model weights NaN": (lambda f: edit_tensors(f, "model.safetensors", nan_first),
                          r"model\.safetensors: tensor .* holds NaN or inf"),
    "model from elsewhere": (lambda f: edit_tensors(f, "model.safetensors",
                                                    lambda t: t["norm.weight"].mul_(2), rehash=False),
                             r"model\.safetensors: does not match the sha256 recorded in trainer\.json"),
    "empty folder": (lambda f: [p.unlink() for p in f.iterdir()], r"trainer\.json: file missing"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_one_line_at_resume(run, tmp_path, capsys, monkeypatch, case):
    args, folder = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    damage, message = CORRUPTIONS[case]
    damage(out)
    err = one_line_error(capsys, args + ["--out", str(out), "--resume", "--steps", "3"])
    assert re.search(message, err), err


# ---------------------------------------------------------------- interrupted and diverged runs

def test_ctrl_c_says_where_the_last_checkpoint_is(run, tmp_path, capsys, monkeypatch):
    args, folder = run
    real_step = mtp_lab.train.Trainer.train_step

    def interrupted_at_step_4(trainer):
        if trainer.step == 3:
            raise KeyboardInterrupt
        return real_step(trainer)

    out = tmp_path / "run"
    monkeypatch.setattr(mtp_lab.train.Trainer, "train_step", interrupted_at_step_4)
    assert cli_main(args + ["--out", str(out), "--steps", "6", "--save-interval", "2"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"mtp-lab train: interrupted: stopped at step 3; the last checkpoint, "
                                            f"step 2, is in {out}: continue with `mtp-lab train --out {out} --resume`")
    monkeypatch.setattr(mtp_lab.train.Trainer, "train_step", real_step)
    assert cli_main(args + ["--out", str(out), "--resume"]) == 0
    assert json.loads((out / "trainer.json").read_text())["step"] == 6


def test_nonfinite_loss_stops_the_command_and_keeps_the_checkpoint(run, tmp_path, capsys, monkeypatch):
    args, folder = run
    real_loss, calls = mtp_lab.train.mtp_loss, []

    def nan_from_step_3(out, y, lam):
        calls.append(lam)
        parts = real_loss(out, y, lam)
        return dataclasses.replace(parts, total=parts.total * float("nan")) if len(calls) >= 3 else parts

    out = tmp_path / "run"
    monkeypatch.setattr(mtp_lab.train, "mtp_loss", nan_from_step_3)
    assert cli_main(args + ["--out", str(out), "--steps", "4", "--save-interval", "2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("mtp-lab train: error: training step 3: loss nan") and "not finite" in line, line
    assert line.endswith(f"the last checkpoint, step 2, is in {out}: continue with `mtp-lab train --out {out} "
                         f"--resume`"), line
    assert json.loads((out / "trainer.json").read_text())["step"] == 2
    assert all(torch.isfinite(t).all() for t in st_load((out / "model.safetensors").read_bytes()).values())


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(run, tmp_path, capsys, monkeypatch):
    args, _ = run
    real_write, writes = mtp_lab.checkpoint.atomic_write_bytes, []

    def disk_full_in_save_2(path, data):       # each save writes 4 files through it (the tokenizer elsewhere)
        writes.append(path)
        if len(writes) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    out = tmp_path / "run"
    monkeypatch.setattr(mtp_lab.checkpoint, "atomic_write_bytes", disk_full_in_save_2)
    assert cli_main(args + ["--out", str(out), "--steps", "3", "--save-interval", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("mtp-lab train: error: [Errno 28] No space left on device") and line.endswith(
        f"the last checkpoint, step 1, is in {out}: continue with `mtp-lab train --out {out} --resume`"), line
    monkeypatch.setattr(mtp_lab.checkpoint, "atomic_write_bytes", real_write)
    assert cli_main(args + ["--out", str(out), "--resume"]) == 0
    assert json.loads((out / "trainer.json").read_text())["step"] == 3


# ---------------------------------------------------------------- decoding: numpy prompts

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MTPModel(get_preset("tiny")).eval()


@pytest.mark.parametrize("prompt", [np.array([5, 6, 7]), np.array([[5, 6, 7]], dtype=np.int32),
                                    np.array([5, 6, 7], dtype=np.uint16), [np.int64(5), np.int16(6), 7]],
                         ids=["int64 1-D", "int32 (1, T)", "uint16", "list of numpy ints"])
def test_integer_numpy_prompts_decode_like_lists(tiny, prompt):
    want = speculative_generate(tiny, [5, 6, 7], 8, num_draft=2).tokens
    assert speculative_generate(tiny, prompt, 8, num_draft=2).tokens == want


@pytest.mark.parametrize("prompt, message", [
    (np.array([5.0, 6.0]), r"integer token ids, got a numpy array of dtype float64"),
    (np.array([True, False]), r"integer token ids, got a numpy array of dtype bool"),
    (np.array([[5, 6], [7, 8]]), r"one sequence \(batch size 1\).*shape \(2, 2\)"),
    (np.array([5, 64]), r"token ids must lie in \[0, 64\)")])
def test_bad_numpy_prompts_are_named(tiny, prompt, message):
    with pytest.raises(ValueError, match=message):
        speculative_generate(tiny, prompt, 4)
