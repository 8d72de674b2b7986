"""The race: plain autoregressive decoding against speculative decoding, side by side, on the wall clock.

Both runs are measured one after the other on the same machine (running them at once would make them
compete for the CPU), each after a short warm-up, then replayed together in real time: two texts fill
up and the tokens-vs-seconds chart shows the gap.
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ..decoding import speculative_steps
from .common import FIG_WIDTH, Dashboard, encode


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


class SpeculativeRace(Dashboard):
    """A "race" button: measure both, then replay them together in real time (or slowed down)."""

    def __init__(self, model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 96,
                 num_draft: int = 2, seed: int = 0, interactive: bool | None = None):
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
        self.slowdown = w.Dropdown(options=[("real time", 1), ("2x slower", 2), ("5x slower", 5), ("10x slower", 10)],
                                   value=1, description="replay")
        self.go_button = w.Button(description="race", icon="flag-checkered", button_style="primary")
        self.texts = [w.HTML(), w.HTML()]
        self.status = w.HTML("press race: both runs are measured, then replayed side by side")
        fig = go.Figure()
        for name, color in (("autoregressive", "#de2d26"), ("speculative", "#31a354")):
            fig.add_scatter(name=name, mode="lines", line=dict(color=color, width=3, shape="hv"))
        fig.update_layout(width=FIG_WIDTH, height=300, xaxis_title="seconds", yaxis_title="tokens generated",
                          margin=dict(t=30, l=50, r=20, b=40), legend=dict(orientation="h", y=1.12))
        self.fig = self.new_figure(fig)
        self.go_button.on_click(lambda _: self.handle(self.run))
        self.timelines: tuple[Timeline, Timeline] | None = None
        self.clock = 0.0            # replay time shown, in measured seconds
        self._thread: threading.Thread | None = None
        if self.interactive:
            boxes = [w.VBox([w.HTML(f"<b>{t}</b>"), x], layout=w.Layout(width="50%"))
                     for t, x in zip(("autoregressive", "speculative"), self.texts)]
            self.widget = w.VBox([w.HBox([self.prompt, self.drafter, self.go_button]),
                                  w.HBox([self.k, self.temperature, self.max_new, self.slowdown]),
                                  self.status, w.HBox(boxes), self.fig])

    def run(self) -> None:
        """Measure both generations, then replay them (on a thread when a front end is showing them)."""
        if self._thread is not None and self._thread.is_alive():
            return
        ids = encode(self.tokenizer, self.prompt.value)
        self.status.value = "measuring..."
        self.timelines = race(self.model, ids, self.max_new.value, self.k.value, self.temperature.value,
                              self.drafter.value, seed=self.seed)
        if self.interactive:
            self._thread = threading.Thread(target=self.replay, daemon=True)
            self._thread.start()
        else:
            self.show_at(float("inf"))

    def replay(self) -> None:
        end = max(t.total_s for t in self.timelines)
        start, slow = time.monotonic(), self.slowdown.value
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
            for tr, tl in zip(self.fig.data, self.timelines):
                keep = tl.times <= t
                tr.x = np.concatenate([[0.0], tl.times[keep]])
                tr.y = np.concatenate([[0], tl.counts[keep]])
        for box, tl in zip(self.texts, self.timelines):
            n = tl.tokens_at(t)
            box.value = (f"<div style='font-family:monospace;white-space:pre-wrap'>"
                         f"{html.escape(self.tokenizer.decode(tl.tokens[:n]))}</div><small>{n} tokens</small>")
        ar, spec = self.timelines
        if t >= max(ar.total_s, spec.total_s):
            same = " · identical outputs (greedy is lossless)" if ar.tokens == spec.tokens else ""
            self.status.value = (f"{ar.label} {ar.total_s:.2f} s, {spec.label} {spec.total_s:.2f} s for "
                                 f"{len(spec.tokens)} tokens: {ar.total_s / spec.total_s:.2f}x{same}")
        else:
            self.status.value = f"replaying: {t:.2f} s"


def speculative_race(model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 96,
                     num_draft: int = 2, seed: int = 0, interactive: bool | None = None) -> SpeculativeRace:
    """AR vs speculative generation side by side: press "race" to measure both and replay them in real
    time, with a tokens-vs-seconds chart that shows the wall-clock gap."""
    return SpeculativeRace(model, tokenizer, prompt, max_new_tokens, num_draft, seed, interactive)
