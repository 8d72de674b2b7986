"""FP8 explorer: the E4M3 and E5M2 number lines, quantization error by scaling granularity under an
outlier, the 128x128 block and 1x128 tile scales of a real layer, and accumulation error against K.

Plain functions compute each panel's data with mtp_lab.fp8; `FP8Explorer` draws them in one figure.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn

from ..fp8 import FORMATS, accumulation_error_vs_k, dequantize, quant_stats, quantize
from . import theme
from .common import Dashboard, html_widget, prompt_tokens, update_alone
from .palette import COLORS, HEATMAP

GRANULARITY_LABELS = {"tensor": "per<br>tensor", "tile": "1x128<br>tile", "block": "128x128<br>block"}
DEFAULT_KS = (128, 256, 512, 1024, 2048, 4096)
# where the granularity lesson shows: per-tensor E4M3 error ~3x the tile's (0.08 vs 0.03), 12% of ordinary
# values underflow; at the old default of 20 every bar was equal until the slider passed ~1e4
DEFAULT_OUTLIER = 2.5e4


def format_values(fmt: str) -> np.ndarray:
    """Every positive finite value of an FP8 format, ascending: all 256 bit patterns read as fmt's dtype."""
    v = torch.arange(256, dtype=torch.uint8).view(FORMATS[fmt].dtype).float()
    return v[torch.isfinite(v) & (v > 0)].unique().numpy()


def round_to_format(x: float, fmt: str) -> float:
    """x cast to the format with a unit scale (no scaling): saturates at +-max, tiny values become 0."""
    q, s = quantize(torch.tensor([float(x)]), fmt, "tensor", scale=1.0)
    return float(dequantize(q, s)[0])


def outlier_activations(outlier: float, tokens: int = 32, channels: int = 512, channel: int = 7,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """randn activations (tokens, channels) with one channel scaled by `outlier` (LLM activations have a
    few such channels). Returns (x, mask of the ordinary, non-outlier entries)."""
    if not outlier > 0:
        raise ValueError(f"outlier magnitude must be > 0, got {outlier!r}")
    x = torch.randn(tokens, channels, generator=torch.Generator().manual_seed(seed))
    x[:, channel] *= outlier
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, channel] = False
    return x, mask


