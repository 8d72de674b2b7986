"""Live speculative decoding: watch the drafter propose, the main model verify, tokens being kept.

Data comes from `mtp_lab.decoding.speculative_steps`, one SpeculativeStep per main-model forward.
Plain functions turn events into marked-up tokens, running acceptance statistics (vLLM's metrics, in a
GenerationStats) and the current step's draft table; `SpeculativeDashboard` plays them step by step or
on a timer; `SpeculativeRace` measures plain and speculative decoding and replays both timelines.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from plotly.subplots import make_subplots

from ..decoding import GenerationStats, speculative_steps
from .common import FIG_WIDTH, Dashboard, encode, error_html, escape

KIND_STYLE = {  # how each kind of token is marked in the text
    "prompt": "color:#666",
    "target": "background:#eee",                                          # plain sample (prefill, k = 0)
    "accepted": "background:#c7e9c0",                                     # accepted draft
    "rejected": "background:#fcbba1;text-decoration:line-through",        # first rejected draft (not kept)
    "corrected": "background:#fdd49e;border-bottom:2px solid #e6550d",    # sampled from norm(max(0, p - q))
    "bonus": "background:#c6dbef;border-bottom:2px solid #3182bd",        # all drafts kept: one more from p
}
LEGEND = " ".join(f"<span style='{s};padding:0 3px'>{k}</span>" for k, s in KIND_STYLE.items() if k != "prompt")


def step_segments(step) -> list[tuple[int, str]]:
    """(token, kind) for one SpeculativeStep: accepted drafts, the first rejected draft (shown, not kept),
    then the corrected or bonus token ("target" when nothing was drafted). EOS may cut `emitted` short."""
    n_kept = min(step.n_accepted, len(step.emitted))
    out = [(t, "accepted") for t in step.emitted[:n_kept]]
    if step.n_accepted < len(step.draft_tokens):
        out.append((step.draft_tokens[step.n_accepted], "rejected"))
    if len(step.emitted) > n_kept:
        kind = "target" if not step.draft_tokens else ("bonus" if step.is_bonus else "corrected")
        out.append((step.emitted[-1], kind))
    return out


def add_step(stats: GenerationStats, step) -> None:
    """Fold one event into running stats: GenerationStats.record (the engine's own counting) plus its wall time."""
    stats.record(step)
    stats.wall_time_s += step.step_time_s


def draft_table(step, tokenizer) -> list[dict]:
    """One row per draft d_j of a step: its text, q_j(d_j), p_j(d_j), the draw u_j and the verdict
    (accept iff u_j < p_j(d_j) / q_j(d_j)); drafts after the first rejection are not examined."""
    rows = []
    for j, d in enumerate(step.draft_tokens):
        q, p = float(step.draft_probs[j, d]), float(step.target_probs[j, d])
        verdict = ("accepted" if step.accepted[j] else
                   "rejected" if j == step.n_accepted else "not examined")
        rows.append({"j": j + 1, "token": tokenizer.decode([d]), "q": q, "p": p,
                     "ratio": p / q if q > 0 else float("inf"), "u": float(step.uniforms[j]), "verdict": verdict})
    return rows


def tokens_html(segments: list[tuple[str, str]]) -> str:
    """Text with every token marked by its kind: a list of (token text, kind)."""
    spans = "".join(f"<span style='{KIND_STYLE[kind]}' title='{kind}'>{escape(text)}</span>" for text, kind in segments)
    return f"<div style='font-family:monospace;line-height:1.8;white-space:normal'>{spans}</div>"


@dataclass
class Playback:
    """Everything the dashboard shows about the generation so far."""
    segments: list[tuple[str, str]] = field(default_factory=list)     # (text, kind), prompt included
    stats: GenerationStats = field(default_factory=GenerationStats)
    tau: list[float] = field(default_factory=list)                    # running tau after each drafting step
    last_rows: list[dict] = field(default_factory=list)
    done: bool = False
    stop_reason: str = ""
    error: str = ""                                                   # why the controls were rejected


class SpeculativeDashboard(Dashboard):
    """Controls: prompt, k, temperature, drafter, FP8 drafter, max tokens, speed, play/pause/step/reset."""

    def __init__(self, model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 64,
                 seed: int = 0, interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        cs = dict(continuous_update=False, style={"description_width": "initial"})
        self.prompt = w.Textarea(value=prompt, description="prompt", continuous_update=False,
                                 layout=w.Layout(width="50%", height="4em"))
        self.k = w.IntSlider(value=max(1, len(model.mtp)), min=1, max=8, description="k drafts", **cs)
        self.temperature = w.FloatSlider(value=0.0, min=0.0, max=1.5, step=0.05, description="temperature", **cs)
        self.drafter = w.Dropdown(options=[("MTP modules", "mtp"), ("n-gram lookup", "ngram")], value="mtp",
                                  description="drafter")
        self.fp8 = w.Checkbox(value=False, description="FP8 drafter")
        self.max_new = w.IntSlider(value=max_new_tokens, min=8, max=model.config.max_seq_len,
                                   description="max tokens", **cs)
        self.speed = w.FloatLogSlider(value=4.0, base=10, min=-0.5, max=1.5, step=0.05, description="steps/s",
                                      readout_format=".2g", style={"description_width": "initial"})
        self.play_button = w.Button(description="play", icon="play", button_style="success")
        self.pause_button = w.Button(description="pause", icon="pause")
        self.step_button = w.Button(description="step", icon="step-forward")
        self.reset_button = w.Button(description="reset", icon="refresh")
        self.text = w.HTML()
        self.table = w.HTML()
        self.status = w.HTML()
        self.fig = self.new_figure(self._layout())
        for control in (self.prompt, self.k, self.temperature, self.drafter, self.fp8, self.max_new):
            control.observe(lambda ch: self.handle(self.reset), names="value")
        self.play_button.on_click(lambda _: self.play())
        self.pause_button.on_click(lambda _: self.pause())
        self.step_button.on_click(lambda _: self.handle(self.step))
        self.reset_button.on_click(lambda _: self.handle(self.reset))
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if self.interactive:
            self.widget = w.VBox([
                w.HBox([self.prompt, w.VBox([self.drafter, self.fp8])]),
                w.HBox([self.k, self.temperature, self.max_new]),
                w.HBox([self.play_button, self.pause_button, self.step_button, self.reset_button, self.speed]),
                self.status, w.HTML(f"<small>{LEGEND}</small>"), self.text, self.table, self.fig])
        self.reset()
        self.redraw.request()

    def _layout(self):
        fig = make_subplots(rows=1, cols=3, subplot_titles=("This step: q(d_j) vs p(d_j)",
                                                            "Running tau (tokens per forward)",
                                                            "Acceptance per draft position"))
        fig.add_bar(name="q_j(d_j) drafter", row=1, col=1, marker_color="#9e9ac8")
        fig.add_bar(name="p_j(d_j) target", row=1, col=1, marker_color="#3182bd")
        # positions 1, 2, ... come from x0/dx: only y changes as tokens arrive
        fig.add_scatter(name="tau = 1 + accepted/steps", mode="lines+markers", x0=1, dx=1, row=1, col=2)
        fig.add_bar(name="accepted at j / drafted at j", x0=1, dx=1, row=1, col=3, marker_color="#74c476")
        fig.update_yaxes(range=[0, 1.05], row=1, col=1)
        fig.update_yaxes(range=[0, 1.05], row=1, col=3)
        fig.update_xaxes(title_text="drafting step", row=1, col=2)
        fig.update_xaxes(title_text="draft position j", dtick=1, row=1, col=3)
        fig.update_layout(width=FIG_WIDTH, height=340, barmode="group", margin=dict(t=50, l=40, r=20, b=40),
                          legend=dict(orientation="h", y=-0.2, x=0, font=dict(size=10)))
        return fig

    # -- engine ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Stop playing and start a new generation with the current controls (validated at once). Rejected
        controls leave no generation to play, only their error, until a control changes again."""
        self.pause()
        try:
            ids = encode(self.tokenizer, self.prompt.value)
            steps = speculative_steps(self.model, ids, self.max_new.value, num_draft=self.k.value,
                                      temperature=self.temperature.value, seed=self.seed,
                                      drafter=self.drafter.value, fp8_drafter=self.fp8.value)
        except ValueError as e:
            with self._lock:
                self.state = Playback(done=True, error=str(e))
            raise
        with self._lock:
            self.steps, self.state = steps, Playback(segments=[(self.tokenizer.decode(ids), "prompt")])
        self.status.value = "ready: press play or step"

    def step(self) -> bool:
        """Run one main-model forward; returns False when the generation has finished."""
        with self._lock:
            st = self.state
            if st.done:
                return False
            try:
                event = next(self.steps)
            except StopIteration as finished:
                st.done, st.stop_reason = True, finished.value.stats.stop_reason
                return False
            st.segments += [(self.tokenizer.decode([t]), kind) for t, kind in step_segments(event)]
            add_step(st.stats, event)
            if event.draft_tokens:
                st.tau.append(st.stats.mean_acceptance_length)
                st.last_rows = draft_table(event, self.tokenizer)
            if event.stop_reason:
                st.done, st.stop_reason = True, event.stop_reason
            return not st.done

    def play(self) -> None:
        """Step on a background thread at `speed` steps a second until done or paused."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                more = self.step()
                self.redraw.request()
                if not more:
                    break
                self._stop.wait(max(0.0, 1.0 / self.speed.value - (time.monotonic() - t0)))  # pause wakes it
        except ValueError as e:
            self.status.value = error_html(str(e))
        finally:
            self.redraw.flush()

    # -- drawing -----------------------------------------------------------------------------------

    def draw(self) -> None:
        with self._lock:
            st = self.state
            segments, rows, tau = list(st.segments), list(st.last_rows), list(st.tau)
            s = st.stats
            per_pos = s.per_position
        with self.fig.batch_update():
            labels = [f"{r['j']}: {r['token']!r}" for r in rows]
            self.fig.data[0].x, self.fig.data[0].y = labels, [r["q"] for r in rows]
            self.fig.data[1].x, self.fig.data[1].y = labels, [r["p"] for r in rows]
            self.fig.data[2].y = tau
            self.fig.data[3].y = per_pos
        self.text.value = tokens_html(segments)
        self.table.value = rows_html(rows)
        if st.error:
            self.status.value = error_html(st.error)
            return
        done = f" · finished ({st.stop_reason})" if st.done else ""
        self.status.value = (f"{s.new_tokens} tokens in {s.main_forwards} main forwards "
                             f"({s.tokens_per_main_forward:.2f} per forward) · drafted {s.drafted}, accepted "
                             f"{s.accepted} (rate {s.acceptance_rate:.2f}) · tau {s.mean_acceptance_length:.2f}{done}")


def rows_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = "<tr><th>j</th><th>draft</th><th>q(d)</th><th>p(d)</th><th>p/q</th><th>u</th><th></th></tr>"
    body = "".join(f"<tr><td>{r['j']}</td><td><code>{escape(r['token'])}</code></td><td>{r['q']:.3f}</td>"
                   f"<td>{r['p']:.3f}</td><td>{r['ratio']:.3f}</td><td>{r['u']:.3f}</td><td>{r['verdict']}</td></tr>"
                   for r in rows)
    return f"<table style='font-size:12px'>{head}{body}</table><small>accept d_j iff u_j &lt; p/q</small>"


def speculative_dashboard(model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 64,
                          seed: int = 0, interactive: bool | None = None) -> SpeculativeDashboard:
    """Live speculative decoding: the text with each token marked (accepted draft, rejected draft,
    corrected, bonus), the current step's drafts with q and p, running tau and per-position acceptance.
    Controls: prompt, k, temperature, drafter (MTP or n-gram), FP8 drafter, play, pause, step, speed."""
    return SpeculativeDashboard(model, tokenizer, prompt, max_new_tokens, seed, interactive)
