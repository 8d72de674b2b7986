"""Architecture view: the main model and its D MTP modules as boxes with the tensor shapes of the
current config; hovering a box shows its equation and parameter count. Symbols are written in plotly's
HTML subset (h′<sup>k</sup><sub>i</sub> for the report's h'^k_i); MTP module k has depth k's palette colour.

`architecture_graph(config, batch, seq_len)` returns plain nodes and edges; `ArchitectureView` draws
them and relabels the shapes when the batch size or sequence length sliders move.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from ..config import ModelConfig
from . import theme
from .common import Dashboard
from .palette import COLORS, depth_color, tint

TITLE_LINES = 3   # the view's title: config, MTP modules and colours, how to use it
MODEBAR_PX = 34   # plotly's mode bar (its toolbar, top right) does not scale with the fonts
FILLS = {"shared": tint("shared", 0.35), "main": tint("main", 0.3), "norm": tint("norm", 0.45),
         "io": tint("muted", 0.3)}   # "mtp": the module's depth colour (fill_color)


@dataclass
class Node:
    key: str          # unique id, e.g. "main.block.0", "mtp1.enorm"
    label: str        # text in the box
    x: float          # box centre
    y: float
    shape: str        # output tensor shape for the current config, e.g. "(1, 64, 256)"
    equation: str     # what the part computes (hover)
    params: int       # trainable parameters it owns (0 for shared references and inputs)
    kind: str         # a FILLS key, or "mtp"


def sym(base: str, sup: object = "", sub: object = "", prime: bool = False) -> str:
    """A symbol with super- and subscript in plotly's HTML subset: sym("h", 1, "i", prime=True) is h′¹ᵢ."""
    out = base + ("\u2032" if prime else "")
    out += f"<sup>{sup}</sup>" if sup != "" else ""
    return out + (f"<sub>{sub}</sub>" if sub != "" else "")


def shp(*dims) -> str:
    """A tensor shape: shp(1, 64, 256) -> "(1, 64, 256)"."""
    return "(" + ", ".join(str(v) for v in dims) + ")"


def block_params(cfg: ModelConfig) -> int:
    """Attention wq, wk, wv, wo (4 d^2) + SwiGLU w1, w3, w2 (3 d d_ff) + two RMSNorm gains (2 d)."""
    d = cfg.d_model
    return 4 * d * d + 3 * d * cfg.d_ff + 2 * d


