"""The Trainer: schedule, loss falls, determinism, callbacks, exact resume, evaluation metrics, the CLI."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from mtp_lab import get_preset
from mtp_lab.cli import main as cli_main
from mtp_lab.data import save_tokenizer
from mtp_lab.loss import mtp_lambda
from mtp_lab.model import MTPModel
from mtp_lab.train import Callback, History, TrainConfig, Trainer, corpus_identity, evaluate, lr_at

VOCAB = 320


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw):
    return get_preset("tiny", vocab_size=VOCAB, **kw)


def train_cfg(**kw):
    base = dict(steps=40, batch_size=8, seq_len=32, lr=3e-3, min_lr=3e-4, warmup=5, eval_interval=20,
                eval_batches=2, precision="fp32", seed=0)
    return TrainConfig(**{**base, **kw})


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def test_training_lowers_loss_and_reports_everything(corpus, device):
    history = History()
    trainer = Trainer(tiny_cfg(), train_cfg(), corpus, callbacks=[history], device=device)
    before = trainer.evaluate()
    evals = trainer.fit()
    after = evals[-1][1]
    assert after["main"] < before["main"] - 0.5
    assert all(a < b for a, b in zip(after["depth"], before["depth"], strict=True))
    losses = [r.loss for r in history.steps]
    assert sum(losses[-5:]) < sum(losses[:5]) - 2.5
    # callbacks see every step with the schedule's lr and lambda, and every evaluation
    cfg = trainer.cfg
    assert [r.step for r in history.steps] == list(range(1, 41))
    assert all(r.lr == pytest.approx(lr_at(r.step - 1, cfg)) for r in history.steps)
    assert all(r.lam == mtp_lambda((r.step - 1) / cfg.steps) for r in history.steps)
    assert [s for s, _ in history.evals] == [20, 40]
    assert history.steps[-1].tokens == 40 * 8 * 32 and len(history.steps[0].depth) == 2


def test_constant_lambda_and_callback_order(corpus):
    events = []

    class Recorder(Callback):
        def on_train_start(self, trainer): events.append("start")
        def on_step(self, trainer, record): events.append(("step", record.lam))
        def on_eval(self, trainer, step, result): events.append(("eval", step))
        def on_train_end(self, trainer): events.append("end")

    Trainer(tiny_cfg(), train_cfg(steps=4, eval_interval=2, lam=0.5), corpus, callbacks=[Recorder()]).fit()
    assert events == ["start", ("step", 0.5), ("step", 0.5), ("eval", 2), ("step", 0.5), ("step", 0.5),
                      ("eval", 4), "end"]


def test_seeded_runs_are_identical_on_cpu(corpus):
    runs = []
    for _ in range(2):
        h = History()
        Trainer(tiny_cfg(), train_cfg(steps=6), corpus, callbacks=[h], device="cpu").fit()
        runs.append([r.loss for r in h.steps])
    assert runs[0] == runs[1]


def test_resume_gives_the_same_losses(corpus, tmp_path, device):
    full = History()
    Trainer(tiny_cfg(), train_cfg(steps=12), corpus, callbacks=[full], device=device).fit()
    first = Trainer(tiny_cfg(), train_cfg(steps=12), corpus, device=device)
    for _ in range(5):
        first.train_step()
    first.save(tmp_path)                                   # stopped after 5 of 12 steps
    resumed, rest = Trainer(tiny_cfg(), train_cfg(steps=12), corpus, callbacks=[History()], device=device), History()
    resumed.callbacks = [rest]
    resumed.resume(tmp_path)
    assert resumed.step == 5
    resumed.fit()
    assert [r.step for r in rest.steps] == list(range(6, 13))
    assert [r.loss for r in rest.steps] == pytest.approx([r.loss for r in full.steps[5:]], rel=1e-6, abs=1e-6)


def test_resume_refuses_another_config(corpus, tmp_path):
    Trainer(tiny_cfg(), train_cfg(steps=1), corpus).fit(tmp_path)
    with pytest.raises(ValueError, match="resume with the same preset"):
        Trainer(tiny_cfg(mtp_depth=1), train_cfg(steps=2), corpus).resume(tmp_path)


def test_resume_refuses_other_data(corpus, tmp_path):
    """The checkpoint records the token streams' sha256: a resume on other data (one token changed) is refused."""
    Trainer(tiny_cfg(), train_cfg(steps=1), corpus, corpus_source={"root": "r", "mix": "both"}).fit(tmp_path)
    assert json.loads((tmp_path / "trainer.json").read_text())["data"]["tokens_sha256"] == \
        corpus_identity(corpus)["tokens_sha256"]
    other = dataclasses.replace(corpus, splits={**corpus.splits, "train": corpus.splits["train"].copy()})
    other.splits["train"][100] = (other.splits["train"][100] + 1) % VOCAB
    with pytest.raises(ValueError, match=r"was trained on other data \(root r, mix both, tokens .*\) than this run's"):
        Trainer(tiny_cfg(), train_cfg(steps=2), other).resume(tmp_path)
    Trainer(tiny_cfg(), train_cfg(steps=2), corpus).resume(tmp_path)          # the same data: resumes


