"""Interactive views for JupyterLab (ipywidgets + plotly FigureWidget), with static fallbacks.

Entry points (each returns a dashboard; display it as the last expression of a cell):
- rmsnorm_dashboard(model, tokenizer): RMSNorm statistics per layer and MTP module.
- architecture_view(model or config): main model and MTP modules with tensor shapes.
- fp8_explorer(model, tokenizer): E4M3/E5M2 number lines, granularity vs outliers, layer scales, error vs K.
- speculative_dashboard(model, tokenizer): live speculative decoding, step by step or playing.
- speculative_race(model, tokenizer): plain vs speculative decoding on the wall clock.
- training_monitor(): live loss curves and lambda, a callback for mtp_lab.train.Trainer.
- speedup_lab(points): predicted speed-up from acceptance, k and draft cost, with measured and production points.
"""

from .architecture import architecture_view
from .common import Throttle, widgets_available
from .fp8view import fp8_explorer
from .race import speculative_race
from .rmsnorm import rmsnorm_dashboard
from .specdec import speculative_dashboard
from .speedup import speedup_lab
from .training import training_monitor

__all__ = ["rmsnorm_dashboard", "architecture_view", "fp8_explorer", "speculative_dashboard", "speculative_race",
           "training_monitor", "speedup_lab", "Throttle", "widgets_available"]
