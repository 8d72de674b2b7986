"""Plumbing shared by every view: widget-or-static choice, throttled redraws, tokenizer access.

A view is a `Dashboard`: its figures are created once and updated in place (`batch_update`, whole
arrays replaced). In JupyterLab the figures are plotly FigureWidgets inside ipywidgets containers;
where no widget front end exists (a terminal, a static render, MTP_LAB_STATIC=1) the same figures
are plain `go.Figure`s and the dashboard displays as static HTML instead of failing.
"""

from __future__ import annotations

import abc
import html
import math
import os
import sys
import threading
import time
from typing import Callable

import plotly.graph_objects as go
import torch

from . import theme
from .palette import COLORS

MAX_REDRAWS_PER_SECOND = 20  # what a browser comfortably draws; each redraw is one batch_update message


_STATIC_SAID: list[str] = []   # the reason live views are off in this kernel, once it has been printed


def widgets_available() -> bool:
    """True when a widget front end can show FigureWidgets: a Jupyter kernel, anywidget and ipywidgets importable,
    plotly 6 or newer (its FigureWidget is an anywidget).

    Outside a kernel (a terminal, pytest) views are static figures without a word. In a kernel where the widget
    packages are missing or broken, views are static too, and the reason and the fix are printed once (stderr), never
    silently. MTP_LAB_STATIC=1 forces static figures (for HTML exports).
    """
    if os.environ.get("MTP_LAB_STATIC", "0") not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import anywidget  # noqa: F401  (go.FigureWidget is one)
        import ipywidgets  # noqa: F401
        import plotly
        if int(plotly.__version__.split(".")[0]) < 6:
            raise ImportError(f"plotly {plotly.__version__} is older than 6, whose FigureWidget is an anywidget")
    except Exception as e:  # ImportError, or a half-installed package failing on import
        if not _STATIC_SAID:
            _STATIC_SAID.append(f"{type(e).__name__}: {e}")
            print(f"mtp_lab.viz: live views are off in this kernel ({_STATIC_SAID[0]}); every view shows a static "
                  f"figure. Fix: %pip install anywidget \"plotly>=6\" (with their dependencies), then restart the "
                  f"kernel.", file=sys.stderr)
        return False
    return True


class Throttle:
    """Redraw at most `max_per_second` times a second; a request that comes too early is kept and
    drawn when the interval has passed (trailing edge), so the last state always reaches the screen.

    `request()` draws at once when allowed, else marks the frame pending and (with `trailing=True`)
    starts a timer that draws it. `flush()` draws a pending frame now (end of a run, tests).
    """

    def __init__(self, draw: Callable[[], None], max_per_second: float = MAX_REDRAWS_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic, trailing: bool = True):
        if not max_per_second > 0:
            raise ValueError(f"max_per_second must be > 0, got {max_per_second!r}")
        self.draw, self.clock, self.trailing = draw, clock, trailing
        self.min_interval = 1.0 / max_per_second
        self.last = -math.inf
        self.pending = False
        self.redraws = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()

    def request(self) -> bool:
        """Ask for a redraw. Returns True if it was drawn now, False if deferred."""
        with self._lock:
            wait = self.last + self.min_interval - self.clock()
            if wait <= 0:
                self._draw_locked()
                return True
            self.pending = True
            if self.trailing and self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()
            return False

    def flush(self) -> None:
        """Draw the pending frame, if any, now."""
        with self._lock:
            if self.pending:
                self._draw_locked()

    def _draw_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pending = False
        self.last = self.clock()
        self.redraws += 1
        self.draw()


class Dashboard(abc.ABC):
    """Base of every view: `self.fig` (or several figures), controls, a handler per control.

    Subclasses build their figures with `self.new_figure(...)`, put their widgets in
    `self.widget`, and compute into plain data before calling `self.redraw.request()`.
    """

    def __init__(self, interactive: bool | None = None, max_redraws_per_second: float = MAX_REDRAWS_PER_SECOND):
        self.interactive = widgets_available() if interactive is None else bool(interactive)
        self.figures: list[go.Figure] = []
        self.widget = None  # the ipywidgets container, set by interactive subclasses
        self.scale = theme.scale()   # presenter() scale at build time: figures and controls keep it
        self.redraw = Throttle(self.draw, max_redraws_per_second)

    def new_figure(self, fig: go.Figure | None = None) -> go.Figure:
        """A FigureWidget (interactive) or a plain Figure (static) with `fig`'s traces and layout, in the
        course's look at the current presenter scale, as wide as its cell (theme.apply)."""
        fig = theme.apply(fig if fig is not None else go.Figure())
        out = go.FigureWidget(fig) if self.interactive else go.Figure(fig)
        self.figures.append(out)
        return out

    @abc.abstractmethod
    def draw(self) -> None:
        """Push the current data into the figures (one batch_update per figure)."""

    def handle(self, compute: Callable, *args) -> None:
        """A control's handler: recompute, then redraw. A ValueError (empty prompt, ...) is shown in
        `self.status` (an HTML widget) rather than raised into the kernel's log."""
        try:
            compute(*args)
        except ValueError as e:
            self.status.value = error_html(str(e))
            return
        self.redraw.request()

    def flush(self) -> None:
        """Draw any throttled, not yet drawn frame now."""
        self.redraw.flush()

    def to_html(self) -> str:
        """Static HTML of every figure (plotly.js from its CDN), for static renders."""
        parts = [f.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False)
                 for i, f in enumerate(self.figures)]
        return "\n".join(parts)

    def fit_figures(self, width: float | None = None) -> None:
        """Make plotly redo its autosize now: a relayout of a harmless property (layout.meta, the cell width seen).

        plotly sizes a FigureWidget when it is first drawn; a view drawn before JupyterLab attached it to the page
        gets plotly's default 700 px and keeps it until its next update. FitWatcher calls this once the view is
        on the page and whenever its width changes (window resized, file browser hidden)."""
        for fig in self.figures:
            fig.layout.meta = {"cell_width": width}

    def _prepare_widget(self) -> None:
        """Once, before the first display: the presenter style (scale_controls) and the FitWatcher."""
        if getattr(self, "_prepared", False):
            return
        self._prepared = True
        self.scale_controls()
        watcher = fit_watcher(self.fit_figures)
        if watcher is not None:
            self.widget.children = (*self.widget.children, watcher)

    def scale_controls(self) -> None:
        """At a presenter scale, give the widget box theme.widget_css's class and style (once): its labels, readouts,
        buttons, dropdowns, text boxes and table code grow with the figures' text."""
        import ipywidgets as w

        cls = theme.widget_class(self.scale)
        if self.scale == 1 or cls in self.widget._dom_classes:
            return
        self.widget.add_class(cls)
        self.widget.children = (w.HTML(theme.widget_css(self.scale)), *self.widget.children)

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.interactive and self.widget is not None:
            self._prepare_widget()
            # the widget view, as ipywidgets 8 shows it; written out because ipywidgets 7 (Colab's) has no
            # _repr_mimebundle_ (it displays from _ipython_display_, which a wrapper's mime bundle cannot call)
            return {"application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                                 "model_id": self.widget.model_id},
                    "text/plain": repr(self)}
        return {"text/html": self.to_html(), "text/plain": repr(self)}

    def __repr__(self) -> str:
        mode = "widgets" if self.interactive else "static"
        return f"<{type(self).__name__} ({mode}, {len(self.figures)} figure(s))>"


