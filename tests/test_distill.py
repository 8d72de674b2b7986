"""Drafter self-distillation: batched greedy continuations, the loss, a frozen main model, the CLIs."""

import json

import pytest
import torch
import torch.nn.functional as F

from mtp_lab import CheckpointError, generate, get_preset, load_model, load_pretrained
from mtp_lab.cli import main as cli_main
from mtp_lab.data import eval_batches
from mtp_lab.distill import DistillConfig, continuations, distill, distill_losses, expected_acceptance
from mtp_lab.model import MTPModel
from mtp_lab.train import TrainConfig, Trainer, evaluate

VOCAB = 320

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(corpus):
    """A tiny model after 60 training steps: its main model has something to teach."""
    cfg = TrainConfig(steps=60, batch_size=8, seq_len=32, lr=3e-3, min_lr=3e-4, warmup=5, eval_interval=60,
                      eval_batches=1, precision="fp32", seed=0)
    trainer = Trainer(get_preset("tiny", vocab_size=VOCAB), cfg, corpus)
    trainer.fit()
    return trainer.model.state_dict()


def test_continuations_equal_generate():
    torch.manual_seed(0)
    model = MTPModel(get_preset("tiny")).eval()
    prompts = torch.randint(0, 64, (5, 7))
    out = continuations(model, prompts, total_len=30, batch=2)        # batches of 2, 2 and 1
    assert out.shape == (5, 30) and torch.equal(out[:, :7], prompts)
    for row, prompt in zip(out, prompts, strict=True):
        assert row[7:].tolist() == generate(model, prompt.tolist(), 23).tokens
    with pytest.raises(ValueError, match="max_seq_len"):
        continuations(model, prompts, total_len=65)


def test_distill_loss_is_cross_entropy_from_main_to_each_depth():
    torch.manual_seed(1)
    model = MTPModel(get_preset("tiny")).eval()
    x = torch.randint(0, 64, (3, 20))
    losses = distill_losses(model, x)
    out = model(x)                                                            # independent full forward
    assert len(losses) == 2
    for k, loss in enumerate(losses, start=1):
        p = out.logits[:, k:].softmax(-1)                                     # main at i+k predicts t_{i+k+1}
        q = out.mtp_logits[k - 1].log_softmax(-1)                             # depth k at i predicts the same
        # KL(p || q) = CE(p, q) - H(p): the loss minus the teacher's entropy
        kl = F.kl_div(q, p, reduction="none").sum(-1).mean()
        entropy = -(p * p.log()).sum(-1).mean()
        assert loss.item() == pytest.approx((kl + entropy).item(), rel=1e-5)


def test_tv_loss_and_expected_acceptance_from_the_full_forward():
    torch.manual_seed(2)
    model = MTPModel(get_preset("tiny")).eval()
    x = torch.randint(0, 64, (3, 20))
    losses, accept = distill_losses(model, x, loss="tv"), expected_acceptance(model, x)
    out = model(x)                                                            # independent full forward
    assert len(losses) == len(accept) == 2
    for k, (loss, a) in enumerate(zip(losses, accept, strict=True), start=1):
        p, q = out.logits[:, k:].softmax(-1), out.mtp_logits[k - 1].softmax(-1)
        tv = 0.5 * (p - q).abs().sum(-1)                                      # (B, T-k): total variation
        assert loss.item() == pytest.approx(tv.mean().item(), rel=1e-5)
        assert a == pytest.approx(1 - tv.mean().item(), rel=1e-5)             # sum min(p, q) = 1 - TV(p, q)
    loss = distill_losses(model, x, loss="tv")[0]
    loss.backward()
    assert model.mtp[0].eh_proj.weight.grad.abs().sum() > 0                   # it trains the module


