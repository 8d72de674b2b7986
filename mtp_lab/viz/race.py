"""The race: plain autoregressive decoding against speculative decoding, side by side, on the wall clock.

Both runs are measured one after the other on the same machine (running them at once would make them
compete for the CPU), each after a short warm-up, then replayed together: two texts fill up and the
tokens-vs-seconds chart shows the gap. A small model generates in a fraction of a second, so the replay is
slowed down (by default to last about REPLAY_S seconds) and says by how much.

One run is one sample: on a shared machine the speed ratio moves from run to run (by tens of percent; the
issue that asked for this measured 0.59x-1.42x over 16 presses with the previous, 4-block course model).
Each press measures `repeats` pairs, replays the median one and reports the median and range of every run so
far with the same settings.
"""

from __future__ import annotations

import html
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ..decoding import speculative_steps
from . import theme
from .common import Dashboard, encode, html_widget, plural

REPLAY_S = 6.0   # seconds a replay lasts by default: a room can follow it
SLOWDOWNS = [(f"about {REPLAY_S:g} s (auto)", 0), ("real time", 1), ("5x slower", 5), ("20x slower", 20),
             ("100x slower", 100)]


@dataclass
class Timeline:
    """One measured generation: after step i, `counts[i]` tokens existed at `times[i]` seconds."""
    label: str
    times: np.ndarray       # (steps,) seconds since the start, after each main-model forward
    counts: np.ndarray      # (steps,) tokens generated so far
    tokens: list[int]       # the generated tokens

    def tokens_at(self, t: float) -> int:
        """How many tokens had been generated t seconds after the start."""
        i = int(np.searchsorted(self.times, t, side="right"))
        return int(self.counts[i - 1]) if i else 0

    @property
    def total_s(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def measure(model, prompt_ids: list[int], max_new_tokens: int, label: str, warmup: int = 4, **engine_kw) -> Timeline:
    """Run the engine to the end, timing every event with perf_counter. num_draft=0 is plain decoding:
    one main-model forward per token, the same cached loop as `generate`."""
    for _ in speculative_steps(model, prompt_ids, min(warmup, max_new_tokens), **engine_kw):
        pass                                                     # warm-up: first-call costs off the clock
    times, counts, tokens = [], [], []
    t0 = time.perf_counter()
    for step in speculative_steps(model, prompt_ids, max_new_tokens, **engine_kw):
        tokens += step.emitted
        times.append(time.perf_counter() - t0)
        counts.append(len(tokens))
    return Timeline(label, np.array(times), np.array(counts), tokens)


def race(model, prompt_ids: list[int], max_new_tokens: int = 64, num_draft: int = 2, temperature: float = 0.0,
         drafter: str = "mtp", fp8_drafter: bool = False, seed: int = 0) -> tuple[Timeline, Timeline]:
    """(plain AR, speculative) timelines for the same prompt and sampling settings."""
    common = dict(temperature=temperature, seed=seed)
    ar = measure(model, prompt_ids, max_new_tokens, "autoregressive", num_draft=0, **common)
    spec = measure(model, prompt_ids, max_new_tokens, f"speculative (k={num_draft}, {drafter})",
                   num_draft=num_draft, drafter=drafter, fp8_drafter=fp8_drafter, **common)
    return ar, spec


def replay_slowdown(measured_s: float, choice: int = 0) -> int:
    """How many times slower than measured to replay: `choice`, or with 0 (auto) the whole number that makes
    a replay of `measured_s` seconds last about REPLAY_S (1 = real time, for runs that long already)."""
    if choice:
        return int(choice)
    return max(1, round(REPLAY_S / measured_s)) if measured_s > 0 else 1


def ratio_summary(ratios: list[float]) -> str:
    """Speed-ups measured so far: their median and range (for one run, a prompt to measure again)."""
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x in 1 run (one sample: press race again for the spread)"
    return (f"median {statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x "
            f"over {len(ratios)} runs")


class SpeculativeRace(Dashboard):
    """A "race" button: measure both `repeats` times, replay the median pair slowed down, report the spread."""

    def __init__(self, model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 96,
                 num_draft: int = 2, seed: int = 0, repeats: int = 3, interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        cs = dict(continuous_update=False, style={"description_width": "initial"})
        self.prompt = w.Text(value=prompt, description="prompt", layout=w.Layout(width="40%"), **cs)
        self.k = w.IntSlider(value=num_draft, min=1, max=8, description="k drafts", **cs)
        self.temperature = w.FloatSlider(value=0.0, min=0.0, max=1.5, step=0.05, description="temperature", **cs)
        self.drafter = w.Dropdown(options=[("MTP modules", "mtp"), ("n-gram lookup", "ngram")], value="mtp",
                                  description="drafter")
        self.max_new = w.IntSlider(value=max_new_tokens, min=8, max=model.config.max_seq_len - 1,
                                   description="tokens", **cs)
        self.repeats = w.IntSlider(value=repeats, min=1, max=10, description="runs per press", **cs)
        self.slowdown = w.Dropdown(options=SLOWDOWNS, value=0, description="replay")
        self.go_button = w.Button(description="race", icon="flag-checkered", button_style="primary")
        self.texts = [html_widget(), html_widget()]
        self.status = html_widget("press race: both runs are measured, then replayed side by side, slowed down")
        fig = go.Figure()
        for name in ("autoregressive", "speculative"):
            fig.add_scatter(name=name, mode="lines", line=theme.line(name, width=3, shape="hv"))
        fig.update_layout(height=theme.height(320), xaxis_title="seconds (measured)", yaxis_title="tokens generated",
                          margin=theme.margin(t=30, l=60), legend=dict(orientation="h", yanchor="bottom", y=1.02))
        self.fig = self.new_figure(fig)
        self.go_button.on_click(lambda _: self.handle(self.run))
        self.timelines: tuple[Timeline, Timeline] | None = None
        self.ratios: dict[tuple, list[float]] = {}   # settings -> AR seconds / speculative seconds of every run
        self.measured: list[float] = []              # the ratios of the settings last raced
        self.clock = 0.0            # replay time shown, in measured seconds
        self.slow = 1               # the replay's slowdown
        self._thread: threading.Thread | None = None
        if self.interactive:
            boxes = [w.VBox([w.HTML(f"<b>{t}</b>"), x], layout=w.Layout(width="50%"))
                     for t, x in zip(("autoregressive", "speculative"), self.texts, strict=True)]
            self.widget = w.VBox([w.HBox([self.prompt, self.drafter, self.go_button]),
                                  w.HBox([self.k, self.temperature, self.max_new]),
                                  w.HBox([self.repeats, self.slowdown]),
                                  self.status, w.HBox(boxes), self.fig])

    def settings(self) -> tuple:
        return (self.prompt.value, self.k.value, self.temperature.value, self.drafter.value, self.max_new.value)

    def run(self) -> None:
        """Measure both generations `repeats` times, keep the median pair, then replay it (on a thread when a
        front end is showing it)."""
        if self._thread is not None and self._thread.is_alive():
            return
        ids = encode(self.tokenizer, self.prompt.value)
        pairs = []
        for i in range(self.repeats.value):
            self.status.value = f"measuring: run {i + 1} of {self.repeats.value}..."
            pairs.append(race(self.model, ids, self.max_new.value, self.k.value, self.temperature.value,
                              self.drafter.value, seed=self.seed))
        pairs.sort(key=lambda p: p[0].total_s / p[1].total_s)
        self.measured = self.ratios.setdefault(self.settings(), [])
        self.measured.extend(ar.total_s / spec.total_s for ar, spec in pairs)
        self.timelines = pairs[len(pairs) // 2]
        self.slow = replay_slowdown(max(t.total_s for t in self.timelines), self.slowdown.value)
        if self.interactive:
            self._thread = threading.Thread(target=self.replay, daemon=True)
            self._thread.start()
        else:
            self.show_at(float("inf"))

    def replay(self) -> None:
        end = max(t.total_s for t in self.timelines)
        start, slow = time.monotonic(), self.slow
        while (now := (time.monotonic() - start) / slow) < end:
            self.show_at(now)
            time.sleep(1 / 40)
        self.show_at(float("inf"))
        self.redraw.flush()

    def show_at(self, t: float) -> None:
        """Set the replay clock to t measured seconds and ask for a redraw."""
        self.clock = t
        self.redraw.request()

    def draw(self) -> None:
        if self.timelines is None:
            return
        t = self.clock
        with self.fig.batch_update():
            for tr, tl in zip(self.fig.data, self.timelines, strict=True):
                keep = tl.times <= t
                tr.x = np.concatenate([[0.0], tl.times[keep]])
                tr.y = np.concatenate([[0], tl.counts[keep]])
        for box, tl in zip(self.texts, self.timelines, strict=True):
            n = tl.tokens_at(t)
            text = html.escape(self.tokenizer.decode(tl.tokens[:n]))
            box.value = (f"<div style='font-family:monospace;white-space:pre-wrap'>{text}</div>"
                         f"<small>{plural(n, 'token')}</small>")
        ar, spec = self.timelines
        end = max(ar.total_s, spec.total_s)
        pace = "in real time" if self.slow == 1 else f"slowed down {self.slow}x"
        if t >= end:
            same = " · identical outputs (greedy is lossless)" if ar.tokens == spec.tokens else ""
            self.status.value = (f"{ar.label} {ar.total_s:.2f} s, {spec.label} {spec.total_s:.2f} s for "
                                 f"{plural(len(spec.tokens), 'token')}: {ar.total_s / spec.total_s:.2f}x in the run "
                                 f"replayed ({pace}) · <b>speed-up (AR time / speculative time) "
                                 f"{ratio_summary(self.measured)}</b> with these settings{same}")
        else:
            self.status.value = f"replaying {pace}: {t:.2f} of {end:.2f} measured seconds"


def speculative_race(model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 96,
                     num_draft: int = 2, seed: int = 0, repeats: int = 3,
                     interactive: bool | None = None) -> SpeculativeRace:
    """AR vs speculative generation side by side: press "race" to measure both `repeats` times and replay the
    median run slowed down to a pace a room can follow, with a tokens-vs-seconds chart of the wall-clock gap
    and the speed ratio's median and range over every run so far."""
    return SpeculativeRace(model, tokenizer, prompt, max_new_tokens, num_draft, seed, repeats, interactive)
