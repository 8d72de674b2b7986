"""RMSNorm statistics: what enters and leaves every RMSNorm of the main model and the MTP modules.

RMSNorm(x) = g * x / sqrt(mean_j(x_j^2) + eps). Forward hooks record each norm's input and output for
a prompt (no change to the model code); plain functions turn them into per-site, per-token and
per-channel statistics; `RMSNormDashboard` draws them and recomputes when the prompt, the norm site
or eps changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..layers import RMSNorm
from . import theme
from .common import Dashboard, escape, html_widget, plural, prompt_tokens, token_texts
from .palette import COLORS, tint


@dataclass
class NormCapture:
    name: str            # module path, e.g. "layers.0.attn_norm", "mtp.0.enorm"
    label: str           # short label for plots, e.g. "L0 attn_norm", "MTP1 enorm"
    x: torch.Tensor      # (N, C) float32 vectors entering the norm (batch row 0; N = T, or T-k in MTP module k)
    y: torch.Tensor      # (N, C) float32 vectors leaving it
    gain: torch.Tensor   # (C,) the learned gain g
    eps: float           # the eps the capture ran with


def site_label(name: str) -> str:
    """'layers.0.attn_norm' -> 'L0 attn_norm', 'norm' -> 'final norm', 'mtp.1.block.ffn_norm' -> 'MTP2 ffn_norm'."""
    parts = name.split(".")
    if parts[0] == "layers":
        return f"L{parts[1]} {parts[-1]}"
    if parts[0] == "mtp":
        what = "head norm" if parts[2] == "shared_head" else parts[-1]
        return f"MTP{int(parts[1]) + 1} {what}"
    return "final norm" if name == "norm" else name


def norm_sites(model) -> list[tuple[str, RMSNorm]]:
    """Every RMSNorm in forward order: main blocks, final norm, then per MTP module enorm, hnorm,
    its block's two norms and shared_head.norm."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RMSNorm)]


@torch.no_grad()
def capture_norms(model, tokens: torch.Tensor, eps: float | None = None) -> list[NormCapture]:
    """Run the full forward (main model and every MTP module) on `tokens` (1, T) and record each
    RMSNorm's input and output. `eps`, when given, replaces every norm's eps for this run only."""
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    sites = norm_sites(model)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0][0].detach().float().cpu(), output[0].detach().float().cpu())
        return hook

    old_eps = [m.eps for _, m in sites]
    handles, was_training = [], model.training
    try:
        for name, m in sites:
            if eps is not None:
                m.eps = float(eps)
            handles.append(m.register_forward_hook(recorder(name)))
        model.eval()
        model(tokens)
        captures = []
        for name, m in sites:
            C = m.weight.shape[0]
            x, y = seen.get(name, (torch.zeros(0, C), torch.zeros(0, C)))  # depth k sees T-k positions
            captures.append(NormCapture(name, site_label(name), x, y, m.weight.detach().float().cpu(), m.eps))
        return captures
    finally:
        for h in handles:
            h.remove()
        for (_, m), e in zip(sites, old_eps, strict=True):
            m.eps = e
        model.train(was_training)


def vector_stats(v: torch.Tensor) -> dict[str, np.ndarray]:
    """Per vector (row) of v (N, C): rms = sqrt(mean_j v_j^2), mean = mean_j v_j, maxabs = max_j |v_j|."""
    if v.shape[0] == 0:
        empty = np.zeros(0)
        return {"rms": empty, "mean": empty, "maxabs": empty}
    return {"rms": v.pow(2).mean(-1).sqrt().numpy(), "mean": v.mean(-1).numpy(),
            "maxabs": v.abs().amax(-1).numpy()}