def test_sampled_continuations_draw_from_the_main_model():
    """At temperature t each new token is drawn from softmax(logits / t): the first one's counts over 6000 rows of one
    prompt against the main model's distribution (chi-square, false alarm 1e-6); seeded, the draw repeats."""
    from test_speculative_sampling import chi2, chi2_quantile
    torch.manual_seed(3)
    model = MTPModel(get_preset("tiny")).eval()
    with torch.no_grad():
        model.head.weight.mul_(40)                                            # a peaked p: temperature shows
    prompt = torch.randint(0, 64, (1, 5))
    for t in (1.0, 0.7):
        out = continuations(model, prompt.repeat(6000, 1), total_len=7, temperature=t,
                            generator=torch.Generator().manual_seed(0))
        assert out.shape == (6000, 7) and torch.equal(out[:, :5], prompt.repeat(6000, 1))
        with torch.no_grad():
            P = (model.forward_main(prompt)[0][0, -1] / t).softmax(-1)          # (V,)
        counts = torch.bincount(out[:, 5], minlength=P.numel()).double()
        stat, df = chi2(counts[None], P.double()[None])
        assert stat < chi2_quantile(df), (t, stat, df)
        again = continuations(model, prompt.repeat(6000, 1), total_len=7, temperature=t,
                              generator=torch.Generator().manual_seed(0))
        assert torch.equal(out, again)


def kl_to_main(model, x) -> float:
    """sum over depths of KL(P_main || P^k): the part of the distillation loss that training can remove."""
    with torch.no_grad():
        out = model(x)
    return sum(F.kl_div(out.mtp_logits[k - 1].log_softmax(-1), out.logits[:, k:].softmax(-1),
                        reduction="none").sum(-1).mean().item() for k in range(1, len(model.mtp) + 1))


def test_distill_trains_only_the_mtp_modules_and_raises_agreement(corpus, trained):
    model = MTPModel(get_preset("tiny", vocab_size=VOCAB))
    model.load_state_dict(trained)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    val = eval_batches(corpus.splits["val"], 2, 8, 32)
    agree0 = evaluate(model, val)["agree"]
    fixed = eval_batches(corpus.splits["train"], 1, 8, 32)[0][0]
    kl0 = kl_to_main(model, fixed)
    cfg = DistillConfig(steps=80, lr=3e-3, warmup=5, batch_size=8, seq_len=32, generated=32, prompt_len=8, seed=0)
    records = distill(model, corpus, cfg, progress=False)
    assert len(records) == 80 and records[0]["generation_seconds"] >= 0
    for name, p in model.named_parameters():
        assert p.requires_grad                                                # flags restored
        if name.startswith("mtp."):
            assert not torch.equal(p, before[name]), name
        else:                                                                 # main model, embedding, head
            assert torch.equal(p, before[name]), name
    kl1 = kl_to_main(model, fixed)
    assert kl1 < 0.5 * kl0, (kl0, kl1)
    agree1 = evaluate(model, val)["agree"]
    assert all(a1 > a0 for a0, a1 in zip(agree0, agree1, strict=True)), (agree0, agree1)


def test_tv_distillation_on_sampled_text_raises_sampled_acceptance(corpus, trained):
    model = MTPModel(get_preset("tiny", vocab_size=VOCAB))
    model.load_state_dict(trained)
    model.eval()
    prompts = eval_batches(corpus.splits["val"], 1, 16, 8)[0][0]
    text = continuations(model, prompts, 32, temperature=1.0, generator=torch.Generator().manual_seed(1))
    before = expected_acceptance(model, text)
    cfg = DistillConfig(steps=80, lr=3e-3, warmup=5, batch_size=8, seq_len=32, generated=32, prompt_len=8, seed=0,
                        loss="tv", temperature=1.0)
    records = distill(model, corpus, cfg, progress=False)
    assert all(0 <= d <= 1 for r in records for d in r["depth"])               # TV, not a cross-entropy of nats
    after = expected_acceptance(model, text)
    # TV(p, q) = 1 - acceptance falls by a third at least on every depth (measured: by 45 %)
    assert all(1 - a1 < 0.67 * (1 - a0) for a0, a1 in zip(before, after, strict=True)), (before, after)


def test_distill_errors(corpus):
    with pytest.raises(ValueError, match="no MTP modules"):
        distill(MTPModel(get_preset("tiny", vocab_size=VOCAB, mtp_depth=0)), corpus,
                DistillConfig(seq_len=32, prompt_len=8))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        DistillConfig(steps=0)
    with pytest.raises(ValueError, match="prompt_len"):
        DistillConfig(seq_len=32, prompt_len=32)
    with pytest.raises(ValueError, match="loss 'js'.*'kl', 'tv'"):
        DistillConfig(loss="js")
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        DistillConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="max_seq_len"):
        distill(MTPModel(get_preset("tiny", vocab_size=VOCAB)), corpus, DistillConfig(seq_len=128))