def architecture_graph(cfg: ModelConfig, batch: int = 1, seq_len: int | None = None, collapse: bool = True
                       ) -> tuple[list[Node], list[tuple[str, str]]]:
    """Boxes (bottom to top, main model at x = 0, MTP module k at x = 2.4 k) and arrows (from, to). With
    `collapse`, a main model of more than 4 blocks shows its first and last block and one box for those between."""
    T = cfg.max_seq_len if seq_len is None else seq_len
    if not 1 <= T <= cfg.max_seq_len:
        raise ValueError(f"seq_len must lie in 1..{cfg.max_seq_len} (max_seq_len), got {T}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    B, d, V, L = batch, cfg.d_model, cfg.vocab_size, cfg.n_layers
    block_eq = ("h = x + Attn(RMSNorm(x))   (causal, RoPE, {H} heads of {hd})<br>"
                "out = h + W2(SiLU(W1 RMSNorm(h)) * W3 RMSNorm(h))   (SwiGLU, d_ff = {ff})").format(
        H=cfg.n_heads, hd=cfg.head_dim, ff=cfg.d_ff)
    norm_eq = f"RMSNorm(x) = g * x / sqrt(mean{sym('', sub='j')} {sym('x', sub='j')}² + eps),  eps = {cfg.norm_eps:g}"
    fp8 = ("<br><b>FP8</b>: its linears take E4M3 inputs (activations per 1x128 tile, weights per 128x128 block), "
           "FP32 accumulation")
    fp8_main, fp8_mtp = (fp8 if cfg.fp8 in scopes else "" for scopes in (("main", "all"), ("mtp", "all")))
    # the released checkpoint keeps eh_proj in high precision; apply_fp8_recipe(eh_proj_fp8=True) quantizes it
    eh_note = "<br>stays in high precision (as in the released checkpoint; eh_proj_fp8=True quantizes it)"
    W_E, W_O = sym("W", sub="E"), sym("W", sub="O")
    nodes = [Node("tokens", f"tokens {sym('t', sub=0)}..{sym('t', sub='T-1')}", 0, 0, shp(B, T), "int64 token ids",
                  0, "io"),
             Node("embed", "embedding", 0, 1, shp(B, T, d),
                  f"{sym('x', sub='i')} = {W_E}[{sym('t', sub='i')}],  {W_E}: {shp(V, d)}", V * d, "shared")]
    edges = [("tokens", "embed")]
    # identical blocks between the first and the last are one box, so a deep model fits one screen beside its MTP
    # modules: (index, label, how many blocks the box stands for)
    rows = ([(0, "Block 0", 1), (1, f"Blocks 1-{L - 2} (×{L - 2})", L - 2), (L - 1, f"Block {L - 1}", 1)]
            if collapse and L > 4 else [(i, f"Block {i}", 1) for i in range(L)])
    for y, (i, label, n_blocks) in enumerate(rows, start=2):
        eq = block_eq + fp8_main if n_blocks == 1 else (
            f"{n_blocks} blocks, each like Block 0 with its own weights:<br>" + block_eq + fp8_main)
        nodes.append(Node(f"main.block.{i}" if n_blocks == 1 else "main.blocks", label, 0, y, shp(B, T, d), eq,
                          n_blocks * block_params(cfg), "main"))
        edges.append((nodes[-2].key, nodes[-1].key))
    top_block = 1 + len(rows)
    nodes.append(Node("main.norm", "final RMSNorm", 0, top_block + 1, shp(B, T, d), norm_eq, d, "norm"))
    nodes.append(Node("head", "output head", 0, top_block + 2, shp(B, T, V),
                      f"logits = {W_O} h,  {W_O}: {shp(V, d)};  logits[:, i] predicts {sym('t', sub='i+1')}", V * d,
                      "shared"))
    edges += [(nodes[-3].key, "main.norm"), ("main.norm", "head")]
    prev = "main.norm" if cfg.mtp_input_norm else nodes[-3].key  # the h^0 fed to module 1
    for k in range(1, cfg.mtp_depth + 1):
        cx, n = 2.4 * k, T - k
        state = "after" if cfg.mtp_input_norm else "before"
        emb, h_prev, h_in = f"Emb({sym('t', sub=f'i+{k}')})", sym("h", k - 1, "i"), sym("h", k, "i", prime=True)
        M, TRM, span = sym("M", sub=k), sym("TRM", sub=k), f"1:T-{k}"
        nodes += [
            Node(f"mtp{k}.emb", emb, cx + 0.55, 1, shp(B, n, d),
                 f"the SAME embedding table, on tokens[:, {k}:] (one-token shift per depth)", 0, "shared"),
            Node(f"mtp{k}.enorm", "enorm", cx + 0.55, 2, shp(B, n, d), norm_eq + f"<br>on {emb}", d, "norm"),
            Node(f"mtp{k}.hnorm", "hnorm", cx - 0.55, 2, shp(B, n, d),
                 norm_eq + f"<br>on {h_prev}[:, :-1] ({state} the previous stage's final norm)", d, "norm"),
            Node(f"mtp{k}.eh_proj", f"eh_proj {M}", cx, 3, shp(B, n, d),
                 f"(21) {h_in} = {M} [enorm({emb}) ; hnorm({h_prev})]<br>"
                 f"concat {shp(B, n, 2 * d)} -> {M}: {shp(d, 2 * d)}; embedding first as in the checkpoint "
                 "(the report writes hidden first)" + (eh_note if fp8_mtp else ""), 2 * d * d, "mtp"),
            Node(f"mtp{k}.block", TRM, cx, 4, shp(B, n, d),
                 f"(22) {sym('h', k, span)} = {TRM}({sym('h', k, span, prime=True)})<br>" + block_eq + fp8_mtp,
                 block_params(cfg), "mtp"),
            Node(f"mtp{k}.norm", "head norm", cx, 5, shp(B, n, d), "shared_head.norm: " + norm_eq, d, "norm"),
            Node(f"mtp{k}.head", "output head", cx, 6, shp(B, n, V),
                 f"(23) {sym('P', k, f'i+{k + 1}')} = softmax({W_O} shared_head.norm({sym('h', k, 'i')})): the SAME "
                 f"{W_O} as the main model; [:, i] predicts {sym('t', sub=f'i+{k + 1}')}", 0, "shared"),
        ]
        edges += [(f"mtp{k}.emb", f"mtp{k}.enorm"), (prev, f"mtp{k}.hnorm"), (f"mtp{k}.enorm", f"mtp{k}.eh_proj"),
                  (f"mtp{k}.hnorm", f"mtp{k}.eh_proj"), (f"mtp{k}.eh_proj", f"mtp{k}.block"),
                  (f"mtp{k}.block", f"mtp{k}.norm"), (f"mtp{k}.norm", f"mtp{k}.head")]
        prev = f"mtp{k}.norm" if cfg.mtp_input_norm else f"mtp{k}.block"
    return nodes, edges


def half_size(n: Node) -> tuple[float, float]:
    """Half width and half height of a node's box: the main column is wider than an MTP module's."""
    return (0.5, 0.3) if n.key.startswith("mtp") else (0.7, 0.34)


def fill_color(n: Node) -> str:
    """A box's fill: its kind's, and for MTP module k's own parts depth k's colour."""
    return tint(depth_color(int(n.key[3:n.key.index(".")])), 0.35) if n.kind == "mtp" else FILLS[n.kind]


def box_label(n: Node) -> str:
    return f"{n.label}<br><span style='font-size:{theme.px(theme.SMALL - 1)}px'>{n.shape}</span>"


def node_traces(nodes: list[Node]) -> list[go.Scatter]:
    """One filled rectangle per node; hovering anywhere on it shows the label, shape, equation, parameters."""
    traces = []
    for n in nodes:
        w, h = half_size(n)
        traces.append(go.Scatter(
            x=[n.x - w, n.x + w, n.x + w, n.x - w, n.x - w], y=[n.y - h, n.y - h, n.y + h, n.y + h, n.y - h],
            mode="lines", fill="toself", fillcolor=fill_color(n), line=dict(color=COLORS["ink"], width=theme.px(1)),
            hoveron="fills", name=n.label, showlegend=False, text=hover_text(n), hoverinfo="text"))
    return traces


def hover_text(n: Node) -> str:
    params = f"<br>parameters: {n.params:,}" if n.params else ""
    return f"<b>{n.label}</b>  out {n.shape}<br>{n.equation}{params}"


def architecture_figure(nodes: list[Node], edges: list[tuple[str, str]], title: str = "") -> go.Figure:
    """Boxes, arrows and labels (label + output shape) for `architecture_graph`'s output."""
    by_key = {n.key: n for n in nodes}

    def arrow(a: Node, b: Node) -> dict:
        (wa, ha), (_, hb) = half_size(a), half_size(b)
        if abs(a.x - b.x) > 1:   # into the next MTP column: from the right side down onto the box's top
            start, end = (a.x + wa, a.y), (b.x, b.y + hb)
        else:
            start, end = (a.x, a.y + ha), (b.x, b.y - hb)
        return dict(x=end[0], y=end[1], ax=start[0], ay=start[1], xref="x", yref="y", axref="x", ayref="y",
                    showarrow=True, arrowhead=2, arrowwidth=theme.px(1.2), arrowcolor=COLORS["ink"], text="")

    fig = go.Figure(node_traces(nodes))
    arrows = [arrow(by_key[a], by_key[b]) for a, b in edges]
    labels = [dict(x=n.x, y=n.y, text=box_label(n), showarrow=False, font=theme.font(theme.SMALL)) for n in nodes]
    top = max(n.y for n in nodes)
    # the title sits under the mode bar, not behind it
    fig.update_layout(annotations=arrows + labels, hovermode="closest",
                      title=dict(text=title, x=0, xref="paper", xanchor="left", y=1, yref="container", yanchor="top",
                                 pad=dict(t=MODEBAR_PX)),
                      xaxis=dict(visible=False, range=[-1.1, max(n.x for n in nodes) + 1.1]),
                      yaxis=dict(visible=False, range=[-0.6, top + 0.6]), plot_bgcolor=COLORS["background"],
                      margin=dict(l=10, r=10, t=MODEBAR_PX + theme.px(TITLE_LINES * 1.3 * theme.TITLE + 12), b=10))
    return theme.apply(fig, 150 + 70 * (top + 1))


class ArchitectureView(Dashboard):
    """The architecture figure with batch-size and sequence-length sliders that relabel every shape."""

    def __init__(self, config: ModelConfig, batch: int = 1, seq_len: int | None = None,
                 interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.config = config
        T = config.max_seq_len if seq_len is None else seq_len
        self.batch = w.IntSlider(value=batch, min=1, max=64, description="batch B", continuous_update=False)
        self.seq_len = w.IntSlider(value=T, min=1, max=config.max_seq_len, description="length T",
                                   continuous_update=False)
        self.graph = architecture_graph(config, batch, T)
        self.fig = self.new_figure(architecture_figure(*self.graph, self.title()))
        for control in (self.batch, self.seq_len):
            control.observe(lambda ch: self.update(), names="value")
        if self.interactive:  # a static go.Figure cannot sit in a widget box
            self.widget = w.VBox([w.HBox([self.batch, self.seq_len]), self.fig])

    def title(self) -> str:
        c = self.config
        small = f"<span style='font-size:{theme.px(theme.FONT)}px'>"
        return (f"d = {c.d_model}, L = {c.n_layers}, heads = {c.n_heads}, d_ff = {c.d_ff}, V = {c.vocab_size}<br>"
                f"{small}D = {c.mtp_depth} MTP module(s), FP8 linears: {c.fp8}; teal boxes are shared with the main "
                f"model</span><br>{small}hover a box for its equation and parameter count</span>")

    def update(self) -> None:
        self.graph = architecture_graph(self.config, self.batch.value, self.seq_len.value)
        self.redraw.request()

    def draw(self) -> None:
        nodes, _ = self.graph
        n_edges = len(self.graph[1])
        with self.fig.batch_update():
            for tr, n in zip(self.fig.data, nodes, strict=True):
                tr.text = hover_text(n)
            for ann, n in zip(self.fig.layout.annotations[n_edges:], nodes, strict=True):
                ann.text = box_label(n)


def architecture_view(model_or_config, batch: int = 1, seq_len: int | None = None,
                      interactive: bool | None = None) -> ArchitectureView:
    """The main model and its MTP modules with tensor shapes for `model.config` (or a ModelConfig);
    hover a box for its equation and parameter count; sliders set the batch size and sequence length."""
    cfg = model_or_config if isinstance(model_or_config, ModelConfig) else model_or_config.config
    return ArchitectureView(cfg, batch, seq_len, interactive)