def site_summary(captures: list[NormCapture]) -> dict[str, np.ndarray]:
    """One value per site: mean over tokens of the RMS in/out, max over tokens of max|x| in/out (NaN if empty)."""
    def reduce(c: NormCapture, which: str, stat: str, op) -> float:
        values = vector_stats(getattr(c, which))[stat]
        return float(op(values)) if values.size else float("nan")
    return {"rms_in": np.array([reduce(c, "x", "rms", np.mean) for c in captures]),
            "rms_out": np.array([reduce(c, "y", "rms", np.mean) for c in captures]),
            "maxabs_in": np.array([reduce(c, "x", "maxabs", np.max) for c in captures]),
            "maxabs_out": np.array([reduce(c, "y", "maxabs", np.max) for c in captures])}


def eps_response(rms: np.ndarray, eps: float) -> np.ndarray:
    """RMS of x / sqrt(mean(x^2) + eps) for an input of RMS r: r / sqrt(r^2 + eps) (before the gain).

    ~1 for r >> sqrt(eps) (normalised); ~r / sqrt(eps) for r << sqrt(eps): eps stops tiny vectors
    from being blown up to unit RMS (and guards the division at r = 0).
    """
    rms = np.asarray(rms, dtype=np.float64)
    return rms / np.sqrt(rms ** 2 + eps)


def channel_stats(capture: NormCapture, bins: int = 40) -> dict[str, np.ndarray]:
    """Per channel j: the gain g_j and the RMS over tokens of x_j relative to the RMS of all of x
    (1 = an average channel; outlier channels stand out). Histograms of log10|v| of all entering and
    leaving values: the norm moves the whole distribution to the scale of g whatever the input's scale."""
    x, y = capture.x, capture.y
    total = x.pow(2).mean().sqrt() if x.numel() else torch.tensor(1.0)
    rel = x.pow(2).mean(0).sqrt() / total.clamp_min(1e-30) if x.shape[0] else torch.zeros(x.shape[1])
    out = {"channel_rms": rel.numpy(), "gain": capture.gain.numpy()}
    for key, v in (("in", x), ("out", y)):
        mags = v.abs().flatten()
        logs = mags[mags > 0].log10().numpy()
        counts, edges = np.histogram(logs, bins=bins) if logs.size else (np.zeros(0), np.zeros(1))
        out[f"hist_{key}_x"], out[f"hist_{key}_count"] = (edges[:-1] + edges[1:]) / 2, counts
    return out


EPS_GRID = np.logspace(-9, 2, 200)  # input RMS values for the eps curve
SITE_AXIS_PX = 125                  # px at scale 1 under the per-site panel: its site names stand upright


