"""Sizes of every view: fonts, lines, markers, heights, and the presenter switch that scales them all.

    import mtp_lab.viz as viz
    viz.presenter()          # projector: fonts, lines, markers and legends 1.5 x (presenter(2.0) for 2 x)
    viz.presenter(False)     # back to screen sizes

The scale is read when a view is built: views built afterwards honour it, views already shown keep theirs.
Figures have no fixed width (they fill their cell: plotly autosize); heights grow with the scale, less than
the fonts do. `template()` is the plotly template of the current scale (fonts, legend, the palette's
colours in order), `apply(fig)` gives any plotly figure (a notebook's own plot too) the course's look.
"""

from __future__ import annotations

from functools import lru_cache

import plotly.graph_objects as go
import plotly.io as pio

from .palette import COLORS, DEPTHS, color

FONT, TITLE, SMALL = 13, 15, 11     # px at scale 1: text, panel titles, secondary text (shapes under labels)
LINE, MARKER = 2.0, 7.0             # px at scale 1
PRESENTER_SCALE = 1.5
_state = {"scale": 1.0}


def presenter(scale: float | bool = PRESENTER_SCALE) -> float:
    """Projector-size fonts, lines and markers for every view built from now on; returns the scale in force.

    presenter() or presenter(True): 1.5 x; presenter(2.0): 2 x; presenter(False) or presenter(1): off.
    """
    if scale is True:
        scale = PRESENTER_SCALE
    elif scale is False or scale is None:
        scale = 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.5 <= scale <= 4:
        raise ValueError(f"presenter scale must be a number in [0.5, 4] (or True/False), got {scale!r}")
    _state["scale"] = float(scale)
    return _state["scale"]


def scale() -> float:
    """The scale in force (1.0 unless presenter() turned it up)."""
    return _state["scale"]


def px(size: float) -> float:
    """A size in pixels at scale 1 (font, line width, marker, margin) at the current scale."""
    return round(size * scale(), 1)


def height(base: int) -> int:
    """A figure height at scale 1 -> at the current scale: text takes more room, plot areas need not."""
    return round(base * (1 + 0.5 * (scale() - 1)))


def line(name: str | None = None, width: float = LINE, **kw) -> dict:
    """plotly `line` of palette colour `name`, `width` px at scale 1."""
    return dict(color=color(name), width=px(width), **kw) if name else dict(width=px(width), **kw)


def marker(name: str | None = None, size: float = MARKER, **kw) -> dict:
    """plotly `marker` of palette colour `name`, `size` px at scale 1."""
    return dict(color=color(name), size=px(size), **kw) if name else dict(size=px(size), **kw)


def font(size: float = FONT, **kw) -> dict:
    return dict(size=px(size), **kw)


def margin(t: int = 40, l: int = 50, r: int = 20, b: int = 40) -> dict:  # noqa: E741 (plotly's name)
    return dict(t=px(t), l=px(l), r=px(r), b=px(b))


def css_font(size: float = FONT) -> str:
    """CSS font-size for HTML text of a view (generated text, tables, status lines)."""
    return f"font-size:{px(size)}px"


def widget_class(s: float | None = None) -> str:
    """CSS class of a view's widget box at scale `s` (default: the current scale): 'mtp-lab-scale-150' at 1.5."""
    return f"mtp-lab-scale-{round(100 * (scale() if s is None else s))}"


def widget_css(s: float | None = None) -> str:
    """A <style> for the widget controls of views built at scale `s` (default: the current one), scoped to
    widget_class(s): ipywidgets' own size variables (labels, readouts, buttons, dropdowns, text boxes, slider
    handles, row heights) and the inline code of tables, so that presenter() enlarges the controls with the plots."""
    s = scale() if s is None else s
    font, row = round(FONT * s, 1), round(28 * (1 + 0.6 * (s - 1)))
    sizes = {"font-size": f"{font}px", "inline-height": f"{row}px", "inline-label-width": f"{round(80 * s)}px",
             "inline-width": f"{round(300 * s)}px", "inline-width-short": f"{round(150 * s)}px",
             "inline-width-tiny": f"{round(60 * s)}px", "slider-handle-size": f"{round(16 * s)}px",
             "slider-track-thickness": f"{round(4 * s)}px", "menu-item-height": f"{round(24 * s)}px"}
    variables = "; ".join(f"--jp-widgets-{k}: {v}" for k, v in sizes.items())
    c = widget_class(s)
    return (f"<style>.{c} {{{variables}; --jp-ui-font-size1: {font}px; --jp-code-font-size: {font}px}} "
            f".{c} .widget-label, .{c} .widget-readout, .{c} .widget-label-basic, .{c} button, .{c} select, "
            f".{c} input, .{c} textarea, .{c} option, .{c} code {{font-size: {font}px}}</style>")


