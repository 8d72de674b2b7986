"""mtp_lab: DeepSeek-V3-style Multi-Token Prediction, small enough to read, faithful enough to trust."""

from .checkpoint import CheckpointError, load_model, load_pretrained, save_model
from .config import PRESETS, ModelConfig, get_preset
from .data import Corpus, build_corpus, load_tokenizer, train_tokenizer
from .decoding import (
    DRAFTERS,
    GenerationResult,
    GenerationStats,
    SpeculativeStep,
    generate,
    speculative_accept,
    speculative_generate,
    speculative_steps,
)
from .drafters import MTPDrafter, NGramDrafter
from .fp8 import FORMATS, FP8Format, accumulation_error_vs_k, dequantize, fp8_matmul, quantize
from .fp8_linear import FP8Linear, apply_fp8_recipe, fp8_stats, record_fp8_stats
from .layers import KVCache, RMSNorm
from .loss import LossParts, mtp_lambda, mtp_loss
from .model import ModelCache, MTPModel, MTPModule, MTPOutput
from .sampling import SamplingParams, probs_from_logits
from .train import Callback, History, ProgressBar, StepRecord, TrainConfig, Trainer, evaluate
from .tree import TreeDrafter, measure_costs

try:  # the version is written once, in pyproject.toml; the installed metadata carries it
    from importlib.metadata import PackageNotFoundError, version
    __version__ = version("mtp-lab")
except PackageNotFoundError:  # imported from a checkout that was never installed (pip install -e . fixes it)
    __version__ = "unknown"


def __getattr__(name):
    """`mtp_lab.viz` (plotly, ipywidgets) is imported on first use, not with the package."""
    if name == "viz":
        import importlib
        return importlib.import_module(".viz", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ModelConfig", "PRESETS", "get_preset", "MTPModel", "MTPModule", "MTPOutput", "ModelCache",
    "KVCache", "RMSNorm", "mtp_loss", "mtp_lambda", "LossParts", "__version__",
    "FORMATS", "FP8Format", "quantize", "dequantize", "fp8_matmul", "accumulation_error_vs_k",
    "FP8Linear", "apply_fp8_recipe", "record_fp8_stats", "fp8_stats",
    "generate", "speculative_generate", "speculative_steps", "speculative_accept", "GenerationResult",
    "GenerationStats", "SpeculativeStep", "MTPDrafter", "NGramDrafter", "TreeDrafter", "DRAFTERS", "measure_costs",
    "SamplingParams", "probs_from_logits",
    "load_pretrained", "load_model", "save_model", "CheckpointError", "Corpus", "build_corpus", "load_tokenizer",
    "train_tokenizer", "Trainer", "TrainConfig", "Callback", "History", "ProgressBar", "StepRecord", "evaluate",
]
