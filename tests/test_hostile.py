"""A hostile user's inputs (issue 21): every case ends in one line that names the problem and the fix, with nothing
changed on disk, or (resume) in a run bit-identical to an uninterrupted one.

Six causes: outputs that could replace what the user needs; a resume that switched corpus; state trusted where it
can be checked; distillation settings not validated; sizes without bounds; a corpus read that could hang. Plus the
lock on --out, interrupted first saves, full disks and the token cache, tampered JSON and the bench flags.
The tests drive the command line and the public functions only, so that they also run against older code."""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import threading

import pytest
import torch
from cli_errors import one_line_error, train_tiny_run
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import mtp_lab.bench
import mtp_lab.checkpoint
import mtp_lab.data
import mtp_lab.distill
import mtp_lab.fp8_bench
import mtp_lab.train
from mtp_lab import MTPModel, get_preset
from mtp_lab.checkpoint import CheckpointError, load_pretrained, save_model
from mtp_lab.cli import main as cli_main
from mtp_lab.decoding import generate, speculative_generate
from mtp_lab.distill import DistillConfig
from mtp_lab.fp8 import quantize
from mtp_lab.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(sample_root, tmp_path_factory):
    """(train arguments without --out, a finished 2-step tiny run with a checkpoint at each step, a model folder)."""
    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:
        args = train_tiny_run(mp, tmp, sample_root)
        model, tok = load_pretrained(tmp / "run")
        save_model(tmp / "model", model, tok)
        yield args, tmp / "run", tmp / "model"


