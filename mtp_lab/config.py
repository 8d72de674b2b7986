"""Model configuration: one frozen dataclass, validated on construction, plus named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 2048        # number of token ids (the BPE tokenizer's vocabulary)
    d_model: int = 256            # width d of every hidden state h (report: d)
    n_layers: int = 4             # L, transformer blocks in the main model
    n_heads: int = 4              # attention heads per block; d_model must divide evenly
    d_ff: int = 688               # hidden width of each SwiGLU feed-forward
    max_seq_len: int = 256        # longest sequence (prompt + generated) the rotary table and KV cache hold
    mtp_depth: int = 2            # D, number of sequential MTP modules (0 = plain next-token model)
    norm_eps: float = 1e-6        # epsilon inside every RMSNorm: x / sqrt(mean(x^2) + eps)
    rope_theta: float = 10000.0   # base of the rotary position embedding frequencies
    mtp_input_norm: bool = True   # True: feed MTP module k the hidden state AFTER the previous stage's final
                                  # norm (vLLM/SGLang); False: the state before it (an early vLLM variant)
    init_std: float = 0.02        # standard deviation of the normal initialisation of weights
    fp8: str = "none"             # which block linears run in simulated FP8 (DeepSeek-V3 recipe, mtp_lab.fp8_linear):
                                  # "none" | "main" (main blocks) | "mtp" (MTP modules) | "all"

    def __post_init__(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.mtp_depth, int) or isinstance(self.mtp_depth, bool) or self.mtp_depth < 0:
            raise ValueError(f"ModelConfig.mtp_depth must be an integer >= 0 (D = 0 disables MTP), "
                             f"got {self.mtp_depth!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads}); choose n_heads that divides d_model")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"ModelConfig head size d_model/n_heads = {self.d_model // self.n_heads} must be "
                             f"even for rotary embeddings; change d_model or n_heads")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.init_std > 0:
            raise ValueError(f"ModelConfig.init_std must be > 0, got {self.init_std!r}")
        if self.fp8 not in ("none", "main", "mtp", "all"):
            raise ValueError(f"ModelConfig.fp8 must be one of 'none', 'main', 'mtp', 'all' (which block "
                             f"linears run in FP8), got {self.fp8!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # A few thousand parameters: for unit tests, runs in milliseconds.
    "tiny": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, mtp_depth=2),
    # The shipped course model (assets/): trained on the Python standard library on 2 CPU cores.
    "course": ModelConfig(vocab_size=2048, d_model=192, n_layers=4, n_heads=4, d_ff=512, max_seq_len=256,
                          mtp_depth=2),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A named preset, optionally with fields overridden: get_preset("course", mtp_depth=1)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
