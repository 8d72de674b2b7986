"""Interactive views for JupyterLab (ipywidgets + plotly FigureWidget), with static fallbacks.

Entry points (each returns a dashboard; display it as the last expression of a cell):
- rmsnorm_dashboard(model, tokenizer): RMSNorm statistics per layer and MTP module.
- architecture_view(model or config): main model and MTP modules with tensor shapes.
"""

from .architecture import architecture_view
from .common import Throttle, widgets_available
from .rmsnorm import rmsnorm_dashboard

__all__ = ["rmsnorm_dashboard", "architecture_view", "Throttle", "widgets_available"]
