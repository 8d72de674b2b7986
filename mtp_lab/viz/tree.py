"""The tree view: a tree drafter's proposal at each step, the path the main model accepted, the branches it did
not take and who proposed each node (MTP module j or n-gram lookup), step by step.

Data comes from `mtp_lab.decoding.speculative_steps` with a tree drafter ("suffix", "mtp-tree", "hybrid",
"adaptive"); the plain function `tree_layout` turns one step into node positions, edges and each node's status, which
`TreeView` draws (nodes at x = depth, leaves spread over y in depth-first order, parents centred on children).
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from ..decoding import GenerationStats, make_drafter, speculative_steps
from . import theme
from .common import Dashboard, encode, escape, html_widget, plural

SYMBOL = {"mtp": "circle", "ngram": "square", "mtp+ngram": "diamond"}       # marker shape = who proposed the node
STATUS = ("accepted", "rejected", "not reached", "corrected", "bonus")


def tree_layout(step, mtp_depth: int) -> dict:
    """One SpeculativeStep of a tree drafter as plain data.

    Nodes: the root (the last committed token, "root"), every drafted node, and the step's own token (the corrected
    token after a miss, or the bonus after a leaf) hung under the last accepted node. Status of a drafted node:
    "accepted" (on the path), "rejected" (its parent was reached but the target's draw was another token),
    "not reached" (an ancestor was rejected). Source: "mtp", "ngram" or "mtp+ngram"; an MTP node at depth e came
    from module min(e, D). Returns {"x", "y", "token", "status", "source", "module", "edges" [(i, j) indices]}.
    """
    parents = step.parents if step.parents is not None else list(range(-1, len(step.draft_tokens) - 1))
    N = len(parents)
    children: list[list[int]] = [[] for _ in range(N + 1)]               # entry 0 is the root, node i is i + 1
    for i, par in enumerate(parents):
        children[par + 1].append(i + 1)
    on_path = {0, *[i + 1 for i in step.path]}
    last = step.path[-1] + 1 if step.path else 0                          # the deepest accepted node
    extra = N + 1                                                         # the step's own token
    children.append([])
    children[last].append(extra)
    y: dict[int, float] = {}
    leaves = [0]

    def place(e: int) -> float:
        if not children[e]:
            y[e] = float(leaves[0])
            leaves[0] += 1
        else:
            y[e] = sum(place(c) for c in children[e]) / len(children[e])
        return y[e]

    place(0)
    status, depth = ["root"], [0]
    for e in range(1, N + 1):
        depth.append(_depth(parents, e))
        par = parents[e - 1] + 1
        status.append("accepted" if e in on_path else "rejected" if par in on_path else "not reached")
    status.append("bonus" if step.is_bonus else "corrected")
    depth.append(depth[last] + 1)
    sources = list(step.sources) if step.sources else ["mtp"] * N
    source = ["root"] + sources + ["target"]
    module = [None] + [min(depth[e], mtp_depth) if "mtp" in sources[e - 1] else None
                       for e in range(1, N + 1)] + [None]
    token = [None] + list(step.draft_tokens) + [step.next_token]
    edges = [(par + 1, i + 1) for i, par in enumerate(parents)] + [(last, extra)]
    return {"x": depth, "y": [y[e] for e in range(N + 2)], "token": token, "status": status, "source": source,
            "module": module, "edges": edges}


def _depth(parents: list[int], e: int) -> int:
    d = 0
    while e > 0:
        e = parents[e - 1] + 1
        d += 1
    return d


class TreeView(Dashboard):
    """Step through a tree drafter's generation: the drafted tree of each step, its accepted path and sources."""

    def __init__(self, model, tokenizer, prompt: str = "def ", drafter: str = "hybrid", num_draft: int = 6,
                 temperature: float = 0.0, max_new_tokens: int = 48, interactive: bool | None = None):
        super().__init__(interactive)
        import ipywidgets as w

        self.model, self.tokenizer = model, tokenizer
        self.settings = dict(drafter=drafter, num_draft=num_draft, temperature=temperature,
                             max_new_tokens=max_new_tokens)
        self.prompt = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
        self.step_button = w.Button(description="step")
        self.reset_button = w.Button(description="reset")
        self.status = html_widget()
        self.text = html_widget()
        self.fig = self.new_figure(self._figure())
        self.step_button.on_click(lambda _: self.handle(self.advance))
        self.reset_button.on_click(lambda _: self.handle(self.reset))
        if self.interactive:
            self.widget = w.VBox([w.HBox([self.prompt, self.step_button, self.reset_button]), self.status,
                                  self.fig, self.text])
        self.reset()
        for _ in range(2):                    # the prefill, then the first tree
            self.advance()
        self.draw()

    def reset(self) -> None:
        ids = encode(self.tokenizer, self.prompt.value)
        if not ids:
            raise ValueError("the prompt is empty after tokenization; type at least one character")
        s = self.settings
        self.drafter = make_drafter(self.model, s["drafter"])
        self.steps = speculative_steps(self.model, ids, s["max_new_tokens"], num_draft=s["num_draft"],
                                       temperature=s["temperature"], seed=0, drafter=self.drafter)
        self.tokens, self.prompt_len = list(ids), len(ids)
        self.stats, self.layout, self.step, self.done = GenerationStats(), None, None, False

    def advance(self) -> None:
        if self.done:
            return
        try:
            step = next(self.steps)
        except StopIteration:
            self.done = True
            return
        self.stats.record(step)
        self.tokens += step.emitted
        if step.draft_tokens:
            self.step, self.layout = step, tree_layout(step, self.model.config.mtp_depth)
        self.done = step.stop_reason is not None

    def _figure(self) -> go.Figure:
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line=theme.line("muted", 1.5), hoverinfo="skip",
                                 showlegend=False))
        for status in ("root",) + STATUS:
            fig.add_trace(go.Scatter(x=[], y=[], mode="markers+text", name=status, textposition="middle right",
                                     marker=theme.marker("ink" if status == "root" else
                                                         "muted" if status == "not reached" else status, 16),
                                     hovertemplate="%{hovertext}<extra></extra>"))
        fig.update_layout(height=theme.height(380), title="the drafted tree of the last step",
                          xaxis=dict(title="depth (draft position)", dtick=1), yaxis=dict(visible=False),
                          margin=theme.margin(t=50, l=30))
        return fig

    def draw(self) -> None:
        lay = self.layout
        s = self.stats
        self.status.value = (f"{plural(s.main_forwards, 'verify forward')}, {plural(s.new_tokens, 'token')}, "
                             f"tau {s.mean_acceptance_length:.2f}; accepted drafts by source: "
                             + html.escape(", ".join(f"{k} {v}" for k, v in sorted(s.accepted_by_source.items())))
                             + " (circle = MTP module, square = n-gram, diamond = both)")
        text = self.tokenizer.decode(self.tokens[self.prompt_len:])
        self.text.value = f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>"
        if lay is None:
            return
        ex, ey = [], []
        for a, b in lay["edges"]:
            ex += [lay["x"][a], lay["x"][b], None]
            ey += [lay["y"][a], lay["y"][b], None]
        with self.fig.batch_update():
            self.fig.data[0].x, self.fig.data[0].y = ex, ey
            for t, status in enumerate(("root",) + STATUS, start=1):
                idx = [i for i, st in enumerate(lay["status"]) if st == status]
                self.fig.data[t].x = [lay["x"][i] for i in idx]
                self.fig.data[t].y = [lay["y"][i] for i in idx]
                self.fig.data[t].text = [self._label(lay, i) for i in idx]
                self.fig.data[t].hovertext = [self._hover(lay, i) for i in idx]
                self.fig.data[t].marker.symbol = [SYMBOL.get(lay["source"][i], "circle") for i in idx]

    def _label(self, lay: dict, i: int) -> str:
        return "t_n" if lay["token"][i] is None else escape(self.tokenizer.decode([lay["token"][i]]))

    def _hover(self, lay: dict, i: int) -> str:
        src = lay["source"][i]
        who = (f"MTP module {lay['module'][i]}" + (" + n-gram" if src == "mtp+ngram" else "")
               if lay["module"][i] else "n-gram lookup" if src == "ngram" else src)
        return f"{self._label(lay, i)}: {lay['status'][i]}, depth {lay['x'][i]}, from {who}"


def tree_view(model, tokenizer, prompt: str = "def ", drafter: str = "hybrid", num_draft: int = 6,
              temperature: float = 0.0, max_new_tokens: int = 48, interactive: bool | None = None) -> TreeView:
    """The tree view: press "step" to see the next verify forward's tree (mtp_lab.viz.tree)."""
    return TreeView(model, tokenizer, prompt, drafter, num_draft, temperature, max_new_tokens, interactive)
