"""Architecture view: the main model and its D MTP modules as boxes with the tensor shapes of the
current config; hovering a box shows its equation and parameter count.

`architecture_graph(config, batch, seq_len)` returns plain nodes and edges; `ArchitectureView` draws
them and relabels the shapes when the batch size or sequence length sliders move.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from ..config import ModelConfig
from .common import FIG_WIDTH, Dashboard

COLORS = {"shared": "#8fd694", "main": "#9ecae1", "norm": "#fdd49e", "mtp": "#d4b9da", "io": "#e0e0e0"}


@dataclass
class Node:
    key: str          # unique id, e.g. "main.block.0", "mtp1.enorm"
    label: str        # text in the box
    x: float          # box centre
    y: float
    shape: str        # output tensor shape for the current config, e.g. "(1, 64, 256)"
    equation: str     # what the part computes (hover)
    params: int       # trainable parameters it owns (0 for shared references and inputs)
    kind: str         # a COLORS key


def block_params(cfg: ModelConfig) -> int:
    """Attention wq, wk, wv, wo (4 d^2) + SwiGLU w1, w3, w2 (3 d d_ff) + two RMSNorm gains (2 d)."""
    d = cfg.d_model
    return 4 * d * d + 3 * d * cfg.d_ff + 2 * d


def architecture_graph(cfg: ModelConfig, batch: int = 1, seq_len: int | None = None
                       ) -> tuple[list[Node], list[tuple[str, str]]]:
    """Boxes (bottom to top, main model at x = 0, MTP module k at x = 2.4 k) and arrows (from, to)."""
    T = cfg.max_seq_len if seq_len is None else seq_len
    if not 1 <= T <= cfg.max_seq_len:
        raise ValueError(f"seq_len must lie in 1..{cfg.max_seq_len} (max_seq_len), got {T}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    B, d, V, L = batch, cfg.d_model, cfg.vocab_size, cfg.n_layers
    shp = lambda *s: "(" + ", ".join(str(v) for v in s) + ")"
    block_eq = ("h = x + Attn(RMSNorm(x))   (causal, RoPE, {H} heads of {hd})<br>"
                "out = h + W2(SiLU(W1 RMSNorm(h)) * W3 RMSNorm(h))   (SwiGLU, d_ff = {ff})").format(
        H=cfg.n_heads, hd=cfg.head_dim, ff=cfg.d_ff)
    norm_eq = f"RMSNorm(x) = g * x / sqrt(mean_j x_j² + eps),  eps = {cfg.norm_eps:g}"
    fp8 = ("<br><b>FP8</b>: its linears take E4M3 inputs (activations per 1x128 tile, weights per 128x128 block), "
           "FP32 accumulation")
    fp8_main, fp8_mtp = (fp8 if cfg.fp8 in scopes else "" for scopes in (("main", "all"), ("mtp", "all")))
    # the released checkpoint keeps eh_proj in high precision; apply_fp8_recipe(eh_proj_fp8=True) quantizes it
    eh_note = "<br>stays in high precision (as in the released checkpoint; eh_proj_fp8=True quantizes it)"
    nodes = [Node("tokens", "tokens t_0..t_{T-1}", 0, 0, shp(B, T), "int64 token ids", 0, "io"),
             Node("embed", "Embedding (shared)", 0, 1, shp(B, T, d), f"x_i = W_E[t_i],  W_E: {shp(V, d)}", V * d,
                  "shared")]
    edges = [("tokens", "embed")]
    for i in range(L):
        nodes.append(Node(f"main.block.{i}", f"Block {i}", 0, 2 + i, shp(B, T, d), block_eq + fp8_main,
                          block_params(cfg), "main"))
        edges.append((nodes[-2].key, nodes[-1].key))
    nodes.append(Node("main.norm", "final RMSNorm", 0, L + 2, shp(B, T, d), norm_eq, d, "norm"))
    nodes.append(Node("head", "Output head (shared)", 0, L + 3, shp(B, T, V),
                      f"logits = W_O h,  W_O: {shp(V, d)};  logits[:, i] predicts t_{i+1}", V * d, "shared"))
    edges += [(nodes[-3].key, "main.norm"), ("main.norm", "head")]
    prev = "main.norm" if cfg.mtp_input_norm else nodes[-3].key  # the h^0 fed to module 1
    for k in range(1, cfg.mtp_depth + 1):
        cx, n = 2.4 * k, T - k
        state = "after" if cfg.mtp_input_norm else "before"
        nodes += [
            Node(f"mtp{k}.emb", f"Emb(t_{{i+{k}}}) (shared)", cx + 0.55, 1, shp(B, n, d),
                 f"the SAME embedding table, on tokens[:, {k}:] (one-token shift per depth)", 0, "shared"),
            Node(f"mtp{k}.enorm", "enorm", cx + 0.55, 2, shp(B, n, d), norm_eq + f"<br>on Emb(t_{{i+{k}}})", d, "norm"),
            Node(f"mtp{k}.hnorm", "hnorm", cx - 0.55, 2, shp(B, n, d),
                 norm_eq + f"<br>on h^{k - 1}_i[:, :-1] ({state} the previous stage's final norm)", d, "norm"),
            Node(f"mtp{k}.eh_proj", f"eh_proj M_{k} [e ; h]", cx, 3, shp(B, n, d),
                 f"(21) h'^{k}_i = M_{k} [enorm(Emb(t_{{i+{k}}})) ; hnorm(h^{k - 1}_i)]<br>"
                 f"concat {shp(B, n, 2 * d)} -> M_{k}: {shp(d, 2 * d)}; embedding first as in the checkpoint "
                 "(the report writes hidden first)" + (eh_note if fp8_mtp else ""), 2 * d * d, "mtp"),
            Node(f"mtp{k}.block", f"TRM_{k}", cx, 4, shp(B, n, d),
                 f"(22) h^{k}_{{1:T-{k}}} = TRM_{k}(h'^{k}_{{1:T-{k}}})<br>" + block_eq + fp8_mtp, block_params(cfg),
                 "mtp"),
            Node(f"mtp{k}.norm", "shared_head.norm", cx, 5, shp(B, n, d), norm_eq, d, "norm"),
            Node(f"mtp{k}.head", "Output head (shared)", cx, 6, shp(B, n, V),
                 f"(23) P^{k}_{{i+{k + 1}}} = softmax(W_O shared_head.norm(h^{k}_i)): the SAME W_O as the main "
                 f"model; [:, i] predicts t_{{i+{k + 1}}}", 0, "shared"),
        ]
        edges += [(f"mtp{k}.emb", f"mtp{k}.enorm"), (prev, f"mtp{k}.hnorm"), (f"mtp{k}.enorm", f"mtp{k}.eh_proj"),
                  (f"mtp{k}.hnorm", f"mtp{k}.eh_proj"), (f"mtp{k}.eh_proj", f"mtp{k}.block"),
                  (f"mtp{k}.block", f"mtp{k}.norm"), (f"mtp{k}.norm", f"mtp{k}.head")]
        prev = f"mtp{k}.norm" if cfg.mtp_input_norm else f"mtp{k}.block"
    return nodes, edges


def half_size(n: Node) -> tuple[float, float]:
    """Half width and half height of a node's box: the main column is wider than an MTP module's."""
    return (0.5, 0.3) if n.key.startswith("mtp") else (0.7, 0.34)


def node_traces(nodes: list[Node]) -> list[go.Scatter]:
    """One filled rectangle per node; hovering anywhere on it shows the label, shape, equation, parameters."""
    traces = []
    for n in nodes:
        w, h = half_size(n)
        traces.append(go.Scatter(
            x=[n.x - w, n.x + w, n.x + w, n.x - w, n.x - w], y=[n.y - h, n.y - h, n.y + h, n.y + h, n.y - h],
            mode="lines", fill="toself", fillcolor=COLORS[n.kind], line=dict(color="#555", width=1),
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
                    showarrow=True, arrowhead=2, arrowwidth=1.2, arrowcolor="#444", text="")

    fig = go.Figure(node_traces(nodes))
    arrows = [arrow(by_key[a], by_key[b]) for a, b in edges]
    labels = [dict(x=n.x, y=n.y, text=f"{n.label}<br><span style='font-size:10px'>{n.shape}</span>",
                   showarrow=False, font=dict(size=11)) for n in nodes]
    top = max(n.y for n in nodes)
    fig.update_layout(annotations=arrows + labels, title=title, height=110 + 70 * (top + 1), hovermode="closest",
                      width=FIG_WIDTH,
                      xaxis=dict(visible=False, range=[-1.1, max(n.x for n in nodes) + 1.1]),
                      yaxis=dict(visible=False, range=[-0.6, top + 0.6]), plot_bgcolor="white",
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


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
        return (f"d = {c.d_model}, L = {c.n_layers}, heads = {c.n_heads}, d_ff = {c.d_ff}, V = {c.vocab_size}, "
                f"D = {c.mtp_depth} MTP module(s), FP8 linears: {c.fp8}; hover a box for its equation")

    def update(self) -> None:
        self.graph = architecture_graph(self.config, self.batch.value, self.seq_len.value)
        self.redraw.request()

    def draw(self) -> None:
        nodes, _ = self.graph
        n_edges = len(self.graph[1])
        with self.fig.batch_update():
            for tr, n in zip(self.fig.data, nodes):
                tr.text = hover_text(n)
            for ann, n in zip(self.fig.layout.annotations[n_edges:], nodes):
                ann.text = f"{n.label}<br><span style='font-size:10px'>{n.shape}</span>"


def architecture_view(model_or_config, batch: int = 1, seq_len: int | None = None,
                      interactive: bool | None = None) -> ArchitectureView:
    """The main model and its MTP modules with tensor shapes for `model.config` (or a ModelConfig);
    hover a box for its equation and parameter count; sliders set the batch size and sequence length."""
    cfg = model_or_config if isinstance(model_or_config, ModelConfig) else model_or_config.config
    return ArchitectureView(cfg, batch, seq_len, interactive)