@lru_cache(maxsize=8)
def _template(s: float) -> go.layout.Template:
    t = go.layout.Template(pio.templates["plotly_white"])
    size = round(FONT * s, 1)
    t.layout.update(font=dict(size=size), title=dict(font=dict(size=round(TITLE * s, 1))),
                    legend=dict(font=dict(size=size)), hoverlabel=dict(font=dict(size=size)),
                    colorway=[COLORS["main"], *DEPTHS, COLORS["corrected"], COLORS["bonus"], COLORS["accepted"]])
    t.layout.annotationdefaults = dict(font=dict(size=size))
    t.data.scatter = [go.Scatter(line=dict(width=round(LINE * s, 1)), marker=dict(size=round(MARKER * s, 1)))]
    return t


def template() -> go.layout.Template:
    """The plotly template of the current scale (based on plotly_white)."""
    return _template(scale())


def apply(fig: go.Figure, base_height: int | None = None) -> go.Figure:
    """The course's look on `fig`: the current template, the cell's full width (autosize, no fixed width), and
    `base_height` (px at scale 1) scaled."""
    fig.update_layout(template=template(), autosize=True, width=None)
    if base_height is not None:
        fig.update_layout(height=height(base_height))
    return fig


def subplots(**kw) -> go.Figure:
    """make_subplots(**kw) with its panel titles at the current title size."""
    from plotly.subplots import make_subplots

    fig = make_subplots(**kw)
    fig.update_annotations(font_size=px(TITLE))   # only the panel titles exist yet
    return fig


AXIS_BELOW, LEGEND_ROW = 52, 20     # px at scale 1 under a panel: tick labels + axis title; one legend entry


def panel_grid(base_height: int, legend_rows: int, top: int = 60, axis_px: int = AXIS_BELOW,
               **subplot_kw) -> go.Figure:
    """make_subplots for panels that each have a legend of up to `legend_rows` entries under their x axis
    (panel_legend): the gap between rows holds the tallest x axis (`axis_px` at scale 1: tick labels and
    title), that legend and the next row's panel titles."""
    h, t = height(base_height), px(top)
    b = px(AXIS_BELOW + LEGEND_ROW * legend_rows + 8)
    gap = px(axis_px + LEGEND_ROW * legend_rows + 8 + TITLE + 10) / (h - t - b)
    fig = subplots(vertical_spacing=gap, **subplot_kw)
    fig.update_layout(height=h, margin=dict(t=t, b=b, l=px(60), r=px(20)), showlegend=True)
    return fig


def panel_legend(fig: go.Figure, legend: str, xaxis: str, yaxis: str, axis_px: int = AXIS_BELOW) -> None:
    """Put legend `legend` ("legend", "legend2", ...) under the panel of `xaxis`/`yaxis`, `axis_px` (at scale 1)
    below the plot area: under its tick labels and axis title. Left-aligned with the panel, but right-aligned
    in the last column, so that a wide legend does not push the figure's right margin in."""
    x0, x1 = fig.layout[xaxis].domain
    x, anchor = (x1, "right") if x1 > 0.99 else (x0, "left")
    fig.layout[legend] = dict(x=x, xanchor=anchor, y=paper_below(fig, yaxis, axis_px), yanchor="top",
                              orientation="v", font=dict(size=px(FONT)), bgcolor=COLORS["transparent"],
                              tracegroupgap=0)


def paper_below(fig: go.Figure, yaxis: str, offset: float) -> float:
    """The paper y `offset` px (at scale 1) under the bottom of `yaxis`'s panel (fixed height, margins)."""
    plot_h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    return fig.layout[yaxis].domain[0] - px(offset) / plot_h
