"""Live speculative decoding: watch the drafter propose, the main model verify, tokens being kept.

Data comes from `mtp_lab.decoding.speculative_steps`, one SpeculativeStep per main-model forward.
Plain functions turn events into marked-up tokens, running acceptance statistics (vLLM's metrics, in a
GenerationStats), the current step's draft table and, for greedy steps (where p and q are one-hot), the
target's top candidates; `SpeculativeDashboard` plays them step by step or on a timer.
(The race of plain against speculative decoding on the wall clock is `mtp_lab.viz.race`.)
"""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field

import torch

from ..decoding import GenerationStats, speculative_steps
from . import theme
from .common import Dashboard, encode, error_html, escape, html_widget, plural, update_alone
from .palette import COLORS, tint

KIND_STYLE = {  # how each kind of token is marked in the text
    "prompt": f"color:{COLORS['text_muted']}",
    "target": f"background:{tint('plain', 0.8)}",                                     # plain sample (prefill, k = 0)
    "accepted": f"background:{tint('accepted')}",                                     # accepted draft
    "rejected": f"background:{tint('rejected')};text-decoration:line-through",        # first rejected (not kept)
    "corrected": f"background:{tint('corrected', 0.35)};border-bottom:2px solid {COLORS['corrected']}",  # p - q
    "bonus": f"background:{tint('bonus', 0.35)};border-bottom:2px solid {COLORS['bonus']}",  # all kept: one from p
}
DRAFTED = ("accepted", "rejected", "corrected", "bonus")   # kinds that mark a step's outcome
LEGEND = " ".join(f"<span style='{s};padding:0 3px'>{k}</span>" for k, s in KIND_STYLE.items() if k != "prompt")
TOP_N = 5


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


def target_top(step, tokenizer, n: int = TOP_N) -> dict:
    """For a greedy step (p and q one-hot, so q/p read 1 or 0): the target's n most likely tokens at the draft
    that decided the step (the first rejected one, else the last), by softmax of its logits at temperature 1,
    with the drafted token marked (appended with its rank when it is not among the n)."""
    j = min(step.n_accepted, len(step.draft_tokens) - 1)
    p = torch.softmax(step.target_logits[j].float(), -1)
    d = step.draft_tokens[j]
    ids = p.topk(min(n, p.numel())).indices.tolist()
    rank = int((p > p[d]).sum()) + 1
    labels = [f"{i + 1}. {tokenizer.decode([t])!r}" for i, t in enumerate(ids)]
    if d not in ids:
        ids.append(d)
        labels.append(f"{rank}. {tokenizer.decode([d])!r}")
    return {"j": j + 1, "draft": d, "rank": rank, "accepted": step.accepted[j], "labels": labels,
            "probs": [float(p[t]) for t in ids], "is_draft": [t == d for t in ids]}


def token_html(text: str, kind: str) -> str:
    """One token as code: kept whitespace stays real (line breaks, indentation); a kept drafted newline also
    shows a faint "↵" so that its mark is visible; a rejected draft is not part of the text, so its newline is
    only the "↵" sign."""
    if kind == "rejected":
        body = html.escape(text).replace("\n", "\u21b5")
    elif kind in DRAFTED:
        body = html.escape(text).replace("\n", "<span style='opacity:0.45'>\u21b5</span>\n")
    else:
        body = html.escape(text)
    return f"<span style='{KIND_STYLE[kind]}' title='{kind}'>{body or '&#8203;'}</span>"


def tokens_html(segments: list[tuple[str, str]]) -> str:
    """The text as code (monospace, real line breaks, wrapped) with every token marked by its kind:
    a list of (token text, kind)."""
    spans = "".join(token_html(text, kind) for text, kind in segments)
    return (f"<div style='font-family:monospace;white-space:pre-wrap;word-break:break-word;line-height:1.7;"
            f"{theme.css_font()}'>{spans}</div>")