def snapshot(*folders) -> dict:
    """{path: bytes (files) or the file type (anything else)} of everything under `folders`."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = p.read_bytes() if p.is_file() else ("dir" if p.is_dir() else os.stat(p).st_mode)
    return out


def rehash(folder, name) -> None:
    """Record `name`'s current sha256 in trainer.json, as if it had been saved so."""
    meta = json.loads((folder / "trainer.json").read_text())
    meta["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "trainer.json").write_text(json.dumps(meta))


def edit_trainer(folder, change) -> None:
    meta = json.loads((folder / "trainer.json").read_text())
    change(meta)
    (folder / "trainer.json").write_text(json.dumps(meta))


# ------------------------------------------------------------ 1. outputs never replace what the user needs

OUTPUT_CASES = {  # name -> (argv with {run} {model} {tmp} {fifo} {shipped}, what the one line says)
    "export replaces a model": (["train", "--out", "{tmp}/new", "--export", "{model}"],
                                r"--export .*model already holds a checkpoint; replace it with --overwrite"),
    "export into the shipped model": (["train", "--out", "{tmp}/new", "--export", "{shipped}", "--overwrite"],
                                      r"--export .* is part of the shipped course assets .* which no command replaces"),
    "out into the shipped assets": (["train", "--out", "{shipped}/../x", "--overwrite"],
                                    r"--out .* is part of the shipped course assets"),
    "distill over a training run": (["distill", "--checkpoint", "{model}", "--out", "{run}", "--overwrite"],
                                    r"--out .*run is a training run's folder: a model written there would replace"),
    "distill over a model": (["distill", "--checkpoint", "{model}", "--out", "{tmp}/other"],
                             r"--out .*other already holds a checkpoint; replace it with --overwrite"),
    "distill into its corpus": (["distill", "--checkpoint", "{model}", "--out", "{tmp}/corpus", "--root",
                                 "{tmp}/corpus"], r"would overwrite --root .*corpus, which this command reads"),
    "bench json over the weights": (["bench", "--checkpoint", "{run}", "--json", "{run}/model.safetensors"],
                                    r"--json .*model\.safetensors would overwrite --checkpoint .*run, which this "
                                    r"command reads"),
    "bench json into a model": (["bench", "--random", "tiny", "--json", "{model}/results.json"],
                                r"--json .* lies in the model folder .*model"),
    "fp8 json over trainer.json": (["fp8-bench", "--parts", "quantization", "--json", "{run}/trainer.json"],
                                   r"--json .*trainer\.json lies in the model folder"),
    "fp8 json over its checkpoint": (["fp8-bench", "--parts", "acceptance", "--checkpoint", "{model}", "--json",
                                      "{model}/config.json"], r"would overwrite --checkpoint .*model"),
    "bench json a FIFO": (["bench", "--random", "tiny", "--json", "{fifo}"],
                          r"--json .*fifo is not a regular file \(a device, FIFO or socket\), which is never replaced"),
    "tokenizer a FIFO": (["train", "--out", "{tmp}/new", "--tokenizer", "{fifo}"],
                         r"--tokenizer .*fifo is not a regular file"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_no_output_replaces_a_model_an_input_or_a_special_file(run, tmp_path, capsys, no_long_work, case):
    args, folder, model = run
    shutil.copytree(model, tmp_path / "other")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.py").write_text("x = 1\n")
    os.mkfifo(tmp_path / "fifo")
    shipped = mtp_lab.checkpoint.PRETRAINED_DIR
    argv, message = OUTPUT_CASES[case]
    argv = [a.format(run=folder, model=model, tmp=tmp_path, fifo=tmp_path / "fifo", shipped=shipped) for a in argv]
    if argv[0] == "train":
        argv = args + argv[1:]
    before = snapshot(folder, model, tmp_path, shipped)
    err = one_line_error(capsys, argv)
    assert re.search(message, err), err
    assert snapshot(folder, model, tmp_path, shipped) == before


def test_a_missing_shipped_tokenizer_is_never_trained_into_the_assets(run, tmp_path, capsys, monkeypatch,
                                                                      no_long_work):
    args, _, _ = run
    shipped = tmp_path / "assets" / "tokenizer.json"
    monkeypatch.setattr(mtp_lab.data, "DEFAULT_TOKENIZER", shipped)
    argv = [a for a in args if a != args[args.index("--tokenizer") + 1] and a != "--tokenizer"]
    err = one_line_error(capsys, argv + ["--out", str(tmp_path / "new")])
    assert re.search(r"the shipped tokenizer .*tokenizer\.json is missing; reinstall mtp-lab, or pass --tokenizer",
                     err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a device node")
def test_a_device_node_is_never_replaced(tmp_path, capsys, no_long_work):
    node = tmp_path / "null"
    os.mknod(node, 0o666 | 0o020000, os.makedev(1, 3))       # a copy of /dev/null
    err = one_line_error(capsys, ["bench", "--random", "tiny", "--json", str(node)])
    assert "not a regular file" in err and node.is_char_device()


# ------------------------------------------------------------ 2. --resume reads the corpus it recorded

def interrupted_and_resumed(args, out, monkeypatch, at: int, resume_args: list[str]) -> int:
    """Train 4 steps (a checkpoint every 2) interrupted (Ctrl-C) at step `at`, then resume with `resume_args`."""
    real_step = mtp_lab.train.Trainer.train_step

    def interrupted(trainer):
        if trainer.step == at:
            raise KeyboardInterrupt
        return real_step(trainer)

    with monkeypatch.context() as mp:
        mp.setattr(mtp_lab.train.Trainer, "train_step", interrupted)
        assert cli_main(args + ["--out", str(out), "--steps", "4", "--save-interval", "2", "--seed", "3"]) == 130
    return cli_main(["train", "--out", str(out), "--resume", "--threads", "1"] + resume_args)


@pytest.mark.slow            # 2.5 s: three short runs
def test_the_printed_resume_command_continues_on_the_recorded_corpus(run, tmp_path, capsys, monkeypatch,
                                                                     sample_root):
    args, _, _ = run
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other_root"                       # what the run would read without its --root
    shutil.copytree(sample_root, other)
    (other / "textwrap.py").unlink()
    monkeypatch.setattr(mtp_lab.data, "snapshot_root", lambda: other)
    monkeypatch.setattr(mtp_lab.data, "stdlib_root", lambda: other)
    assert cli_main(args + ["--out", str(tmp_path / "whole"), "--steps", "4", "--save-interval", "2", "--seed",
                            "3"]) == 0
    assert interrupted_and_resumed(args, tmp_path / "resumed", monkeypatch, 3, []) == 0
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    data = json.loads((tmp_path / "resumed" / "trainer.json").read_text())["data"]
    assert data["root"] == str(sample_root.resolve()) and data["mix"] == "both"


def test_resume_on_another_corpus_is_refused_naming_the_difference(run, tmp_path, capsys, monkeypatch,
                                                                   sample_root):
    args, folder, _ = run
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    before = snapshot(out)
    (tmp_path / "elsewhere").mkdir()
    err = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--root", str(tmp_path / "elsewhere"),
                                  "--steps", "3"])
    assert re.search(r"--root .*: the run in .* was trained on --root .*stdlib; --resume reads the recorded "
                     r"corpus: drop --root", err), err
    err = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--mix", "code", "--steps", "3"])
    assert "was trained with --mix both" in err, err
    changed = tmp_path / "changed"                        # the recorded root, its files edited since
    shutil.copytree(sample_root, changed)
    edit_trainer(out, lambda m: m["data"].update(root=str(changed)))
    (changed / "heapq.py").write_text((changed / "heapq.py").read_text() + "\n# edited\n")
    err = one_line_error(capsys, ["train", "--out", str(out), "--resume", "--steps", "3", "--threads", "1"])
    assert re.search(r"was trained on other data \(root .*changed, mix both, tokens .*\) than this run's", err), err
    assert json.loads((out / "trainer.json").read_text())["step"] == 2
    assert {k: v for k, v in snapshot(out).items() if not k.endswith("trainer.json")} == \
           {k: v for k, v in before.items() if not k.endswith("trainer.json")}


def test_resume_names_the_flags_it_ignores(run, tmp_path, capsys):
    args, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    assert cli_main(args + ["--out", str(out), "--resume", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"note: --resume continues the run saved in .* with its own preset, tokenizer and vocabulary; "
                     r"ignored: --preset tiny, --tokenizer .*tok\.json, --vocab-size 300, --steps 2 \(the run is "
                     r"at step 2 already: nothing to train\)", err), err


# ------------------------------------------------------------ 3. state checked where it can be

def damage_step(value):
    return lambda f: edit_trainer(f, lambda m: m.update(step=value))


def empty_optimizer(folder) -> None:
    (folder / "optimizer.safetensors").write_bytes(st_save({}))
    rehash(folder, "optimizer.safetensors")


def optimizer_step_counts(value):
    def change(folder):
        tensors = st_load((folder / "optimizer.safetensors").read_bytes())
        for key in tensors:
            if key.endswith(".step"):
                tensors[key] = torch.tensor(float(value))
        (folder / "optimizer.safetensors").write_bytes(st_save(tensors))
        rehash(folder, "optimizer.safetensors")
    return change


def one_moment_missing(folder) -> None:
    tensors = st_load((folder / "optimizer.safetensors").read_bytes())
    del tensors["5.exp_avg_sq"]
    (folder / "optimizer.safetensors").write_bytes(st_save(tensors))
    rehash(folder, "optimizer.safetensors")


def config_sizes(**sizes):
    def change(folder):
        meta = json.loads((folder / "config.json").read_text())
        meta["model"].update(sizes)
        (folder / "config.json").write_text(json.dumps(meta))
        rehash(folder, "config.json")
    return change


STATE_CASES = {  # name -> (damage, what the one line says)
    "step 2 -> 1": (damage_step(1), r"AdamW counted \[2\.0\] steps for parameter 0, trainer\.json says step 1"),
    "step 2 -> 3": (damage_step(3), r"trainer\.json says step 3"),
    "step true": (damage_step(True), r"no 'step' \(an integer >= 0\), got 'True'"),
    "step 10**30": (damage_step(10 ** 30), r"no 'step' \(an integer >= 0\), got '1000000000000000000000000000000'"),
    "step 2.0": (damage_step(2.0), r"no 'step' \(an integer >= 0\), got '2\.0'"),
    "empty optimizer, rehashed": (empty_optimizer, r"parameter 0 has optimizer state \[\], not step, exp_avg"),
    "a moment missing, rehashed": (one_moment_missing, r"parameter 5 has optimizer state \['exp_avg', 'step'\]"),
    "AdamW steps edited, rehashed": (optimizer_step_counts(7), r"AdamW counted \[7\.0\] steps"),
    "no sha256 map": (lambda f: edit_trainer(f, lambda m: m.pop("sha256")), r"trainer\.json: no sha256 of each of"),
    "sha256 map emptied": (lambda f: edit_trainer(f, lambda m: m.update(sha256={})), r"no sha256 of each of"),
    "sha256 not a map": (lambda f: edit_trainer(f, lambda m: m.update(sha256=[1])), r"no sha256 of each of"),
    "n_layers 10**9, rehashed": (config_sizes(n_layers=10 ** 9), r"config\.json: invalid model config: "
                                                                 r"ModelConfig has .* parameters, more than"),
    "mtp_depth 100, rehashed": (config_sizes(mtp_depth=100), r"ModelConfig\.mtp_depth must be an integer >= 0 and "
                                                             r"<= 32"),
    "n_layers true, rehashed": (config_sizes(n_layers=True), r"ModelConfig\.n_layers must be a positive integer"),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_tampered_state_is_refused_at_resume(run, tmp_path, capsys, case):
    args, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    damage, message = STATE_CASES[case]
    damage(out)
    before = snapshot(out)
    err = one_line_error(capsys, args + ["--out", str(out), "--resume", "--steps", "3"])
    assert re.search(message, err), err
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["load_pretrained", "bench", "distill", "fp8-bench"])
def test_every_load_of_a_run_checks_its_hashes(run, tmp_path, capsys, command):
    _, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    tensors = st_load((out / "model.safetensors").read_bytes())
    tensors["norm.weight"] = tensors["norm.weight"] * 2                 # finite, right shape: only the hash tells
    (out / "model.safetensors").write_bytes(st_save(tensors))
    message = r"model\.safetensors: does not match the sha256 recorded in trainer\.json"
    if command == "load_pretrained":
        with pytest.raises(CheckpointError, match=message):
            load_pretrained(out)
        return
    argv = {"bench": ["bench", "--checkpoint", str(out), "--json", str(tmp_path / "b.json"), "--k", "1"],
            "distill": ["distill", "--checkpoint", str(out), "--out", str(tmp_path / "d")],
            "fp8-bench": ["fp8-bench", "--parts", "acceptance", "--checkpoint", str(out)]}[command]
    err = one_line_error(capsys, argv)
    assert re.search(message, err), err
    assert not (tmp_path / "d").exists() and not (tmp_path / "b.json").exists()


# ------------------------------------------------------------ tampered JSON: one line, never a traceback

JSON_CASES = {  # file -> replacement text (or a change to the parsed object)
    "trainer nested 100000 deep": ("trainer.json", "[" * 100000 + "]" * 100000),
    "trainer elapsed a string": ("trainer.json", lambda m: m.update(elapsed="x")),
    "trainer elapsed a list": ("trainer.json", lambda m: m.update(elapsed=[1])),
    "trainer elapsed nan": ("trainer.json", lambda m: m.update(elapsed=float("nan"))),
    "train_config steps true": ("trainer.json", lambda m: m["train_config"].update(steps=True)),
    "train_config lr a string": ("trainer.json", lambda m: m["train_config"].update(lr="1e-3")),
    "train_config seed 1.5": ("trainer.json", lambda m: m["train_config"].update(seed=1.5)),
    "train_config lr 1e39": ("trainer.json", lambda m: m["train_config"].update(lr=1e39)),
    "train_config betas a string": ("trainer.json", lambda m: m["train_config"].update(betas="ab")),
    "train_config betas nested": ("trainer.json", lambda m: m["train_config"].update(betas=[[0.9], 0.95])),
    "param_groups params a string": ("trainer.json", lambda m: m["param_groups"][0].update(params="x")),
    "param_groups lr a list": ("trainer.json", lambda m: m["param_groups"][0].update(lr=[1])),
    "data a number": ("trainer.json", lambda m: m.update(data=5)),
    "data without its digest": ("trainer.json", lambda m: m.update(data={"root": None})),
    "config nested 100000 deep": ("config.json", "{\"model\": " + "[" * 100000 + "]" * 100000 + "}"),
    "config n_layers a string": ("config.json", lambda m: m["model"].update(n_layers="2")),
    "config vocab_size a float": ("config.json", lambda m: m["model"].update(vocab_size=300.0)),
    "config fp8 a list": ("config.json", lambda m: m["model"].update(fp8=["all"])),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_tampered_json_is_one_line(run, tmp_path, capsys, case):
    args, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    name, change = JSON_CASES[case]
    if callable(change):
        meta = json.loads((out / name).read_text())
        change(meta)
        (out / name).write_text(json.dumps(meta))
    else:
        (out / name).write_text(change)
    if name != "trainer.json":
        rehash(out, name)
    before = snapshot(out)
    one_line_error(capsys, args + ["--out", str(out), "--resume", "--steps", "3"])
    assert snapshot(out) == before


# ------------------------------------------------------------ 4. distillation validated like training

@pytest.mark.parametrize("field, value, message", [
    ("warmup", -3, r"DistillConfig\.warmup must be an integer >= 0"),
    ("grad_clip", -1.0, r"DistillConfig\.grad_clip must be a finite number > 0"),
    ("grad_clip", 0.0, r"DistillConfig\.grad_clip must be a finite number > 0"),
    ("grad_clip", float("nan"), r"DistillConfig\.grad_clip must be a finite number"),
    ("lr", float("inf"), r"DistillConfig\.lr must be a finite number > 0"),
    ("lr", 1e39, r"DistillConfig\.lr must be a finite number > 0 and <= 10 "),
    ("lr", 0.0, r"DistillConfig\.lr must be a finite number > 0"),
    ("generated_fraction", float("nan"), r"DistillConfig\.generated_fraction"),
    ("steps", True, r"DistillConfig\.steps must be a positive integer"),
    ("seed", 1.5, r"DistillConfig\.seed must be an integer in \[0, 2\^64\)"),
    ("seed", 2 ** 64, r"DistillConfig\.seed must be an integer in \[0, 2\^64\)")])
def test_distill_config_rejects_bad_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**{field: value})


@pytest.fixture(scope="module")
def distill_args(run, sample_root):
    _, folder, model = run
    return ["distill", "--checkpoint", str(model), "--root", str(sample_root), "--steps", "2", "--batch-size", "4",
            "--seq-len", "32", "--prompt-len", "8", "--generated", "4", "--threads", "1"]


def test_distill_without_warmup_runs(distill_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mtp_lab.metrics, "write_metrics", lambda *a, **k: {})      # the distillation is the test
    assert cli_main(distill_args + ["--warmup", "0", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "model.safetensors").is_file()


def test_distill_writes_only_float_weights(run, tmp_path, capsys, monkeypatch):
    _, _, model = run
    source = tmp_path / "model"
    shutil.copytree(model, source)
    meta = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**meta, "weights_dtype": "int8"}))
    monkeypatch.setattr(mtp_lab.data, "build_corpus", lambda *a, **k: pytest.fail("the corpus was loaded"))
    err = one_line_error(capsys, ["distill", "--checkpoint", str(source), "--out", str(tmp_path / "d")])
    assert "weights_dtype 'int8' is not float32, bfloat16 or float16" in err, err
    assert not (tmp_path / "d").exists()


def test_a_nonfinite_distillation_writes_nothing(distill_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    real = mtp_lab.distill.distill_losses
    monkeypatch.setattr(mtp_lab.distill, "distill_losses",
                        lambda m, x, loss: [d * float("nan") for d in real(m, x, loss)])
    assert cli_main(distill_args + ["--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]                       # after the progress bar
    assert re.search(r"distillation step 1: loss nan.*not finite; stopped before the update, nothing written", err)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------ 5. sizes and numbers bounded before allocating

def test_model_sizes_are_bounded_before_anything_is_built():
    with pytest.raises(ValueError, match=r"mtp_depth must be an integer >= 0 and <= 32"):
        get_preset("tiny", mtp_depth=40)
    with pytest.raises(ValueError, match=r"ModelConfig has 4,.* parameters, more than the 1,073,741,824"):
        get_preset("course", n_layers=20000)
    with pytest.raises(ValueError, match=r"max_seq_len must be a positive integer and <= 65536"):
        get_preset("tiny", max_seq_len=2 ** 20)
    for name in ("tiny", "course", "shallow"):     # the count from the shapes is the count of the built model
        cfg = get_preset(name)
        assert cfg.parameters == MTPModel(cfg).parameter_counts()["total"]


@pytest.mark.parametrize("argv, message", [
    (["info", "--preset", "tiny", "--mtp-depth", "40"], r"mtp_depth must be an integer >= 0 and <= 32"),
    (["info", "--mtp-depth", "100000"], r"mtp_depth must be an integer >= 0 and <= 32"),
    (["bench", "--random", "tiny", "--threads", str(4 * (os.cpu_count() or 1) + 1)],
     r"--threads must be a positive integer and <= \d+ \(4x the \d+ CPUs\)"),
    (["fp8-bench", "--parts", "quantization", "--threads", "100000"], r"--threads must be .* <= \d+"),
    (["bench", "--random", "tiny", "--seed", str(2 ** 64)], r"--seed must be an integer in \[0, 2\^64\)"),
    (["fp8-bench", "--parts", "quantization", "--seed", "-1"], r"--seed must be an integer in \[0, 2\^64\)"),
    (["bench", "--random", "tiny", "--temperature", "nan"], r"temperature must be a finite number >= 0"),
    (["train", "--out", "{tmp}/new", "--lr", "1e39"], r"TrainConfig\.lr must be a finite number > 0 and <= 10 "),
    (["train", "--out", "{tmp}/new", "--steps", str(2 ** 41)], r"TrainConfig\.steps must be a positive integer"),
    (["train", "--out", "{tmp}/new", "--distill-steps", "-1", "--export", "{tmp}/e"], r"--distill-steps must be"),
    (["train", "--out", "{tmp}/new", "--vocab-size", "100"], r"--vocab-size must be an integer >= 258"),
    (["bench", "--random", "tiny", "--k", "1", "1", "1"], r"--k 1 1 1 repeats a draft length; give each once"),
    (["bench", "--random", "tiny", "--checkpoint", "{tmp}"], r"--random PRESET uses random weights, --checkpoint a "
                                                             r"saved model: give one of them"),
    (["bench", "--random", "tiny", "--prompts", str(10 ** 12)], r"--prompts must be a positive integer and <= 65536"),
    (["bench", "--random", "tiny", "--prompt-len", str(10 ** 9)], r"--prompt-len must be .* <= 65536"),
    (["bench", "--random", "tiny", "--seed", "1.5"], r"argument --seed: invalid int value: '1\.5' \(see mtp-lab "
                                                     r"bench --help\)"),
], ids=["info depth 40", "info depth 100000", "bench threads", "fp8 threads", "bench seed 2^64", "fp8 seed -1",
        "bench temperature nan", "train lr 1e39", "train steps 2^41", "distill-steps -1", "vocab-size 100",
        "bench k 1 1 1", "bench random and checkpoint", "bench prompts 10^12", "bench prompt-len 10^9",
        "argparse error in one line"])
def test_out_of_range_flags_are_one_line(tmp_path, capsys, no_long_work, argv, message):
    try:
        err = one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv])
    except SystemExit as e:                              # argparse
        err = capsys.readouterr().err.strip()
        assert e.code == 2 and "\n" not in err, err
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_mtp_pre_below_its_depth_is_refused_before_the_benchmark(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mtp_lab.bench, "repeated_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    err = one_line_error(capsys, ["bench", "--random", "tiny", "--drafters", "mtp-pre", "--k", "1", "2", "--profile",
                                  "--prompts", "1", "--prompt-len", "8", "--new-tokens", "8",
                                  "--json", str(tmp_path / "b.json")])
    assert "--drafters mtp-pre runs only for k > D = 2" in err, err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("block_size", [2 ** 13, 2 ** 31])
def test_fp8_block_size_is_bounded(block_size):
    with pytest.raises(ValueError, match=r"block_size must be a positive integer and <= 4096"):
        quantize(torch.randn(2, 8), granularity="tile", block_size=block_size)


@pytest.mark.parametrize("seed", [1.5, 2 ** 64, True])
def test_train_seed_must_be_an_int_in_range(seed):
    with pytest.raises(ValueError, match=r"TrainConfig\.seed must be an integer in \[0, 2\^64\)"):
        TrainConfig(seed=seed)


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_tiny_temperature_samples_the_argmax(temperature):
    torch.manual_seed(0)
    model = MTPModel(get_preset("tiny")).eval()
    greedy = generate(model, [5, 6, 7], 12).tokens
    assert generate(model, [5, 6, 7], 12, temperature=temperature, seed=1).tokens == greedy
    assert speculative_generate(model, [5, 6, 7], 12, num_draft=2, temperature=temperature, seed=1).tokens == greedy


# ------------------------------------------------------------ 6. the corpus reads regular files only

def test_a_fifo_in_the_corpus_is_skipped_and_never_read(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    os.mkfifo(root / "fifo.py")
    (root / "folder.py").mkdir()
    os.symlink("/dev/zero", root / "zero.py")
    assert mtp_lab.data.list_files(root) == ["a.py"]
    def write():
        with contextlib.suppress(OSError):           # a reader that closes at once: a broken pipe
            (root / "fifo.py").write_text("y = 2\n")
    writer = threading.Thread(target=write, daemon=True)
    writer.start()                        # old code would read this text; new code must refuse without opening
    try:
        with pytest.raises(ValueError, match=r"fifo\.py is not a regular file; the corpus reads regular"):
            mtp_lab.data.documents(["fifo.py"], root)
    finally:
        reader = os.open(root / "fifo.py", os.O_RDONLY | os.O_NONBLOCK)         # release the writer
        writer.join(5)
        os.close(reader)


# ------------------------------------------------------------ the lock on --out, interrupted first saves

def test_a_second_run_on_a_locked_out_is_refused(run, tmp_path, capsys, no_long_work):
    args, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    before = snapshot(out)
    with mtp_lab.checkpoint.lock(out):                   # another process writing: its flock is held
        for extra in (["--resume"], ["--overwrite"]):
            err = one_line_error(capsys, args + ["--out", str(out), "--steps", "3"] + extra)
            assert re.search(rf"--out .*run is being written by another process \(pid {os.getpid()}\); wait for "
                             r"it to finish or stop it, or give another --out", err), err
    assert snapshot(out) == before


def test_the_lock_file_is_never_followed_through_a_symlink(run, tmp_path, capsys):
    args, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    (tmp_path / "victim").write_text("keep me\n")
    os.symlink(tmp_path / "victim", out / ".lock")         # the lock is truncated when taken: never the victim
    err = one_line_error(capsys, args + ["--out", str(out), "--resume", "--steps", "3"])
    assert re.search(r"cannot use its lock file .*\.lock \(Too many levels of symbolic links\); remove it", err)
    assert (tmp_path / "victim").read_text() == "keep me\n"


def test_a_stale_lock_file_is_taken_over(run, tmp_path, capsys):
    args, folder, _ = run
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    (out / ".lock").write_text("999999999\n")            # left by a kill -9: the file stays, the flock does not
    assert cli_main(args + ["--out", str(out), "--resume", "--steps", "3"]) == 0
    assert json.loads((out / "trainer.json").read_text())["step"] == 3 and not (out / ".lock").exists()


@pytest.mark.parametrize("where", ["before the commit", "after the commit"])
def test_an_interrupted_first_save_says_what_the_next_command_finds(run, tmp_path, capsys, monkeypatch, where):
    args, _, _ = run
    out = tmp_path / "run"
    real = mtp_lab.checkpoint.save_train_state if where == "before the commit" else mtp_lab.checkpoint.recover
    calls = []

    def interrupted(directory, *rest):
        calls.append(directory)
        if where == "before the commit" or len(calls) == 2:   # recover: 1st call clears, 2nd moves the commit in
            raise KeyboardInterrupt
        return real(directory, *rest)

    with monkeypatch.context() as mp:
        mp.setattr(mtp_lab.checkpoint, real.__name__, interrupted)
        assert cli_main(args + ["--out", str(out), "--steps", "4", "--save-interval", "2"]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if where == "before the commit":
        assert line.endswith("no checkpoint of this run was written (the first comes at step 2): start it again")
        assert cli_main(args + ["--out", str(out), "--steps", "4", "--save-interval", "2"]) == 0      # the same
    else:
        assert line.endswith(f"the first checkpoint, step 2, is in {out}: continue with `mtp-lab train --out {out} "
                             f"--resume`"), line
        assert cli_main(["train", "--out", str(out), "--resume", "--threads", "1"]) == 0
    assert json.loads((out / "trainer.json").read_text())["step"] == 4


# ------------------------------------------------------------ full disks and the token cache name their file

def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.safetensors'"):
        save_model(tmp_path / "m", MTPModel(get_preset("tiny")))
    assert [p.name for p in (tmp_path / "m").iterdir()] == []


def test_a_damaged_cache_is_encoded_again_and_an_unwritable_one_is_named(sample_root, tmp_path, monkeypatch):
    from stdlib_sample import sample_tokenizer
    tok = sample_tokenizer(sample_root, 300)
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    first = mtp_lab.data.build_corpus(tok, root=sample_root)
    for path in (tmp_path / "cache").glob("*-train.npy"):
        path.write_bytes(b"not numpy")
    again = mtp_lab.data.build_corpus(tok, root=sample_root)
    assert all((first.splits[s] == again.splits[s]).all() for s in first.splits)
    monkeypatch.setenv("MTP_LAB_CACHE", "/sys/mtp_lab_cache")
    with pytest.raises(OSError, match=r"cannot write the token cache /sys/mtp_lab_cache/.*\.npy .*; set "
                                      r"MTP_LAB_CACHE to a writable folder"):
        mtp_lab.data.build_corpus(tok, root=sample_root)
