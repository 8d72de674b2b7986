"""Headless tests of mtp_lab.viz: plain figure-data functions against hand references, and every
dashboard driven by setting widget values (no kernel, no browser) and reading the figure data back."""

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from mtp_lab import MTPModel, get_preset
from mtp_lab.data import Corpus
from mtp_lab.decoding import GenerationStats, SpeculativeStep, speculative_generate, speculative_steps
from mtp_lab.fp8 import fake_quantize
from mtp_lab.train import History, TrainConfig, Trainer
from mtp_lab.viz.architecture import architecture_graph, architecture_view
from mtp_lab.viz.common import Throttle, widgets_available
from mtp_lab.viz.fp8view import (
    format_values,
    fp8_explorer,
    granularity_errors,
    layer_scales,
    linear_layers,
    outlier_activations,
    round_to_format,
)
from mtp_lab.viz.race import race, speculative_race
from mtp_lab.viz.rmsnorm import capture_norms, eps_response, rmsnorm_dashboard, site_summary, vector_stats
from mtp_lab.viz.specdec import add_step, draft_table, speculative_dashboard, step_segments
from mtp_lab.viz.training import training_monitor


class ByteTokenizer:
    """Stand-in tokenizer for tests: one token per UTF-8 byte."""

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MTPModel(get_preset("tiny", vocab_size=256)).eval()


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


def trace(dash, key):
    return dash.fig.data[dash.trace[key]]


# ---------------------------------------------------------------- common

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_throttle_limits_rate_and_keeps_last_frame():
    clock, frames = FakeClock(), []
    th = Throttle(lambda: frames.append(clock.t), max_per_second=20, clock=clock, trailing=False)
    for i in range(1000):           # one request per millisecond for one second
        clock.t = i / 1000
        th.request()
    th.flush()                      # the last state reaches the screen
    gaps = np.diff(frames[:-1])
    assert len(frames) <= 21 and gaps.min() >= 0.05 - 1e-12
    assert frames[-1] == pytest.approx(0.999)
    th.flush()                      # nothing pending: no extra frame
    assert th.redraws == len(frames)
    with pytest.raises(ValueError, match="max_per_second"):
        Throttle(lambda: None, max_per_second=0)


def test_throttle_trailing_timer_draws_deferred_frame():
    frames = []
    th = Throttle(lambda: frames.append(1), max_per_second=50)
    assert th.request() is True and th.request() is False
    th._timer.join(1.0)
    assert len(frames) == 2 and not th.pending


def test_no_widget_frontend_outside_a_kernel(monkeypatch):
    assert widgets_available() is False          # pytest has no Jupyter kernel
    monkeypatch.setenv("MTP_LAB_STATIC", "1")
    assert widgets_available() is False


# ---------------------------------------------------------------- RMSNorm

def test_vector_stats_by_hand():
    v = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    s = vector_stats(v)
    np.testing.assert_allclose(s["rms"], [math.sqrt(12.5), 0.0])
    np.testing.assert_allclose(s["mean"], [-0.5, 0.0])
    np.testing.assert_allclose(s["maxabs"], [4.0, 0.0])