def test_evaluate_matches_direct_computation(device):
    torch.manual_seed(0)
    model = MTPModel(tiny_cfg(mtp_depth=2)).to(device)
    x = torch.randint(0, VOCAB, (3, 16)).to(device)
    y = torch.randint(0, VOCAB, (3, 16)).to(device)
    result = evaluate(model, [(x, y)])
    out = model(x)
    main_pred = out.logits.argmax(-1)
    assert result["main"] == pytest.approx(torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB),
                                                                             y.reshape(-1)).item(), rel=1e-5)
    for k in (1, 2):
        pred = out.mtp_logits[k - 1].argmax(-1)
        hits = sum(int(pred[b, i] == y[b, i + k]) for b in range(3) for i in range(16 - k))
        agree = sum(int(pred[b, i] == main_pred[b, i + k]) for b in range(3) for i in range(16 - k))
        assert result["acc"][k - 1] == pytest.approx(hits / (3 * (16 - k)))
        assert result["agree"][k - 1] == pytest.approx(agree / (3 * (16 - k)))


def test_bad_train_config_raises():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_trainer_checks_vocab_and_context(corpus):
    with pytest.raises(ValueError, match="vocab_size"):
        Trainer(get_preset("tiny"), train_cfg(), corpus)
    with pytest.raises(ValueError, match="max_seq_len"):
        Trainer(tiny_cfg(), train_cfg(seq_len=128), corpus)