def granularity_errors(x: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    """For each format and granularity: relative error ||x_hat - x|| / ||x|| over the ordinary entries
    (mask), and the share of nonzero ordinary entries that underflowed to 0."""
    out = {}
    for fmt in FORMATS:
        out[fmt] = {}
        for gran in GRANULARITY_LABELS:
            q, s = quantize(x, fmt, gran)
            x_hat = dequantize(q, s, gran)
            err = (x_hat - x)[mask].norm() / x[mask].norm()
            under = ((x_hat == 0) & (x != 0) & mask).sum() / ((x != 0) & mask).sum()
            out[fmt][gran] = {"rel_error": float(err), "underflow": float(under)}
    return out


@lru_cache(maxsize=32)
def accumulation_curves(ks: tuple[int, ...], mantissa_bits: int, promote_every: int) -> tuple[dict, ...]:
    """accumulation_error_vs_k on 16x16 products (seconds of work at K = 4096), cached per setting."""
    return tuple(accumulation_error_vs_k(ks, m=16, n=16, mantissa_bits=mantissa_bits, promote_every=promote_every))


WIDE = "wide synthetic layer 512x1024, 64 tokens"   # the explorer's first choice: many blocks and tiles


def linear_layers(model) -> list[str]:
    """Names of the linears the FP8 recipe can quantize (every nn.Linear but the output head)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"]


def wide_layer(out_features: int = 512, in_features: int = 1024, tokens: int = 64,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic linear wider than the course model's (width 128 = ONE 128x128 block, ONE 1x128 tile per token):
    weight (out, in) and input activations (tokens, in) that span 4x8 weight blocks and 8 tiles per token, so the
    granularity of the scales can be seen. Like a trained layer's, the weight's rows and columns differ in scale
    (log-normal), and the activations have a per-token magnitude and three outlier channels (x 30)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.02
    w *= torch.exp(0.5 * torch.randn(out_features, 1, generator=g)) * torch.exp(0.5 * torch.randn(1, in_features,
                                                                                                  generator=g))
    x = torch.randn(tokens, in_features, generator=g) * torch.exp(0.7 * torch.randn(tokens, 1, generator=g))
    x[:, [37, 300, 301]] *= 30.0
    return w, x


@torch.no_grad()
def layer_scales(model, name: str, tokens: torch.Tensor) -> dict:
    """E4M3 scales of layer `name` as DeepSeek-V3 quantizes it: the weight per 128x128 block
    (ceil(N/128), ceil(K/128)) and its input activation per 1x128 tile (T', ceil(K/128)), from a
    forward pass on `tokens`; plus quant_stats of both."""
    if name == WIDE:
        w, x = wide_layer()
        return _scales(w, x)
    layer = dict(model.named_modules()).get(name)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"{name!r} is not a linear layer of this model; choose one of linear_layers(model)")
    seen = []
    handle = layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0][0].detach().float()))
    was_training = model.training
    try:
        model.eval()
        model(tokens)
    finally:
        handle.remove()
        model.train(was_training)
    w = layer.weight.detach().float()
    x = seen[-1] if seen else torch.zeros(0, w.shape[1])  # an MTP depth beyond the prompt sees no position
    return _scales(w, x)


def _scales(w: torch.Tensor, x: torch.Tensor) -> dict:
    qw, sw = quantize(w, "e4m3", "block")
    result = {"weight_scale": sw.cpu().numpy(), "weight": quant_stats(w, qw, sw, "block"), "tokens": x.shape[0]}
    if x.shape[0]:
        qx, sx = quantize(x, "e4m3", "tile")
        result.update(act_scale=sx.cpu().numpy(), act=quant_stats(x, qx, sx, "tile"))
    else:
        result.update(act_scale=np.zeros((0, sw.shape[1])), act=None)
    return result


class FP8Explorer(Dashboard):
    """Five panels: number lines, granularity errors, weight block scales, activation tile scales, error vs K."""

    TITLES = ("E4M3 and E5M2: every positive value", "Error by granularity", "Weight block scales (128x128)",
              "Activation tile scales (1x128)", "Accumulation error vs K")

    def __init__(self, model, tokenizer, prompt: str = "def forward(self, x):\n    return x",
                 ks=DEFAULT_KS, interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.model, self.tokenizer, self.ks = model, tokenizer, tuple(ks)
        names = [WIDE, *linear_layers(model)]
        cs = dict(continuous_update=False, style={"description_width": "initial"})
        self.value = w.FloatLogSlider(value=3.3, base=10, min=-4, max=5, step=0.01, description="value x",
                                      readout_format=".3g", **cs)
        self.outlier = w.FloatLogSlider(value=DEFAULT_OUTLIER, base=10, min=0, max=6, step=0.05,
                                        description="outlier ×", readout_format=".3g", **cs)
        self.layer = w.Dropdown(options=names, value=names[0], description="layer", layout=w.Layout(width="48%"))
        self.prompt = w.Text(value=prompt, description="prompt", **cs)
        self.bits = w.IntSlider(value=14, min=8, max=23, description="accumulator bits", **cs)
        for slider in (self.value, self.outlier, self.bits):   # two per row: none squashed on a laptop
            slider.layout = w.Layout(width="48%", min_width="260px")
        self.promote = w.Dropdown(options=[32, 64, 128, 256, 512], value=128, description="promote every N_C",
                                  style={"description_width": "initial"}, layout=w.Layout(width="30%"))
        self.status = html_widget()
        self.fig = self.new_figure(self._layout())
        for control, compute in ((self.value, self.set_value), (self.outlier, self.set_outlier),
                                 (self.layer, self.set_layer), (self.prompt, self.set_prompt),
                                 (self.bits, self.set_accumulation), (self.promote, self.set_accumulation)):
            control.observe(lambda ch, c=compute: self.handle(c), names="value")
        if self.interactive:
            rows = [w.HBox([self.value, self.outlier]), w.HBox([self.bits, self.promote]),
                    w.HBox([self.layer, self.prompt])]
            for row in rows:
                row.layout = w.Layout(flex_flow="row wrap")
            self.widget = w.VBox([*rows, self.status, self.fig])
        self.numbers = {f: format_values(f) for f in FORMATS}
        self.set_value()
        self.set_outlier()
        self.set_prompt()
        self.set_accumulation()
        self.redraw.request()

    def _layout(self):
        fig = theme.panel_grid(780, legend_rows=4, rows=2, cols=3, specs=[[{"colspan": 2}, None, {}], [{}, {}, {}]],
                               subplot_titles=self.TITLES, horizontal_spacing=0.1)
        self.trace = {}

        def add(key, row, col, kind="scatter", **kw):
            self.trace[key] = len(fig.data)
            getattr(fig, f"add_{kind}")(row=row, col=col, **kw)

        for fmt in FORMATS:
            add(f"line_{fmt}", 1, 1, name=fmt.upper(), mode="markers", legendgroup=fmt,
                marker=theme.marker(fmt, 14, symbol="line-ns-open", line=dict(width=theme.px(1.5))),
                hovertemplate=f"{fmt.upper()}: %{{x:.6g}}<extra></extra>")
        add("x", 1, 1, name="x", mode="lines", line=theme.line("reference", dash="dot"), hoverinfo="skip")
        add("x_rounded", 1, 1, name="x rounded (format's colour)", mode="markers",
            marker=theme.marker("reference", 12, symbol="x"), hovertemplate="%{text}<extra></extra>")
        for fmt in FORMATS:
            add(f"gran_{fmt}", 1, 3, "bar", name=f"{fmt.upper()} error", legend="legend2", legendgroup=fmt,
                marker_color=COLORS[fmt], hovertemplate="%{y:.3g}<extra></extra>")
        for key, axis, hover in (("w_scale", "xaxis3", "block row %{y}, col %{x}"),
                                 ("a_scale", "xaxis4", "token %{y}, tile %{x}")):
            x0, x1 = fig.layout[axis].domain   # the colour bar lies under its panel, below the axis title
            bar = dict(orientation="h", x=(x0 + x1) / 2, len=x1 - x0, y=theme.paper_below(fig, "yaxis3", 80),
                       yanchor="top", thickness=theme.px(10), nticks=4, tickformat=".2g")
            add(key, 2, 1 if key == "w_scale" else 2, "heatmap", colorscale=HEATMAP, colorbar=bar,
                hovertemplate=hover + "<br>scale %{z:.3g}<extra></extra>")
        for key, name, dash in (("limited", "~14-bit accumulator", None), ("promoted", "promoted every N_C", "dash"),
                                ("fp32", "FP32 chunk sums", "dot")):   # the last as the released kernel does
            add(f"acc_{key}", 2, 3, name=name, mode="lines+markers", legend="legend3",
                line=theme.line(f"accumulator {key}", dash=dash), marker=theme.marker(f"accumulator {key}"))
        fig.update_xaxes(type="log", title_text="value", exponentformat="power", row=1, col=1)
        fig.update_yaxes(tickvals=[0, 1], ticktext=list(f.upper() for f in FORMATS), range=[-0.6, 1.6], row=1, col=1)
        fig.update_yaxes(type="log", title_text="rel. error on ordinary values", row=1, col=3)
        fig.update_xaxes(title_text="block column (128 inputs)", dtick=1, row=2, col=1)
        fig.update_yaxes(autorange="reversed", dtick=1, title_text="block row", row=2, col=1)
        fig.update_xaxes(title_text="tile (128 inputs)", dtick=1, row=2, col=2)
        fig.update_yaxes(autorange="reversed", title_text="token", row=2, col=2)
        fig.update_xaxes(type="log", title_text="K", tickvals=list(self.ks), row=2, col=3)
        fig.update_yaxes(type="log", exponentformat="power", row=2, col=3)   # the panel title says what
        fig.update_layout(barmode="group")
        for legend, n in (("legend", ""), ("legend2", "2"), ("legend3", "5")):
            theme.panel_legend(fig, legend, f"xaxis{n}", f"yaxis{n}")
        return fig

    def set_value(self) -> None:
        x = self.value.value
        self.rounded = {f: round_to_format(x, f) for f in FORMATS}

    def set_outlier(self) -> None:
        self.gran = granularity_errors(*outlier_activations(self.outlier.value))

    def set_prompt(self) -> None:
        self.tokens = prompt_tokens(self.model, self.tokenizer, self.prompt.value)
        self.set_layer()

    def set_layer(self) -> None:
        self.scales = layer_scales(self.model, self.layer.value, self.tokens)

    def set_accumulation(self) -> None:
        self.acc = accumulation_curves(self.ks, self.bits.value, self.promote.value)

    def draw(self) -> None:
        x, t, sc = self.value.value, self.trace, self.scales
        data = self.fig.data
        with self.fig.batch_update():
            for i, fmt in enumerate(FORMATS):
                line = data[t[f"line_{fmt}"]]
                line.x, line.y = self.numbers[fmt], np.full(len(self.numbers[fmt]), i)
            data[t["x"]].x, data[t["x"]].y = [x, x], [-0.5, 1.5]
            shown = [(v, i, f) for i, (f, v) in enumerate(self.rounded.items()) if v > 0]
            data[t["x_rounded"]].x = [v for v, _, _ in shown]
            data[t["x_rounded"]].y = [i for _, i, _ in shown]
            for fmt in FORMATS:
                bars = data[t[f"gran_{fmt}"]]
                bars.x = list(GRANULARITY_LABELS.values())
                bars.y = [self.gran[fmt][g]["rel_error"] for g in GRANULARITY_LABELS]
            data[t["w_scale"]].z = sc["weight_scale"]
            data[t["a_scale"]].z = sc["act_scale"]
            for key in ("limited", "promoted", "fp32"):
                data[t[f"acc_{key}"]].x = [r["k"] for r in self.acc]
                data[t[f"acc_{key}"]].y = [r[key] for r in self.acc]
            self.fig.layout.xaxis3.title.text = f"{self.layer.value}:<br>block column (128 inputs)"
        update_alone(self.fig, t["x_rounded"], text=[f"{x:.4g} -> {f.upper()} {v:.4g}" for v, _, f in shown],
                     marker_color=[COLORS[f] for _, _, f in shown])

        def rel(f: str) -> str:
            return f"{f.upper()} {self.rounded[f]:.4g} ({abs(self.rounded[f] - x) / x:.1%} off)"

        act = sc["act"]
        act_text = (f"activation tiles: rel. error {act['rel_error']:.2%}, scales {act['scale_min']:.2g}"
                    f"..{act['scale_max']:.2g}" if act else "no activation at this MTP depth for so short a prompt")
        under = {f: self.gran[f]["tensor"]["underflow"] for f in FORMATS}
        self.status.value = (
            f"x = {x:.4g} -> {rel('e4m3')}, {rel('e5m2')} · outlier ×{self.outlier.value:.3g}: per-tensor E4M3 "
            f"underflows {under['e4m3']:.1%} of ordinary values<br><b>{self.layer.value}</b>: weight blocks rel. "
            f"error {sc['weight']['rel_error']:.2%}; {act_text}")


def fp8_explorer(model, tokenizer, prompt: str = "def forward(self, x):\n    return x", ks=DEFAULT_KS,
                 interactive: bool | None = None) -> FP8Explorer:
    """FP8 explorer on `model`: E4M3/E5M2 number lines with a value slider, quantization error per
    granularity with an outlier slider, block and tile scale heatmaps of a chosen layer for `prompt`,
    and accumulation error against K (accumulator bits and promotion interval N_C adjustable)."""
    return FP8Explorer(model, tokenizer, prompt, ks, interactive)