def test_eps_response_knee():
    eps = 1e-4
    np.testing.assert_allclose(eps_response(np.array([math.sqrt(eps), 1e3, 0.0]), eps),
                               [1 / math.sqrt(2), 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(eps_response(np.array([1e-6]), eps), [1e-6 / math.sqrt(1e-12 + eps)])


def test_capture_norms_matches_reference(model):
    cfg = model.config
    tokens = torch.randint(0, cfg.vocab_size, (1, 12))
    caps = capture_norms(model, tokens)
    assert len(caps) == 2 * cfg.n_layers + 1 + 5 * cfg.mtp_depth
    by = {c.name: c for c in caps}
    for c in caps:                                  # y = g * x / sqrt(mean(x^2) + eps), recomputed here
        ref = c.gain * c.x / torch.sqrt((c.x ** 2).mean(-1, keepdim=True) + cfg.norm_eps)
        torch.testing.assert_close(c.y, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        emb = model.embed(tokens)[0]
        _, h0 = model.forward_main(tokens)
    torch.testing.assert_close(by["mtp.0.enorm"].x, emb[1:])                    # Emb(t_{i+1})
    torch.testing.assert_close(by["mtp.1.enorm"].x, emb[2:])                    # Emb(t_{i+2})
    torch.testing.assert_close(by["mtp.0.hnorm"].x, h0[0, :-1])                 # h^0 after the final norm
    torch.testing.assert_close(by["mtp.0.hnorm"].x, by["norm"].y[:-1])
    assert by["mtp.1.block.attn_norm"].x.shape == (10, cfg.d_model)             # depth 2 sees T-2


def test_capture_norms_eps_override_is_temporary(model):
    tokens = torch.randint(0, 256, (1, 6))
    caps = capture_norms(model, tokens, eps=10.0)
    c = caps[0]
    ref = c.gain * c.x / torch.sqrt((c.x ** 2).mean(-1, keepdim=True) + 10.0)
    torch.testing.assert_close(c.y, ref)
    assert c.eps == 10.0 and all(m.eps == model.config.norm_eps for m in model.modules() if hasattr(m, "eps"))
    with pytest.raises(ValueError, match="eps"):
        capture_norms(model, tokens, eps=0.0)


def test_site_summary_nan_for_short_prompt(model):
    caps = capture_norms(model, torch.tensor([[5, 6]]))     # T=2: depth 2 has no position
    s = site_summary(caps)
    names = [c.name for c in caps]
    assert math.isnan(s["rms_in"][names.index("mtp.1.enorm")])
    assert not math.isnan(s["rms_in"][names.index("mtp.0.enorm")])


def test_rmsnorm_dashboard_updates_live(model, tok):
    d = rmsnorm_dashboard(model, tok, prompt="hello world", interactive=True)
    assert isinstance(d.fig, go.FigureWidget)
    assert len(trace(d, "tok_rms_in").x) == len("hello world")
    assert list(trace(d, "rms_in").x)[5] == "MTP1 enorm"
    # prompt -> per-token series have the new length, values recomputed by hand
    d.prompt.value = "abc"
    d.flush()
    assert len(trace(d, "tok_rms_in").x) == 3
    x = model.embed(torch.tensor([[97, 98, 99]]))[0].detach()
    np.testing.assert_allclose(trace(d, "tok_rms_in").y, x.pow(2).mean(-1).sqrt().numpy(), rtol=1e-5)
    # site -> gain trace is that module's weight, titles name it
    d.site.value = "mtp.0.hnorm"
    d.flush()
    np.testing.assert_allclose(trace(d, "gain").y, model.mtp[0].hnorm.weight.detach().numpy())
    assert len(trace(d, "tok_rms_in").x) == 2 and "MTP1 hnorm" in d.fig.layout.annotations[2].text
    # eps -> curve and knee follow the slider
    d.eps.value = 1e-2
    d.flush()
    np.testing.assert_allclose(trace(d, "knee").x, [0.1, 0.1])
    assert trace(d, "eps").y[np.argmin(abs(trace(d, "eps").x - 0.1))] == pytest.approx(1 / math.sqrt(2), abs=0.02)
    np.testing.assert_allclose(trace(d, "eps_model").y[-1], eps_response(np.array([100.0]), model.config.norm_eps))
    # a bad prompt is reported in the status line; the figure keeps its last good state
    d.prompt.value = ""
    assert "empty" in d.status.value and len(trace(d, "tok_rms_in").x) == 2


def test_rmsnorm_dashboard_static_fallback(model, tok):
    d = rmsnorm_dashboard(model, tok, prompt="x = 1", interactive=False)
    assert type(d.fig) is go.Figure
    bundle = d._repr_mimebundle_()
    assert "text/html" in bundle and "plotly" in bundle["text/html"]
    assert "application/vnd.jupyter.widget-view+json" not in bundle


# ---------------------------------------------------------------- architecture

def test_architecture_parameter_counts_match_model():
    for cfg in (get_preset("tiny"), get_preset("course"), get_preset("tiny", mtp_depth=0)):
        nodes, edges = architecture_graph(cfg, batch=2, seq_len=10)
        assert sum(n.params for n in nodes) == MTPModel(cfg).parameter_counts()["total"]
        keys = {n.key for n in nodes}
        assert all(a in keys and b in keys for a, b in edges)


def test_architecture_collapses_identical_blocks():
    """The 24-block course model: first block, one box for blocks 1-22, last block; the main column is then no
    taller than an MTP module's, so sliders, main model and MTP modules share one screen."""
    cfg = get_preset("course")
    nodes, edges = architecture_graph(cfg, seq_len=16)
    main = [n for n in nodes if n.key.startswith("main.block")]
    assert [n.label.split()[0] for n in main] == ["Block", "Blocks", "Block"] and "×22" in main[1].label
    assert main[1].params == 22 * main[0].params
    assert max(n.y for n in nodes) == max(n.y for n in nodes if n.key.startswith("mtp"))
    assert ("main.block.0", "main.blocks") in edges and ("main.blocks", f"main.block.{cfg.n_layers - 1}") in edges
    full, _ = architecture_graph(cfg, seq_len=16, collapse=False)
    assert sum(n.key.startswith("main.block") for n in full) == cfg.n_layers
    assert architecture_view(cfg, interactive=False).fig.layout.height <= 700


def test_architecture_shapes_and_wiring():
    cfg = get_preset("tiny", mtp_input_norm=False)
    nodes, edges = architecture_graph(cfg, batch=3, seq_len=9)
    by = {n.key: n for n in nodes}
    assert by["head"].shape == f"(3, 9, {cfg.vocab_size})"
    assert by["mtp2.head"].shape == f"(3, 7, {cfg.vocab_size})"     # depth k: T-k positions
    assert "(3, 8, 64)" in by["mtp1.eh_proj"].equation               # concat is 2d wide
    assert ("main.block.1", "mtp1.hnorm") in edges                   # pre-norm state when mtp_input_norm=False
    assert ("mtp1.block", "mtp2.hnorm") in edges
    with pytest.raises(ValueError, match="seq_len"):
        architecture_graph(cfg, seq_len=cfg.max_seq_len + 1)


def test_architecture_view_sliders_relabel(model):
    v = architecture_view(model, interactive=True)
    v.seq_len.value = 5
    v.batch.value = 4
    v.flush()
    head_trace = v.fig.data[[n.key for n in v.graph[0]].index("mtp2.head")]
    assert "(4, 3, 256)" in head_trace.text
    assert any("(4, 5, 256)" in a.text for a in v.fig.layout.annotations)


# ---------------------------------------------------------------- FP8 explorer

def test_format_values_are_the_formats():
    e4m3, e5m2 = format_values("e4m3"), format_values("e5m2")
    assert e4m3[-1] == 448 and e4m3[0] == 2.0 ** -9 and len(e4m3) == 126   # 7 subnormals + 15 * 8 normals - NaN
    assert e5m2[-1] == 57344 and e5m2[0] == 2.0 ** -16
    assert np.all(np.diff(e4m3) > 0)
    assert round_to_format(3.3, "e4m3") == 3.25 and round_to_format(3.3, "e5m2") == 3.5
    assert round_to_format(1000.0, "e4m3") == 448.0                          # saturates, no inf
    assert round_to_format(2.0 ** -11, "e4m3") == 0.0                         # below half the smallest subnormal


def test_granularity_errors_outlier_hurts_per_tensor_most():
    x, mask = outlier_activations(1e5)
    err = granularity_errors(x, mask)
    e = err["e4m3"]
    assert e["tensor"]["rel_error"] > 3 * e["tile"]["rel_error"]
    assert e["tensor"]["underflow"] > e["block"]["underflow"] > e["tile"]["underflow"]
    # the tile scale is exactly amax/448 of its own 128 values: only the outlier's tile (1 of 4) is coarse
    ref = (x[mask] - fake_quantize(x, "e4m3", "tile")[mask]).norm() / x[mask].norm()
    assert e["tile"]["rel_error"] == pytest.approx(float(ref))
    calm = granularity_errors(*outlier_activations(1.0))["e4m3"]
    assert max(v["rel_error"] for v in calm.values()) < 0.035 and calm["tensor"]["underflow"] == 0


def test_layer_scales_shapes_and_values(model):
    tokens = torch.randint(0, 256, (1, 9))
    s = layer_scales(model, "layers.1.ffn.w1", tokens)
    w = model.layers[1].ffn.w1.weight.detach()
    assert s["weight_scale"].shape == (1, 1) and s["act_scale"].shape == (9, 1)       # tiny: everything < 128
    assert s["weight_scale"][0, 0] == pytest.approx(float(w.abs().max()) / 448)
    with torch.no_grad():
        h = model.embed(tokens)
        h = model.layers[0](h)
        h = h + model.layers[1].attn(model.layers[1].attn_norm(h))
        x = model.layers[1].ffn_norm(h)[0]                                              # w1's input
    np.testing.assert_allclose(s["act_scale"][:, 0], (x.abs().amax(-1) / 448).numpy(), rtol=1e-5)
    assert "head" not in linear_layers(model) and "mtp.0.eh_proj" in linear_layers(model)
    with pytest.raises(ValueError, match="not a linear"):
        layer_scales(model, "layers.0.attn_norm", tokens)


def test_fp8_explorer_controls(model, tok):
    d = fp8_explorer(model, tok, prompt="abcdef", ks=(128, 256), interactive=True)

    def f(key):
        return d.fig.data[d.trace[key]]

    assert len(f("line_e4m3").x) == 126
    d.value.value = 1000.0
    d.flush()
    assert list(f("x_rounded").x) == [448.0, 1024.0] and "448" in d.status.value
    before = list(f("gran_e4m3").y)
    d.outlier.value = 1e5
    d.flush()
    assert f("gran_e4m3").y[0] > 3 * before[0]                                         # per-tensor error jumps
    d.layer.value = "mtp.1.eh_proj"                                                    # (32, 64): K = 2d
    d.flush()
    assert np.asarray(f("a_scale").z).shape == (4, 1) and "mtp.1.eh_proj" in d.fig.layout.xaxis3.title.text
    d.promote.value = 32
    d.flush()
    assert [r["k"] for r in d.acc] == list(f("acc_promoted").x) == [128, 256]
    assert f("acc_limited").y[1] > f("acc_promoted").y[1] > f("acc_fp32").y[1]


# ---------------------------------------------------------------- speculative decoding

def make_step(drafts, n_acc, next_token, emitted=None, V=8):
    """A SpeculativeStep by hand: q uniform over the drafts' vocabulary, p one-hot-ish."""
    k = len(drafts)
    q, p = torch.full((k, V), 1.0 / V), torch.full((k + 1, V), 1.0 / V)
    emitted = drafts[:n_acc] + [next_token] if emitted is None else emitted
    return SpeculativeStep(index=1, position=5, draft_tokens=drafts, draft_probs=q, draft_logits=None,
                           target_probs=p, target_logits=p.log(), uniforms=torch.linspace(0.1, 0.9, k),
                           accepted=[j < n_acc for j in range(k)], n_accepted=n_acc, next_token=next_token,
                           is_bonus=bool(drafts) and n_acc == k, emitted=emitted, draft_time_s=0.01,
                           verify_time_s=0.02, step_time_s=0.03, stop_reason=None)


def test_step_segments_marks_every_kind():
    assert step_segments(make_step([1, 2, 3], 1, 7)) == [(1, "accepted"), (2, "rejected"), (7, "corrected")]
    assert step_segments(make_step([1, 2], 2, 5)) == [(1, "accepted"), (2, "accepted"), (5, "bonus")]
    assert step_segments(make_step([], 0, 4)) == [(4, "target")]
    # EOS (token 2) among the accepted drafts cuts the step: nothing after it is emitted
    assert step_segments(make_step([1, 2, 3], 3, 6, emitted=[1, 2])) == [(1, "accepted"), (2, "accepted")]


def test_running_stats_match_engine(model):
    prompt = list(b"def f(x):")
    stats, events = GenerationStats(), []
    gen = speculative_steps(model, prompt, 24, num_draft=3, temperature=1.0, seed=3)
    while True:
        try:
            events.append(next(gen))
            add_step(stats, events[-1])
        except StopIteration as done:
            result = done.value
            break
    final = result.stats
    for name in ("new_tokens", "main_forwards", "steps", "drafted", "accepted", "drafted_per_position",
                 "accepted_per_position"):
        assert getattr(stats, name) == getattr(final, name), name
    assert stats.mean_acceptance_length == pytest.approx(final.mean_acceptance_length)
    # every emitted token is accounted for by exactly one kept segment
    kept = [t for e in events for t, kind in step_segments(e) if kind != "rejected"]
    assert kept == result.tokens
    rows = draft_table(next(e for e in events if e.draft_tokens), ByteTokenizer())
    assert all(r["verdict"] in ("accepted", "rejected", "not examined") for r in rows)
    assert all(math.isclose(r["ratio"], r["p"] / r["q"]) for r in rows)


def test_speculative_dashboard_step_play_reset(model, tok):
    d = speculative_dashboard(model, tok, prompt="x = ", max_new_tokens=16, interactive=True)
    d.k.value = 2
    d.handle(d.step)                                   # prefill: one plain token, nothing drafted
    d.handle(d.step)
    d.flush()
    st = d.state
    assert st.stats.main_forwards == 2 and len(st.last_rows) == 2
    # greedy: q and p are one-hot (they read 1.000/1.000); the panel shows the target's top candidates instead
    assert list(d.fig.data[0].y) == [] and list(d.fig.data[4].x) == st.top["labels"]
    assert "2 main forwards" in d.status.value and "<span" in d.text.value
    d.speed.value = 30.0
    d.play()
    d._thread.join(20)                                  # plays to the end on its own thread
    d.flush()
    assert st.done and st.stop_reason == "max_new_tokens" and st.stats.new_tokens == 16
    assert len(d.fig.data[2].y) == st.stats.steps and len(d.fig.data[3].y) == 2
    assert "finished" in d.status.value and d.step() is False
    d.temperature.value = 0.7                            # any control change starts over
    assert d.state.stats.main_forwards == 0 and not d.state.done
    d.drafter.value = "ngram"
    d.fp8.value = True                                   # n-gram has no weights: explained, not raised
    assert "fp8_drafter" in d.status.value


def test_race_greedy_is_lossless_and_timed(model, tok):
    ar, spec = race(model, list(b"def "), max_new_tokens=6, num_draft=2)
    assert ar.tokens == spec.tokens and len(ar.tokens) == 6
    # one timeline point per main-model forward
    assert len(ar.times) == 6
    assert len(spec.times) == speculative_generate(model, list(b"def "), 6, num_draft=2).stats.main_forwards
    assert spec.counts[-1] == 6 and np.all(np.diff(spec.counts) >= 1)
    assert np.all(np.diff(ar.times) > 0) and ar.tokens_at(ar.total_s) == 6 and ar.tokens_at(0.0) == 0
    r = speculative_race(model, tok, max_new_tokens=8, interactive=False)
    r.run()                                                    # static: no replay thread, final frame at once
    r.flush()
    assert [len(t.y) for t in r.fig.data] == [9, len(r.timelines[1].times) + 1]
    assert "identical outputs" in r.status.value


# ---------------------------------------------------------------- training monitor

class VocabOnly:   # what the Trainer asks of a tokenizer: its size, and its text for the run's corpus record
    def to_str(self):
        return "byte-level stand-in"

    def get_vocab_size(self):
        return 256


def test_training_monitor_follows_trainer():
    rng = np.random.default_rng(0)
    splits = {s: rng.integers(0, 256, 4000).astype(np.uint16) for s in ("train", "val", "test")}
    corpus = Corpus(VocabOnly(), splits, {})
    mon, hist = training_monitor(interactive=True), History()
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=8, eval_interval=2, eval_batches=1, warmup=1, precision="fp32")
    Trainer(get_preset("tiny", vocab_size=256), cfg, corpus, callbacks=[mon, hist]).fit()
    by = {t.name: t for t in mon.fig.data}
    assert list(by["main L_main"].x) == [1, 2, 3]
    np.testing.assert_allclose(by["depth 2 L^2"].y, [r.depth[1] for r in hist.steps])
    np.testing.assert_allclose(by["lambda"].y, [r.lam for r in hist.steps])
    assert list(by["val main"].x) == [2, 3] and by["val depth 1"].y[1] == hist.evals[1][1]["depth"][0]
    assert "step 3/3" in mon.status.value
    other = training_monitor(interactive=False)
    other.replay(hist.steps[:2], hist.evals[:1])
    assert len(other.fig.data[1].y) == 2 and type(other.fig).__name__ == "Figure"


def test_architecture_marks_fp8_scope():
    nodes, _ = architecture_graph(get_preset("tiny", fp8="mtp"), seq_len=8)
    by = {n.key: n for n in nodes}
    assert "FP8" in by["mtp1.block"].equation and "FP8" not in by["mtp2.eh_proj"].equation   # checkpoint: BF16
    assert "high precision" in by["mtp2.eh_proj"].equation
    assert "FP8" not in by["main.block.0"].equation and "FP8" not in by["head"].equation


def test_speculative_dashboard_rejected_prompt_clears_the_old_generation(model, tok):
    d = speculative_dashboard(model, tok, prompt="x = ", max_new_tokens=16, interactive=True)
    d.handle(d.step)
    d.handle(d.step)
    d.prompt.value = ""                                   # rejected: the old prompt must not play on
    assert "empty" in d.status.value
    assert d.state.done and d.state.segments == [] and d.step() is False
    d.play()
    d._thread.join(20)
    d.flush()
    assert "empty" in d.status.value and d.text.value.count("<span") == 0 and len(d.fig.data[2].y) == 0
    d.prompt.value = "y = "                               # a good prompt starts over
    assert d.state.error == "" and d.step() is True


@pytest.fixture(scope="module")
def bpe():
    """The course's byte-level BPE (a tokenizers.Tokenizer) and a random tiny model of its vocabulary."""
    from mtp_lab.data import DEFAULT_TOKENIZER, load_tokenizer
    tokenizer = load_tokenizer(DEFAULT_TOKENIZER)
    torch.manual_seed(0)
    return MTPModel(get_preset("tiny", vocab_size=tokenizer.get_vocab_size())).eval(), tokenizer


@pytest.mark.parametrize("make", [speculative_dashboard, rmsnorm_dashboard])
def test_lone_surrogate_prompt_is_a_status_line(bpe, make):
    d = make(*bpe, prompt="x = 1", interactive=True)
    d.prompt.value = "x = \ud800"                          # a text box can hold it; UTF-8 cannot
    assert "lone surrogate" in d.status.value and "position 4" in d.status.value


def test_every_colour_comes_from_the_palette():
    """mtp_lab/viz/palette.py is the only place a colour is written: hex, rgb()/rgba() or a CSS colour name."""
    import re
    from pathlib import Path

    import mtp_lab.viz as viz_pkg

    literal = re.compile(r"""['"]#[0-9a-fA-F]{3,8}['"]|rgba?\(\d|color\s*[=:]\s*['"]?(red|green|blue|grey|gray|"""
                         r"""black|orange|purple|white)\b""")
    found = [f"{path.name}:{i}: {line.strip()}" for path in sorted(Path(viz_pkg.__file__).parent.glob("*.py"))
             if path.name != "palette.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, "colour literals outside mtp_lab/viz/palette.py:\n" + "\n".join(found)


@pytest.fixture
def presenter_off():
    """Every test that turns the presenter switch on leaves it off."""
    import mtp_lab.viz as viz

    yield viz.presenter
    viz.presenter(False)


def test_presenter_scales_the_views_built_afterwards(model, tok, presenter_off):
    from mtp_lab.viz import speedup_lab, theme

    point = [{"label": "x", "alpha": 0.6, "k": 2, "c": 0.3, "verify": 1.2, "speedup": 1.3}]
    assert presenter_off(False) == 1.0
    screen = rmsnorm_dashboard(model, tok, prompt="abc", interactive=False).figures[0]
    assert presenter_off() == 1.5
    projector = rmsnorm_dashboard(model, tok, prompt="abc", interactive=False).figures[0]
    assert projector.layout.template.layout.font.size == 1.5 * screen.layout.template.layout.font.size == 19.5
    assert projector.layout.height > screen.layout.height                       # text takes more room
    assert screen.layout.width is None and projector.layout.width is None      # as wide as the cell, always
    assert theme.px(10) == 15 and theme.line("main")["width"] == 3.0
    assert presenter_off(2.0) == 2.0 and theme.px(10) == 20
    lab = speedup_lab(point, interactive=False)
    assert all(f.layout.template.layout.font.size == 26 for f in lab.figures)
    assert presenter_off(False) == 1.0 and theme.px(10) == 10


def test_presenter_refuses_nonsense(presenter_off):
    for bad in (0, 10, "big", float("nan")):
        with pytest.raises(ValueError, match="presenter scale must be a number in"):
            presenter_off(bad)


def test_presenter_scales_the_controls_too(model, tok, presenter_off):
    """A view built after presenter() shows with a style that sets ipywidgets' size variables (labels, readouts,
    buttons, dropdowns, text boxes, slider handles) and table code to the presenter font; at scale 1 nothing is
    added. (tests/test_browser.py measures the computed sizes in Chromium.)"""
    from mtp_lab.viz import theme

    presenter_off(False)
    plain = rmsnorm_dashboard(model, tok, prompt="abc", interactive=True)
    n = len(plain.widget.children)
    plain._repr_mimebundle_()
    assert len(plain.widget.children) == n + 1 and not plain.widget._dom_classes     # + the FitWatcher only
    presenter_off()
    big = rmsnorm_dashboard(model, tok, prompt="abc", interactive=True)
    presenter_off(False)                                   # the scale of the build is kept
    big._repr_mimebundle_()
    big._repr_mimebundle_()                                # styled once, not once per display
    assert big.widget._dom_classes == ("mtp-lab-scale-150",)
    style = big.widget.children[0].value
    assert len(big.widget.children) == n + 2 and style == theme.widget_css(1.5)     # + style and FitWatcher
    for rule in ("--jp-widgets-font-size: 19.5px", ".mtp-lab-scale-150 button", ".mtp-lab-scale-150 select",
                 ".mtp-lab-scale-150 code", "--jp-widgets-slider-handle-size: 24px"):
        assert rule in style, rule


def test_views_refit_their_figures_when_the_page_reports_a_width(model, tok):
    """plotly draws a FigureWidget at its default 700 px when the view is rendered before it is on the page; the
    FitWatcher (last child of the box) reports the box's width from the browser and the view relayouts every
    figure, so plotly autosizes to the cell (tests/test_browser.py checks the drawn width in Chromium)."""
    from mtp_lab.viz.common import FIT_WATCHER_JS

    d = rmsnorm_dashboard(model, tok, prompt="abc", interactive=True)
    d._repr_mimebundle_()
    watcher = d.widget.children[-1]
    assert type(watcher).__name__ == "FitWatcher" and watcher._esm == FIT_WATCHER_JS
    assert "ResizeObserver" in FIT_WATCHER_JS and watcher.layout.height == "0px"
    sent = []
    d.figures[0]._send_relayout_msg = lambda layout, source_view_id=None: sent.append(layout)
    watcher._handle_custom_msg({"width": 1488}, [])          # what the browser sends
    assert d.figures[0].layout.meta == {"cell_width": 1488} and sent == [{"meta": {"cell_width": 1488}}]
