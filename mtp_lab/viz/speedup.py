"""The speed-up lab: how acceptance alpha, the number of drafts k and the draft cost c set the wall-clock gain.

    speedup = (1 + alpha + ... + alpha^k) / (k c + v + o)        (mtp_lab.proportion.predicted_speedup)

Sliders set alpha, k, c and v (the verify forward's cost over k+1 tokens, in AR-token units); the left chart is
the predicted speed-up against alpha, the right one against c. Measured points (bench rows of this model and of a
shallow one, placed at their effective alpha) and the production cases are marked; choosing a preset moves the
sliders to that case, so its curve passes through its point.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from ..proportion import break_even_alpha, expected_tokens, predicted_speedup
from . import theme
from .common import Dashboard, html_widget
from .palette import COLORS

# Published cases (mtp-facts, sections 1 and 6): no draft cost is published, the block count gives c's order.
PRODUCTION = [
    {"label": "DeepSeek-V3 (report): 1 MTP block against 61, k = 1", "alpha": 0.875, "alpha_error": 0.025,
     "k": 1, "c": 1 / 62, "verify": 1.0, "speedup": 1.8, "symbol": "star"},
    {"label": "Qwen3.5-0.8B with MTP in vLLM (an issue report): 96.6% accepted, 342 -> 128 tokens/s",
     "alpha": 0.966, "alpha_error": 0.0, "k": None, "c": None, "verify": None, "speedup": 128 / 342,
     "symbol": "hexagram"},
]


class SpeedupLab(Dashboard):
    """Sliders for alpha, k, c, v; predicted speed-up vs alpha and vs c; measured and production points."""

    def __init__(self, points: list[dict], interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        if not points:
            raise ValueError("speedup_lab needs at least one measured point (mtp_lab.proportion.bench_point rows "
                             "with a 'label')")
        self.points = points
        first = points[0]
        cs = dict(continuous_update=True, style={"description_width": "initial"}, layout=w.Layout(width="45%"))
        self.alpha = w.FloatSlider(value=round(first["alpha"], 2), min=0.0, max=1.0, step=0.01,
                                   description="acceptance alpha", **cs)
        self.k = w.IntSlider(value=first["k"], min=1, max=8, description="drafts k", **cs)
        self.c = w.FloatSlider(value=round(first["c"], 3), min=0.0, max=1.0, step=0.005,
                               description="draft cost c", readout_format=".3f", **cs)
        self.v = w.FloatSlider(value=round(first["verify"], 2), min=1.0, max=2.5, step=0.05,
                               description="verify cost v", **cs)
        presets = [(p["label"], i) for i, p in enumerate(points)] + [(PRODUCTION[0]["label"], "deepseek")]
        self.preset = w.Dropdown(options=presets, value=0, description="set sliders to",
                                 style={"description_width": "initial"}, layout=w.Layout(width="90%"))
        self.status = html_widget()
        self.fig_alpha = self.new_figure(self._alpha_figure())
        self.fig_c = self.new_figure(self._c_figure())
        for s in (self.alpha, self.k, self.c, self.v):
            s.observe(lambda _: self.handle(self.compute), names="value")
        self.preset.observe(lambda change: self.apply_preset(change["new"]), names="value")
        if self.interactive:                   # static mode: the figures display as HTML (Dashboard.to_html)
            self.widget = w.VBox([self.preset, w.HBox([self.alpha, self.k]), w.HBox([self.c, self.v]), self.status,
                                  self.fig_alpha, self.fig_c])
        self.compute()
        self.draw()

    # ------------------------------------------------------------------ state
    def settings(self) -> tuple[float, int, float, float]:
        return self.alpha.value, self.k.value, self.c.value, self.v.value

    def apply_preset(self, which) -> None:
        p = PRODUCTION[0] if which == "deepseek" else self.points[which]
        self.alpha.value, self.k.value = round(p["alpha"], 2), p["k"]      # each change redraws (throttled)
        self.c.value, self.v.value = round(p["c"], 3), round(p["verify"], 2)

    def compute(self) -> None:
        alpha, k, c, v = self.settings()
        self.prediction = predicted_speedup(alpha, k, c, v)
        self.break_even = break_even_alpha(k, c, v)
        self.ceiling = predicted_speedup(1.0, k, c, v)
        be = "never, even with every draft accepted" if np.isnan(self.break_even) else f"{self.break_even:.2f}"
        self.status.value = (
            f"<b>predicted speed-up {self.prediction:.2f}x</b> at alpha {alpha:.2f}, k {k}, c {c:.3f}, v {v:.2f}: "
            f"{expected_tokens(alpha, k):.2f} tokens per step for {k * c + v:.2f} AR-token times. "
            f"Break-even alpha (speed-up 1): {html.escape(be)}; with every draft accepted: {self.ceiling:.2f}x.")

    # ------------------------------------------------------------------ figures
    def _points_traces(self, x_of) -> list[go.Scatter]:
        traces = []
        for i, p in enumerate(self.points):
            x = x_of(p)
            traces.append(go.Scatter(x=[x], y=[p["speedup"]], mode="markers+text", name=p["label"],
                                     text=[f"k={p['k']}"], textposition="top center",
                                     marker=theme.marker("measured" if i == 0 else "measured other", 12)))
        return traces

    def _alpha_figure(self) -> go.Figure:
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="predicted (sliders)",
                                 line=theme.line("reference", 3)))
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="slider alpha", showlegend=False,
                                 marker=theme.marker("reference", 11, symbol="diamond")))
        for t in self._points_traces(lambda p: p["alpha"]):
            fig.add_trace(t)
        for p in PRODUCTION:
            error = dict(type="constant", value=p["alpha_error"], visible=p["alpha_error"] > 0)
            fig.add_trace(go.Scatter(x=[p["alpha"]], y=[p["speedup"]], mode="markers", name=p["label"], error_x=error,
                                     marker=theme.marker("muted", 12, symbol=p["symbol"])))
        fig.add_hline(y=1.0, line_dash="dot", annotation_text="as fast as plain decoding",
                      annotation_position="bottom right")
        # one legend entry per row under the x axis title (theme.panel_legend): at any width it never covers it
        rows = 1 + len(self.points) + len(PRODUCTION)
        below = theme.AXIS_BELOW + theme.LEGEND_ROW * rows + 8
        fig.update_layout(height=theme.height(340) + theme.px(below), showlegend=True,
                          title="speed-up against acceptance (k, c, v from the sliders)",
                          xaxis=dict(title="acceptance alpha (measured points: effective alpha from tau)",
                                     range=[0, 1.02], domain=[0, 1]),
                          yaxis=dict(title="wall-clock speed-up over plain decoding", rangemode="tozero",
                                     domain=[0, 1]),
                          margin=dict(t=theme.px(50), l=theme.px(60), r=theme.px(20), b=theme.px(below)))
        theme.panel_legend(fig, "legend", "xaxis", "yaxis")
        return fig

    def _c_figure(self) -> go.Figure:
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="predicted (sliders)",
                                 line=theme.line("reference", 3), showlegend=False))
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="slider c", showlegend=False,
                                 marker=theme.marker("reference", 11, symbol="diamond")))
        for t in self._points_traces(lambda p: p["c"]):
            t.showlegend = False
            fig.add_trace(t)
        ds = PRODUCTION[0]
        fig.add_vline(x=ds["c"], line_dash="dash", line_color=COLORS["muted"],
                      annotation_text="DeepSeek-V3: 1 block in 62", annotation_position="top right")
        fig.add_hline(y=1.0, line_dash="dot")
        fig.update_layout(height=theme.height(340),
                          title="speed-up against the draft cost c (alpha, k, v from the sliders)",
                          xaxis=dict(title="c = one draft's time / one AR token's time", range=[0, 0.6]),
                          yaxis=dict(title="speed-up", rangemode="tozero"), margin=theme.margin(t=50, l=60))
        return fig

    def draw(self) -> None:
        alpha, k, c, v = self.settings()
        alphas = np.linspace(0, 1, 101)
        cs = np.linspace(0, 0.6, 121)
        with self.fig_alpha.batch_update():
            self.fig_alpha.data[0].x, self.fig_alpha.data[0].y = alphas, [predicted_speedup(a, k, c, v) for a in alphas]
            self.fig_alpha.data[1].x, self.fig_alpha.data[1].y = [alpha], [self.prediction]
        with self.fig_c.batch_update():
            self.fig_c.data[0].x, self.fig_c.data[0].y = cs, [predicted_speedup(alpha, k, x, v) for x in cs]
            self.fig_c.data[1].x, self.fig_c.data[1].y = [c], [self.prediction]


def speedup_lab(points: list[dict], interactive: bool | None = None) -> SpeedupLab:
    """The speed-up lab. points: dicts with label, alpha, k, c, verify, speedup (mtp_lab.proportion.bench_point)."""
    return SpeedupLab(points, interactive)