def test_cli_train_resume_and_export(sample_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTP_LAB_CACHE", str(tmp_path / "cache"))
    out, export = tmp_path / "run", tmp_path / "export"
    common = ["train", "--preset", "tiny", "--root", str(sample_root), "--tokenizer", str(tmp_path / "tok.json"),
              "--vocab-size", "300", "--out", str(out), "--batch-size", "4", "--seq-len", "32",
              "--eval-batches", "1", "--threads", "1"]
    assert cli_main(common + ["--steps", "3", "--lambda", "0.2", "--mtp-depth", "1", "--fp8", "mtp"]) == 0
    assert json.loads((out / "trainer.json").read_text())["step"] == 3
    assert json.loads((out / "config.json").read_text())["model"]["fp8"] == "mtp"
    assert cli_main(common + ["--resume", "--steps", "5", "--export", str(export)]) == 0
    state = json.loads((out / "trainer.json").read_text())
    assert state["step"] == 5 and state["train_config"]["lam"] == 0.2
    metrics = json.loads((export / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "greedy_acceptance", "sampled_acceptance"}
    assert len(metrics["test"]["acc"]) == len(metrics["sampled_acceptance"]["depth"]) == 1
    assert 0 <= metrics["greedy_acceptance"]["acceptance_rate"] <= 1
    assert json.loads((export / "config.json").read_text())["weights_dtype"] == "bfloat16"
    assert cli_main(common + ["--resume", "--mtp-depth", "2"]) == 2          # conflicting override
    assert "drop the conflicting overrides" in capsys.readouterr().err


# A child process trains with a checkpoint every step and is killed (os._exit, like SIGKILL: no cleanup) right
# after its n-th rename. Each save renames 10 times: 5 files written into .staging (trainer.json, the commit,
# 5th), then 5 moved into the folder; so n = 10 + k stops inside the save of step 2 at its k-th rename.
KILLED_CHILD = """
import json, os, sys
import torch
from mtp_lab import get_preset
from mtp_lab.data import build_corpus
from mtp_lab.train import TrainConfig, Trainer
root, tokenizer, out, kill_at, cfg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
torch.set_num_threads(1)
real_replace, renames = os.replace, [0]
def replace(src, dst):
    real_replace(src, dst)
    renames[0] += 1
    if renames[0] == kill_at:
        os._exit(9)
os.replace = replace
corpus = build_corpus(tokenizer, root=root, use_cache=False)
Trainer(get_preset("tiny", vocab_size=corpus.vocab_size), TrainConfig(**cfg), corpus).fit(out)
"""


@pytest.mark.slow                                    # 2.5 s per case: a subprocess is killed mid-save
@pytest.mark.parametrize("k", [1, 5, 7, 10])          # staging half written, committed, half moved, all moved
def test_killed_save_resumes_bit_identical(corpus, sample_root, tmp_path, k):
    cfg = dict(steps=4, batch_size=4, seq_len=32, lr=3e-3, min_lr=3e-4, warmup=2, eval_interval=4, eval_batches=1,
               save_interval=1, precision="fp32", seed=0)
    reference = Trainer(tiny_cfg(), TrainConfig(**cfg), corpus)
    reference.fit()
    save_tokenizer(corpus.tokenizer, tmp_path / "tok.json")
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(sample_root), str(tmp_path / "tok.json"),
                            str(out), str(10 + k), json.dumps(cfg)], capture_output=True, text=True, timeout=300)
    assert child.returncode == 9, child.stderr
    resumed = Trainer(tiny_cfg(), TrainConfig(**cfg), corpus)
    resumed.resume(out)
    assert resumed.step == (1 if k < 5 else 2)          # the old checkpoint until the commit, then the new one
    assert not (out / ".staging").exists()
    resumed.fit()
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_nonfinite_loss_stops_before_the_update_and_saves_nothing(corpus, tmp_path):
    Trainer(tiny_cfg(), train_cfg(steps=2, save_interval=1), corpus).fit(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    trainer = Trainer(tiny_cfg(), train_cfg(steps=4, save_interval=1), corpus)
    trainer.resume(tmp_path)
    with torch.no_grad():
        trainer.model.head.weight[0, 0] = float("nan")          # NaN weights (or moments): the loss is NaN
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"training step 3: loss nan.*not finite; stopped before"):
        trainer.fit(tmp_path)
    assert trainer.step == 2 and trainer.saved_step == 2
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items() if k != "head.weight")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files        # the checkpoint is untouched


@pytest.mark.parametrize("field, value, message", [
    ("lam", float("nan"), "lambda must be a finite"), ("lam", float("inf"), "lambda"),
    ("lr", float("nan"), "lr must be a finite"), ("lr", float("inf"), "lr must"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("min_lr", float("nan"), "min_lr"), ("weight_decay", float("inf"), "weight_decay"),
    ("grad_clip", float("nan"), "grad_clip"), ("grad_clip", -1.0, "grad_clip"), ("warmup", -1, "warmup"),
    ("betas", (0.9, 1.0), "betas"), ("seed", -1, "seed"), ("seed", 2 ** 64, "seed")])
def test_train_config_rejects_nonfinite_and_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