@pytest.mark.slow        # 6 s: trains, distills twice, exports
def test_train_cli_distills_the_export_only(tmp_path, sample_root, capsys):
    out, export = tmp_path / "run", tmp_path / "export"
    common = ["train", "--preset", "tiny", "--root", str(sample_root), "--tokenizer", str(tmp_path / "tok.json"),
              "--vocab-size", "300", "--out", str(out), "--batch-size", "4", "--seq-len", "32",
              "--eval-batches", "1", "--threads", "1", "--steps", "4"]
    assert cli_main(common + ["--distill-steps", "3"]) == 2
    assert "give --export" in capsys.readouterr().err
    assert not out.exists()                                                   # refused before any work
    assert cli_main(["distill", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert cli_main(common + ["--distill-steps", "3", "--export", str(export), "--export-dtype", "float32"]) == 0
    trained, distilled = load_model(out), load_model(export)
    for (name, a), b in zip(trained.state_dict().items(), distilled.state_dict().values(), strict=True):
        assert torch.equal(a, b) != name.startswith("mtp."), name              # only the MTP modules moved
    meta = json.loads((export / "config.json").read_text())
    assert meta["distill_config"]["steps"] == 3 and meta["distill_seconds"] >= 0
    metrics = json.loads((export / "metrics.json").read_text())
    assert "greedy_acceptance" in metrics and "greedy_acceptance" in metrics["undistilled"]
    for m in (metrics, metrics["undistilled"]):
        assert len(m["sampled_acceptance"]["depth"]) == 2 and all(0 < a <= 1 for a in m["sampled_acceptance"]["depth"])
    # the undistilled MTP modules are kept: with them the export is the trained model again
    before, _ = load_pretrained(export, mtp="undistilled")
    for (name, a), b in zip(trained.state_dict().items(), before.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="distill-steps"):
        load_pretrained(out, mtp="undistilled")
    with pytest.raises(ValueError, match="'distilled'.*'undistilled'"):
        load_pretrained(export, mtp="raw")
    # the distill subcommand on a saved model: same result type, source untouched
    again = tmp_path / "again"
    assert cli_main(["distill", "--checkpoint", str(out), "--out", str(again), "--root", str(sample_root),
                     "--steps", "2", "--batch-size", "4", "--seq-len", "32", "--generated", "8",
                     "--prompt-len", "8", "--threads", "1", "--loss", "tv", "--temperature", "1"]) == 0
    meta = json.loads((again / "config.json").read_text())
    assert (meta["distill_config"]["loss"], meta["distill_config"]["temperature"]) == ("tv", 1.0)
    assert meta["distilled_from"] == str(out) and meta["weights_dtype"] == "float32"   # the source's dtype
    assert torch.equal(load_model(out).head.weight, trained.head.weight)
    # distilling a distilled model keeps the ORIGINAL undistilled modules
    twice = tmp_path / "twice"
    assert cli_main(["distill", "--checkpoint", str(again), "--out", str(twice), "--root", str(sample_root),
                     "--steps", "2", "--batch-size", "4", "--seq-len", "32", "--generated", "8",
                     "--prompt-len", "8", "--threads", "1"]) == 0
    for path in (again, twice):
        mtp = {k: v for k, v in load_pretrained(path, mtp="undistilled")[0].state_dict().items() if "mtp." in k}
        assert all(torch.equal(v, trained.state_dict()[k]) for k, v in mtp.items())
    # an export replaces a model only with --overwrite; one without distillation drops a stale undistilled file
    assert cli_main(common + ["--resume", "--steps", "5", "--export", str(again)]) == 2
    assert "--export" in capsys.readouterr().err and (again / "mtp_undistilled.safetensors").exists()
    assert cli_main(common + ["--overwrite", "--steps", "2", "--export", str(again)]) == 0
    assert not (again / "mtp_undistilled.safetensors").exists()