@dataclass
class Playback:
    """Everything the dashboard shows about the generation so far."""
    segments: list[tuple[str, str]] = field(default_factory=list)     # (text, kind), prompt included
    stats: GenerationStats = field(default_factory=GenerationStats)
    tau: list[float] = field(default_factory=list)                    # running tau after each drafting step
    last_rows: list[dict] = field(default_factory=list)
    top: dict | None = None                                           # greedy: target_top of the last draft
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
        self.text = html_widget()
        self.table = html_widget()
        self.status = html_widget()
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
                self.status, html_widget(LEGEND), self.text, self.table, self.fig])
        self.reset()
        self.redraw.request()

    PANEL_TITLE = "This step: q(d_j) vs p(d_j)"

    def _layout(self):
        fig = theme.subplots(rows=1, cols=3, subplot_titles=(self.PANEL_TITLE, "Running tau (tokens per forward)",
                                                             "Acceptance per draft position"))
        fig.add_bar(name="q_j(d_j) drafter", row=1, col=1, marker_color=COLORS["draft"])
        fig.add_bar(name="p_j(d_j) target", row=1, col=1, marker_color=COLORS["target"])
        # positions 1, 2, ... come from x0/dx: only y changes as tokens arrive
        fig.add_scatter(name="tau = 1 + accepted/steps", mode="lines+markers", x0=1, dx=1, row=1, col=2,
                        line=theme.line("accepted"), marker=theme.marker("accepted"))
        fig.add_bar(name="accepted at j / drafted at j", x0=1, dx=1, row=1, col=3, marker_color=COLORS["accepted"])
        fig.add_bar(name=f"greedy: target p (T = 1) of its top {TOP_N}, drafted token marked", row=1, col=1,
                    texttemplate="%{y:.2f}", textposition="outside", marker_color=COLORS["target"])
        fig.update_yaxes(range=[0, 1.15], title_text="probability", row=1, col=1)
        fig.update_yaxes(rangemode="tozero", row=1, col=2)
        fig.update_yaxes(range=[0, 1.05], title_text="acceptance rate", row=1, col=3)
        fig.update_xaxes(title_text="drafting step", row=1, col=2)
        fig.update_xaxes(title_text="draft position j", dtick=1, row=1, col=3)
        fig.update_layout(height=theme.height(380), barmode="group", margin=theme.margin(t=50, l=50),
                          legend=dict(orientation="h", yanchor="top", y=-0.25, x=0))
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
                st.top = target_top(event, self.tokenizer) if self.temperature.value == 0 else None
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
            segments, rows, tau, top = list(st.segments), list(st.last_rows), list(st.tau), st.top
            s = st.stats
            per_pos = s.per_position
        labels = [f"{r['j']}: {r['token']!r}" for r in rows]
        sampled = top is None
        with self.fig.batch_update():
            data = self.fig.data
            data[0].x, data[0].y = (labels, [r["q"] for r in rows]) if sampled else ([], [])
            data[1].x, data[1].y = (labels, [r["p"] for r in rows]) if sampled else ([], [])
            data[2].y = tau
            data[3].y = per_pos
            data[4].x, data[4].y = (top["labels"], top["probs"]) if top else ([], [])
            self.fig.layout.annotations[0].text = self.PANEL_TITLE if sampled else (
                f"Greedy: the target's top {TOP_N} at draft j = {top['j']}")
            # q and p are probabilities of one token (up to 1); the target's top candidates may all be small
            self.fig.layout.yaxis.range = [0, 1.15 if sampled else 1.25 * max(top["probs"])]
        if top:
            update_alone(self.fig, 4, marker_color=[COLORS["draft" if d else "target"] for d in top["is_draft"]])
        self.text.value = tokens_html(segments)
        self.table.value = rows_html(rows, top)
        if st.error:
            self.status.value = error_html(st.error)
        elif s.main_forwards == 0:
            sampling = "greedy" if self.temperature.value == 0 else f"temperature {self.temperature.value:g}"
            self.status.value = (f"no step yet: press <b>step</b> (one main-model forward) or <b>play</b> · "
                                 f"k = {self.k.value} drafts, {sampling}, drafter {self.drafter.label}")
        else:
            done = f" · finished ({st.stop_reason})" if st.done else ""
            drafts = (f"drafted {s.drafted}, accepted {s.accepted} (rate {s.acceptance_rate:.2f}) · "
                      f"tau {s.mean_acceptance_length:.2f}" if s.drafted else
                      "nothing drafted yet (the first forward is the prefill)")
            self.status.value = (f"{plural(s.new_tokens, 'token')} in {plural(s.main_forwards, 'main forward')} "
                                 f"({s.tokens_per_main_forward:.2f} per forward) · {drafts}{done}")


def rows_html(rows: list[dict], top: dict | None = None) -> str:
    """The current step's drafts as a table; `top` (greedy) names the rule that decided them."""
    if not rows:
        return ""
    head = "<tr><th>j</th><th>draft</th><th>q(d)</th><th>p(d)</th><th>p/q</th><th>u</th><th></th></tr>"
    code = "<code style='font-size:inherit'>"    # JupyterLab's code font size would not follow presenter()
    body = "".join(f"<tr><td>{r['j']}</td><td>{code}{escape(r['token'])}</code></td><td>{r['q']:.3f}</td>"
                   f"<td>{r['p']:.3f}</td><td>{r['ratio']:.3f}</td><td>{r['u']:.3f}</td><td>{r['verdict']}</td></tr>"
                   for r in rows)
    rule = ("greedy: p and q are one-hot, so d_j is kept iff it is the target's most likely token "
            f"(the drafted token at j = {top['j']} ranks {top['rank']} under the target)" if top else
            "accept d_j iff u_j &lt; p/q")
    return f"<table style='{theme.css_font()}'>{head}{body}</table><small>{rule}</small>"


def speculative_dashboard(model, tokenizer, prompt: str = "def main():\n", max_new_tokens: int = 64,
                          seed: int = 0, interactive: bool | None = None) -> SpeculativeDashboard:
    """Live speculative decoding: the text with each token marked (accepted draft, rejected draft,
    corrected, bonus), the current step's drafts with q and p, running tau and per-position acceptance.
    Controls: prompt, k, temperature, drafter (MTP or n-gram), FP8 drafter, play, pause, step, speed."""
    return SpeculativeDashboard(model, tokenizer, prompt, max_new_tokens, seed, interactive)