FIT_WATCHER_JS = """
export default {
  render({ model, el }) {   // reports the width of the view's box: on the page at last, or resized
    let last = 0, timer = null;
    const observer = new ResizeObserver(entries => {
      const width = Math.round(entries[0].contentRect.width);
      if (width > 0 && Math.abs(width - last) > 1) {
        last = width;
        clearTimeout(timer);
        timer = setTimeout(() => model.send({ width }), 100);
      }
    });
    observer.observe(el);
    return () => { clearTimeout(timer); observer.disconnect(); };
  }
};
"""


def fit_watcher(on_width: Callable[[float], None]):
    """An invisible anywidget, the last child of a view's box, that calls on_width(px) when the box first has a
    width on the page and when that width changes; None where anywidget is missing (static views)."""
    try:
        import anywidget
    except ImportError:
        return None

    class FitWatcher(anywidget.AnyWidget):
        _esm = FIT_WATCHER_JS

    watcher = FitWatcher()
    watcher.layout.height = "0px"
    watcher.on_msg(lambda _widget, content, _buffers: on_width(content.get("width")))
    return watcher


def update_alone(fig: go.Figure, index: int, **props) -> None:
    """Set properties of trace `index` in a batch_update of their own, after the draw's main batch.

    For a property that only some traces of a draw set (a per-bar marker colour, hover text): plotly's
    FigureWidget sends a batch as one restyle of every property edited in it, padded for the traces that did not
    set it, and in the browser (plotly 7 in JupyterLab 4) that padding deletes the property on those traces: one
    trace's marker colours reset every other trace's marker colour to the template's colorway
    (tests/test_browser.py checks the drawn colours)."""
    with fig.batch_update():
        fig.data[index].update(**props)


def html_widget(value: str = ""):
    """An ipywidgets HTML (status lines, generated text) in the view's font size at the presenter scale."""
    import ipywidgets as w

    return w.HTML(value, style={"font_size": f"{theme.px(theme.FONT)}px"})


def error_html(message: str) -> str:
    """A status line that reports a rejected input."""
    return f"<span style='color:{COLORS['error']}'>{html.escape(message)}</span>"


def plural(n: int, word: str) -> str:
    """'1 token', '2 tokens', '0 tokens'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` for a `tokenizers.Tokenizer` (Encoding.ids) or any encode() -> list[int].

    A lone surrogate (e.g. "\\ud800", which a text box can hold) has no UTF-8 bytes: a ValueError, which
    dashboards show in their status, instead of the tokenizer's TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the prompt holds {text[e.start]!r} at position {e.start}, a lone surrogate that is "
                         f"not text (it has no UTF-8 encoding); delete it") from None
    out = tokenizer.encode(text)
    ids = getattr(out, "ids", out)
    return [int(i) for i in ids]


def token_texts(tokenizer, ids) -> list[str]:
    """Readable text of each token id on its own (partial UTF-8 bytes decode to the replacement char)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def prompt_tokens(model, tokenizer, text: str) -> torch.Tensor:
    """(1, T) ids of `text` on the model's device, keeping the last max_seq_len tokens."""
    ids = encode(tokenizer, text)
    if not ids:
        raise ValueError("the prompt is empty after tokenization; type at least one character")
    ids = ids[-model.config.max_seq_len:]
    return torch.tensor([ids], dtype=torch.long, device=model.head.weight.device)


def escape(s: str) -> str:
    """HTML-escape one token's text and make its whitespace visible (a token on its own: tables, hovers)."""
    return html.escape(s).replace("\n", "\u21b5").replace(" ", "&nbsp;") or "&#8203;"
