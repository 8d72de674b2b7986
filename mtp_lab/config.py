"""Model configuration: one frozen dataclass, validated on construction, plus named presets; and the two argument
checks every module shares (`check_int`, `check_choice`: the allowed values of an option are read from its
`Literal` type, so each set is written once)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Literal, get_args

FP8Recipe = Literal["main", "mtp", "all"]     # block linears put in FP8: main blocks, MTP modules, or both
FP8Scope = Literal["none", FP8Recipe]         # ModelConfig.fp8: a recipe scope, or none


SEED_LIMIT = 2 ** 64           # seeds lie in [0, 2^64): what torch.manual_seed and numpy's SeedSequence take
MAX_STEPS = 2 ** 40            # bound on step counts and batch sizes: a larger one is a typo, not a plan
MAX_LR = 10.0                  # a peak learning rate above this only diverges (and near 3e38 overflows AdamW)
MAX_PARAMETERS = 2 ** 30       # a ModelConfig larger than this (4 GiB of fp32 weights) is refused before it is built
MAX_MTP_DEPTH = 32             # D; DeepSeek-V3 uses 1, and drafts this deep are almost never accepted
MAX_SEQ_LEN = 2 ** 16          # max_seq_len; the rotary table and every KV cache are this long


def check_int(name: str, value, minimum: int = 0, note: str = "", maximum: int | None = None) -> int:
    """`value` itself if it is a real int (not a bool, float or string) in [minimum, maximum], else a ValueError
    that names the argument, what it must be (plus `note`, e.g. " (0 = plain decoding)") and what it got."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        kind += f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be {kind}{note}, got {value!r}")
    return value


def check_seed(name: str, value) -> int:
    """A seed: an int in [0, 2^64) (not a bool or float)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2^64), got {value!r}")
    return value


def check_number(name: str, value, minimum: float = 0.0, maximum: float = math.inf, positive: bool = False,
                 note: str = "") -> float:
    """`value` itself if it is a finite real number (int or float, not a bool or string) in [minimum, maximum]
    (`positive`: also > 0), else a ValueError naming the argument, the range and what it got."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and \
        minimum <= value <= maximum and not (positive and value <= 0)
    if not ok:
        rng = f"> {minimum:g}" if positive and minimum == 0 else f">= {minimum:g}"
        rng += f" and <= {maximum:g}" if math.isfinite(maximum) else ""
        raise ValueError(f"{name} must be a finite number {rng}{note}, got {value!r}")
    return value


def check_choice(name: str, value, options, note: str = ""):
    """`value` itself if it is one of the values of the Literal type `options`, else a ValueError listing them."""
    allowed = get_args(options)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; {name} must be one of {', '.join(map(repr, allowed))}{note}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    # defaults = the "course" preset, the shipped course model (assets/course_model)
    vocab_size: int = 2048        # number of token ids (the BPE tokenizer's vocabulary)
    d_model: int = 128            # width d of every hidden state h (report: d)
    n_layers: int = 24            # L, transformer blocks in the main model
    n_heads: int = 4              # attention heads per block; d_model must divide evenly
    d_ff: int = 352               # hidden width of each SwiGLU feed-forward
    max_seq_len: int = 256        # longest sequence (prompt + generated) the rotary table and KV cache hold
    mtp_depth: int = 2            # D, number of sequential MTP modules (0 = plain next-token model)
    norm_eps: float = 1e-6        # epsilon inside every RMSNorm: x / sqrt(mean(x^2) + eps)
    rope_theta: float = 10000.0   # base of the rotary position embedding frequencies
    mtp_input_norm: bool = True   # True: feed MTP module k the hidden state AFTER the previous stage's final
                                  # norm (vLLM/SGLang); False: the state before it (an early vLLM variant)
    init_std: float = 0.02        # standard deviation of the normal initialisation of weights
    fp8: FP8Scope = "none"        # which block linears run in simulated FP8 (DeepSeek-V3 recipe, mtp_lab.fp8_linear):
                                  # "none" | "main" (main blocks) | "mtp" (MTP modules) | "all"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
            _check_int(self, name, minimum=1, maximum=MAX_PARAMETERS)
        _check_int(self, "max_seq_len", minimum=1, maximum=MAX_SEQ_LEN)
        _check_int(self, "mtp_depth", minimum=0, note=" (D = 0 disables MTP)", maximum=MAX_MTP_DEPTH)
        for name in ("norm_eps", "rope_theta", "init_std"):
            _check_positive_float(self, name)
        if not isinstance(self.mtp_input_norm, bool):
            raise ValueError(f"ModelConfig.mtp_input_norm must be True or False (a bool, not a string or number), "
                             f"got {self.mtp_input_norm!r}")
        check_choice("ModelConfig.fp8", self.fp8, FP8Scope, " (which block linears run in FP8)")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads}); choose n_heads that divides d_model")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"ModelConfig head size d_model/n_heads = {self.d_model // self.n_heads} must be "
                             f"even for rotary embeddings; change d_model or n_heads")
        if self.parameters > MAX_PARAMETERS:                # checked before any tensor is allocated
            raise ValueError(f"ModelConfig has {self.parameters:,} parameters, more than the {MAX_PARAMETERS:,} "
                             f"(4 GiB of fp32 weights) mtp_lab builds; lower n_layers, d_model, d_ff, vocab_size "
                             f"or mtp_depth")

    @property
    def parameters(self) -> int:
        """The parameter count of MTPModel(self), from the shapes alone (nothing is allocated):
        embedding and head 2VC, each block 4C^2 (attention) + 3CF (SwiGLU) + 2C (norms), the final norm C,
        and each MTP module 3C (enorm, hnorm, shared_head.norm) + 2C^2 (eh_proj) + a block."""
        C, F = self.d_model, self.d_ff
        block = 4 * C * C + 3 * C * F + 2 * C
        return 2 * self.vocab_size * C + self.n_layers * block + C + self.mtp_depth * (3 * C + 2 * C * C + block)

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


def _default(name: str):
    return next(f.default for f in dataclasses.fields(ModelConfig) if f.name == name)


def _check_int(cfg: "ModelConfig", name: str, minimum: int, note: str = "", maximum: int | None = None) -> None:
    """check_int on a field, the message naming ModelConfig.name and its default."""
    check_int(f"ModelConfig.{name}", getattr(cfg, name), minimum, f"{note}, e.g. {_default(name)}", maximum)


def _check_positive_float(cfg: "ModelConfig", name: str) -> None:
    """A finite number > 0 (int or float; not a bool or string, not NaN or inf)."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"ModelConfig.{name} must be a finite number > 0, e.g. {_default(name)}, got {value!r}")


PRESETS: dict[str, ModelConfig] = {
    # A few thousand parameters: for unit tests, runs in milliseconds.
    "tiny": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, mtp_depth=2),
    # The shipped course model (assets/course_model): deep and thin, so that one MTP module (one block plus the
    # shared head) costs c ~ 0.08 of a main forward (the shape sweep in assets/MODEL_CARD.md). Trained on the
    # Python standard library on 2 CPU cores.
    "course": ModelConfig(),
    # The previous course model's shape (assets/shallow_model): 4 blocks, one MTP module costs c ~ 0.4 of it.
    "shallow": ModelConfig(vocab_size=2048, d_model=192, n_layers=4, n_heads=4, d_ff=512, max_seq_len=256,
                           mtp_depth=2),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A named preset, optionally with fields overridden: get_preset("course", mtp_depth=1)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
