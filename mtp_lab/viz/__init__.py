"""Interactive views for JupyterLab (ipywidgets + plotly FigureWidget), with static fallbacks.

Entry points (each returns a dashboard; display it as the last expression of a cell):
- rmsnorm_dashboard(model, tokenizer): RMSNorm statistics per layer and MTP module.
- architecture_view(model or config): main model and MTP modules with tensor shapes.
- fp8_explorer(model, tokenizer): E4M3/E5M2 number lines, granularity vs outliers, layer scales, error vs K.
- speculative_dashboard(model, tokenizer): live speculative decoding, step by step or playing.
- speculative_race(model, tokenizer): plain vs speculative decoding on the wall clock.
- training_monitor(): live loss curves and lambda, a callback for mtp_lab.train.Trainer.
- speedup_lab(points): predicted speed-up from acceptance, k and draft cost, with measured and production points.
- tree_view(model, tokenizer): a tree drafter's trees step by step: accepted path, rejected branches, sources.
- loss_curves(runs): the training losses of finished runs ({label: History}) in the training monitor's colours.

presenter(scale=1.5) makes every view built afterwards projector-sized (presenter(False) turns it off); the
course's colours (one per meaning: main model, MTP depths, accepted/rejected/corrected/bonus, E4M3/E5M2) are
in mtp_lab.viz.palette; theme.apply(fig) gives a notebook's own plotly figure the same look.
"""

from .architecture import architecture_view
from .common import Throttle, widgets_available
from .fp8view import fp8_explorer
from .race import speculative_race
from .rmsnorm import rmsnorm_dashboard
from .specdec import speculative_dashboard
from .speedup import speedup_lab
from .theme import presenter
from .training import loss_curves, training_monitor
from .tree import tree_view

__all__ = ["rmsnorm_dashboard", "architecture_view", "fp8_explorer", "speculative_dashboard", "speculative_race",
           "training_monitor", "speedup_lab", "tree_view", "loss_curves", "presenter", "Throttle", "widgets_available"]