class RMSNormDashboard(Dashboard):
    """Prompt box, norm-site dropdown and eps slider over one 5-panel figure, updated in place."""

    TITLES = ("RMS and max|x| in/out of every norm", "What eps does near zero",
              "Per token", "log10|value| in vs out", "Gain g_j, channel RMS")

    def __init__(self, model, tokenizer, prompt: str = "def forward(self, x):\n    return x",
                 interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.model, self.tokenizer = model, tokenizer
        self.model_eps = model.config.norm_eps
        names = [n for n, _ in norm_sites(model)]
        self.prompt = w.Textarea(value=prompt, description="prompt", continuous_update=False,
                                 layout=w.Layout(width="60%", height="4em"))
        self.site = w.Dropdown(options=[(site_label(n), n) for n in names], value=names[0], description="norm")
        self.eps = w.FloatLogSlider(value=self.model_eps, base=10, min=-12, max=0, step=0.25,
                                    description="eps", readout_format=".1e", continuous_update=False)
        self.status = html_widget()
        self.fig = self.new_figure(self._layout())
        self.prompt.observe(lambda ch: self.handle(self.set_prompt, ch["new"]), names="value")
        self.eps.observe(lambda ch: self.handle(self.recompute, ch["new"]), names="value")
        self.site.observe(lambda ch: self.redraw.request(), names="value")
        if self.interactive:  # a static go.Figure cannot sit in a widget box
            self.widget = w.VBox([w.HBox([self.prompt, w.VBox([self.site, self.eps])]), self.status, self.fig])
        self.set_prompt(prompt)
        self.redraw.request()

    def _layout(self):
        fig = theme.panel_grid(860, legend_rows=4, axis_px=SITE_AXIS_PX, rows=2, cols=3,
                               specs=[[{"colspan": 2}, None, {}], [{}, {}, {}]], subplot_titles=self.TITLES,
                               horizontal_spacing=0.1)
        self.trace = {}  # trace key -> index in fig.data

        def add(key, row, col, legend, kind="scatter", **kw):
            self.trace[key] = len(fig.data)
            getattr(fig, f"add_{kind}")(row=row, col=col, legend=legend, **kw)

        for key, name, color, dash in (("rms_in", "RMS in", "norm in", None), ("rms_out", "RMS out", "norm out", None),
                                       ("maxabs_in", "max|x| in", "norm in", "dot"),
                                       ("maxabs_out", "max|x| out", "norm out", "dot")):
            add(key, 1, 1, "legend", name=name, mode="lines+markers", line=theme.line(color, dash=dash),
                marker=theme.marker(color))
        add("eps", 1, 3, "legend2", name="slider eps", mode="lines", line=theme.line("reference"))
        add("eps_model", 1, 3, "legend2", name="model eps", mode="lines", line=theme.line("muted", dash="dash"))
        add("knee", 1, 3, "legend2", name="knee r = √eps", mode="lines", line=theme.line("reference", dash="dot"))
        add("eps_tokens", 1, 3, "legend2", name="this norm's tokens", mode="markers", marker=theme.marker("norm in"))
        for key, name, color, dash in (("tok_rms_in", "RMS in", "norm in", None),
                                       ("tok_mean_in", "mean in", "norm in", "dash"),
                                       ("tok_maxabs_in", "max|x| in", "norm in", "dot"),
                                       ("tok_rms_out", "RMS out", "norm out", None)):
            add(key, 2, 1, "legend3", name=name, mode="lines+markers", line=theme.line(color, dash=dash),
                marker=theme.marker(color, 5), hovertemplate="%{customdata}<br>%{y:.4g}")
        add("hist_in", 2, 2, "legend4", "bar", name="entering", opacity=0.6, marker_color=COLORS["norm in"])
        add("hist_out", 2, 2, "legend4", "bar", name="leaving", opacity=0.6, marker_color=COLORS["norm out"])
        add("gain", 2, 3, "legend5", name="gain g_j", mode="lines", line=theme.line("reference"))
        add("channel_rms", 2, 3, "legend5", "bar", name="RMS of x_j / RMS of x", opacity=0.5,
            marker_color=COLORS["norm in"])
        log_ticks = dict(type="log", dtick=1, exponentformat="power", minor=dict(ticks="outside", showgrid=False))
        fig.update_yaxes(title_text="over the prompt's tokens", row=1, col=1, **log_ticks)
        fig.update_xaxes(tickangle=-90, row=1, col=1)
        fig.update_xaxes(title_text="input RMS r", row=1, col=3, **{**log_ticks, "dtick": 3})
        fig.update_yaxes(title_text="output RMS (before g)", row=1, col=3)
        fig.update_xaxes(title_text="position", row=2, col=1)
        fig.update_yaxes(title_text="value", row=2, col=1)
        fig.update_xaxes(title_text="log10 |value|", row=2, col=2)
        fig.update_yaxes(title_text="count", row=2, col=2)
        fig.update_xaxes(title_text="channel j", row=2, col=3)
        fig.update_yaxes(title_text="g_j; RMS ratio", row=2, col=3)
        fig.update_layout(barmode="overlay")
        for legend, (xa, ya) in zip(("legend", "legend2", "legend3", "legend4", "legend5"),
                                    (("xaxis", "yaxis"), ("xaxis2", "yaxis2"), ("xaxis3", "yaxis3"),
                                     ("xaxis4", "yaxis4"), ("xaxis5", "yaxis5")), strict=True):
            theme.panel_legend(fig, legend, xa, ya, SITE_AXIS_PX if legend == "legend" else theme.AXIS_BELOW)
        return fig

    def set_prompt(self, text: str) -> None:
        self.tokens = prompt_tokens(self.model, self.tokenizer, text)
        self.texts = token_texts(self.tokenizer, self.tokens[0].tolist())
        self.recompute()

    def recompute(self, eps: float | None = None) -> None:
        eps = self.eps.value if eps is None else eps
        self.captures = capture_norms(self.model, self.tokens, eps=eps)
        self.summary = site_summary(self.captures)

    def draw(self) -> None:
        caps = {c.name: c for c in self.captures}
        cap = caps[self.site.value]
        idx = [c.name for c in self.captures].index(cap.name)
        labels = [c.label for c in self.captures]
        s_in, s_out, ch = vector_stats(cap.x), vector_stats(cap.y), channel_stats(cap)
        shift = int(cap.name.split(".")[1]) + 1 if cap.name.startswith("mtp.") else 0  # depth k sees t_{i+k}
        custom = [f"h_{i} ⊕ token {escape(self.texts[i + shift])}" if shift else escape(self.texts[i])
                  for i in range(cap.x.shape[0])]
        pos = np.arange(cap.x.shape[0])
        eps, knee = cap.eps, float(np.sqrt(cap.eps))
        series = {key: (labels, self.summary[key]) for key in ("rms_in", "rms_out", "maxabs_in", "maxabs_out")}
        series.update(eps=(EPS_GRID, eps_response(EPS_GRID, eps)),
                      eps_model=(EPS_GRID, eps_response(EPS_GRID, self.model_eps)),
                      knee=([knee, knee], [0.0, 1.0]), eps_tokens=(s_in["rms"], eps_response(s_in["rms"], eps)),
                      tok_rms_in=(pos, s_in["rms"]), tok_mean_in=(pos, s_in["mean"]),
                      tok_maxabs_in=(pos, s_in["maxabs"]), tok_rms_out=(pos, s_out["rms"]),
                      hist_in=(ch["hist_in_x"], ch["hist_in_count"]), hist_out=(ch["hist_out_x"], ch["hist_out_count"]),
                      gain=(np.arange(len(ch["gain"])), ch["gain"]),
                      channel_rms=(np.arange(len(ch["channel_rms"])), ch["channel_rms"]))
        with self.fig.batch_update():
            for key, (xs, ys) in series.items():
                tr = self.fig.data[self.trace[key]]
                tr.x, tr.y = xs, ys
                if key.startswith("tok_"):
                    tr.customdata = custom
            self.fig.layout.shapes = [dict(type="rect", xref="x", yref="y domain", x0=idx - 0.5, x1=idx + 0.5,
                                           y0=0, y1=1, fillcolor=tint("highlight", 0.5), line_width=0, layer="below")]
            self.fig.layout.annotations[2].text = f"{self.TITLES[2]}: {cap.label}"
        n = cap.x.shape[0]
        rms = (f"mean RMS in {self.summary['rms_in'][idx]:.3g}, out {self.summary['rms_out'][idx]:.3g} (out is after "
               f"the gain g: before it, 1 for inputs well above the knee)" if n else
               "no statistics: the prompt is too short for this MTP depth (module k sees T-k positions)")
        self.status.value = (f"{plural(self.tokens.shape[1], 'token')} · <b>{cap.label}</b>: "
                             f"{plural(n, 'vector')} · eps = {eps:.1e}, knee at r = sqrt(eps) = {np.sqrt(eps):.1e} · "
                             f"{rms}")


def rmsnorm_dashboard(model, tokenizer, prompt: str = "def forward(self, x):\n    return x",
                      interactive: bool | None = None) -> RMSNormDashboard:
    """RMSNorm statistics for `prompt`: per norm site (main layers, final norm, and per MTP module its
    enorm, hnorm, block norms and head norm) the RMS, mean and max|x| entering and leaving, per-token
    and per-channel views, the learned gain, and the eps curve. Type a prompt, pick a norm, move eps."""
    return RMSNormDashboard(model, tokenizer, prompt, interactive)
