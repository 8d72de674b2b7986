"""mtp_lab: DeepSeek-V3-style Multi-Token Prediction, small enough to read, faithful enough to trust."""

from .config import PRESETS, ModelConfig, get_preset
from .layers import KVCache, RMSNorm
from .loss import LossParts, mtp_lambda, mtp_loss
from .model import ModelCache, MTPModel, MTPModule, MTPOutput

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "PRESETS", "get_preset", "MTPModel", "MTPModule", "MTPOutput", "ModelCache",
    "KVCache", "RMSNorm", "mtp_loss", "mtp_lambda", "LossParts", "__version__",
]
