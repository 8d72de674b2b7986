"""Interactive views for JupyterLab (ipywidgets + plotly FigureWidget), with static fallbacks.

Entry points (each returns a dashboard; display it as the last expression of a cell):
- rmsnorm_dashboard(model, tokenizer): RMSNorm statistics per layer and MTP module.
- architecture_view(model or config): main model and MTP modules with tensor shapes.
- fp8_explorer(model, tokenizer): E4M3/E5M2 number lines, granularity vs outliers, layer scales, error vs K.
"""

from .architecture import architecture_view
from .common import Throttle, widgets_available
from .fp8view import fp8_explorer
from .rmsnorm import rmsnorm_dashboard

__all__ = ["rmsnorm_dashboard", "architecture_view", "fp8_explorer", "Throttle", "widgets_available"]
