"""Training monitor: live main and per-depth loss curves, validation points, lambda and learning rate.

`TrainingMonitor` is a `mtp_lab.train.Callback`: pass it to the Trainer and display it BEFORE calling
fit() (its own cell, or `display(monitor)`), since a cell's last value only shows when the cell ends:

    monitor = training_monitor()
    display(monitor)
    Trainer(model_cfg, train_cfg, corpus, callbacks=[monitor]).fit()

Every step appends to plain lists; redraws are throttled to MAX_REDRAWS_PER_SECOND, and the last
frame is drawn when training ends.
"""

from __future__ import annotations

import threading

import plotly.graph_objects as go

from ..train import Callback, StepRecord
from . import theme
from .common import Dashboard, html_widget, plural


class TrainingMonitor(Dashboard, Callback):
    """Loss curves (total, main, L^k per depth; validation as markers) and lambda / learning rate."""

    def __init__(self, interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.status = html_widget("waiting for the trainer")
        fig = theme.subplots(rows=1, cols=2, column_widths=[0.65, 0.35], specs=[[{}, {"secondary_y": True}]],
                             subplot_titles=("Loss (nats per token)", "MTP weight lambda and learning rate"))
        fig.update_xaxes(title_text="step")
        fig.update_yaxes(title_text="loss", row=1, col=1)
        fig.update_yaxes(title_text="lambda", rangemode="tozero", row=1, col=2)
        fig.update_yaxes(title_text="learning rate", secondary_y=True, row=1, col=2)
        fig.update_layout(height=theme.height(440), margin=theme.margin(t=50, l=60, r=60, b=40),
                          legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
        self.fig = self.new_figure(fig)
        self._lock = threading.Lock()
        self.clear()
        if self.interactive:
            self.widget = w.VBox([self.status, self.fig])

    def clear(self) -> None:
        """Forget every point (a new run)."""
        with self._lock:
            self.records: list[StepRecord] = []
            self.evals: list[tuple[int, dict]] = []
            self.total_steps = 0
        self.fig.data = []
        self.depth = 0

    def _ensure_traces(self, depth: int) -> None:
        """Create the traces once the number of MTP depths is known (from the first record)."""
        if self.fig.data and depth == self.depth:
            return
        self.depth = depth
        self.fig.data = []
        add = self.fig.add_scatter
        add(name="total (backprop)", mode="lines", line=theme.line("muted"), row=1, col=1)
        add(name="main L_main", mode="lines", line=theme.line("main"), row=1, col=1)
        for k in range(1, depth + 1):
            add(name=f"depth {k} L^{k}", mode="lines", line=theme.line(f"depth {k}"), row=1, col=1)
        for name, color in [("val main", "main")] + [(f"val depth {k}", f"depth {k}") for k in range(1, depth + 1)]:
            add(name=name, mode="markers", marker=theme.marker(color, 10, symbol="diamond"), row=1, col=1)
        add(name="lambda", mode="lines", line=theme.line("lambda", shape="hv"), row=1, col=2)
        add(name="learning rate", mode="lines", line=theme.line("learning rate", dash="dot"), row=1, col=2,
            secondary_y=True)

    # -- Callback ----------------------------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        with self._lock:
            self.total_steps = trainer.cfg.steps
        self.status.value = f"training to step {trainer.cfg.steps}"

    def on_step(self, trainer, record: StepRecord) -> None:
        with self._lock:
            self.records.append(record)
        self.redraw.request()

    def on_eval(self, trainer, step: int, result: dict) -> None:
        with self._lock:
            self.evals.append((step, result))
        self.redraw.request()

    def on_train_end(self, trainer) -> None:
        self.redraw.request()
        self.flush()

    # -- drawing -----------------------------------------------------------------------------------

    def series(self) -> dict[str, tuple[list, list]]:
        """Figure data from the records: trace name -> (x, y). Depth L^k as the objective reports it."""
        with self._lock:
            recs, evals = list(self.records), list(self.evals)
        steps = [r.step for r in recs]
        depth = len(recs[0].depth) if recs else 0
        out = {"total (backprop)": (steps, [r.loss for r in recs]), "main L_main": (steps, [r.main for r in recs])}
        for k in range(1, depth + 1):
            out[f"depth {k} L^{k}"] = (steps, [r.depth[k - 1] for r in recs])
        ev_steps = [s for s, _ in evals]
        out["val main"] = (ev_steps, [e["main"] for _, e in evals])
        for k in range(1, depth + 1):
            out[f"val depth {k}"] = (ev_steps, [e["depth"][k - 1] for _, e in evals])
        out["lambda"] = (steps, [r.lam for r in recs])
        out["learning rate"] = (steps, [r.lr for r in recs])
        return out

    def draw(self) -> None:
        with self._lock:
            last, total = (self.records[-1] if self.records else None), self.total_steps
        if last is None:
            return
        self._ensure_traces(len(last.depth))
        data = self.series()
        with self.fig.batch_update():
            for tr in self.fig.data:
                tr.x, tr.y = data[tr.name]
        depth = " ".join(f"L^{k} {v:.3f}" for k, v in enumerate(last.depth, start=1))
        speed = f" ({last.tokens / last.elapsed:,.0f} tokens/s)" if last.elapsed > 0 else ""
        self.status.value = (f"step {last.step}/{total or '?'} · loss {last.loss:.3f} · main {last.main:.3f} · "
                             f"{depth} · lambda {last.lam:g} · lr {last.lr:.2e} · {plural(last.tokens, 'token')} in "
                             f"{last.elapsed:.0f} s{speed}")

    def replay(self, records: list[StepRecord], evals: list[tuple[int, dict]] = ()) -> None:
        """Show a finished run (e.g. a `mtp_lab.train.History`'s steps and evals) at once."""
        self.clear()
        with self._lock:
            self.records, self.evals = list(records), list(evals)
            self.total_steps = records[-1].step if records else 0
        self.redraw.request()
        self.flush()


def training_monitor(interactive: bool | None = None) -> TrainingMonitor:
    """A live training plot to pass to `Trainer(..., callbacks=[monitor])`; display it before fit()."""
    return TrainingMonitor(interactive)


def loss_curves(runs: dict, height: int = 360) -> go.Figure:
    """Training loss per step of several runs ({label: mtp_lab.train.History}) in one static figure: each
    run's main loss in the main colour and its depth-k losses in depth k's colour (as in the training
    monitor), one dash style per run."""
    dashes = ("solid", "dash", "dot", "dashdot")
    fig = go.Figure()
    for i, (label, hist) in enumerate(runs.items()):
        steps, dash = [r.step for r in hist.steps], dashes[i % len(dashes)]
        fig.add_scatter(x=steps, y=[r.main for r in hist.steps], name=f"main, {label}", mode="lines",
                        line=theme.line("main", dash=dash))
        depth = len(hist.steps[0].depth) if hist.steps else 0
        for k in range(1, depth + 1):
            fig.add_scatter(x=steps, y=[r.depth[k - 1] for r in hist.steps], name=f"depth {k}, {label}",
                            mode="lines", line=theme.line(f"depth {k}", dash=dash))
    fig.update_layout(xaxis_title="step", yaxis_title="training loss (nats per token)",
                      margin=theme.margin(t=30, l=60), legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return theme.apply(fig, height)
