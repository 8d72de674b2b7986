"""Logits -> next-token probabilities: temperature, top-k, top-p. One rule, shared by AR and speculative decoding.

Speculative sampling is exact for ANY draft distribution q, provided q is the distribution the draft was
actually drawn from: accept with min(1, p/q), else resample from norm(max(0, p - q)), and the emitted token
is distributed as p. Only p must be shaped by the user's rule (it is the output distribution). Shaping q by
the same rule is not needed for exactness; it usually raises acceptance, P(accept) = sum_x min(p(x), q(x)), by
bringing q closer to p. So both engines shape p with `SamplingParams.probs`, and the MTP drafter draws its
drafts from `SamplingParams.probs` of its own logits (and reports that q).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import check_int

TINY_TEMPERATURE = 1e-6    # below it, logits are shifted to max 0 and divided in float64, so that none overflows


def check_sampling(temperature, top_k, top_p) -> None:
    """ValueError naming the first bad setting: temperature a finite number >= 0, top_k None or an int >= 1,
    top_p None or a number in (0, 1]. Shared by probs_from_logits and SamplingParams."""
    t, k, p = temperature, top_k, top_p
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
    if k is not None:
        check_int("top_k", k, minimum=1, note=" (or None: no top-k)")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {p!r}")


def probs_from_logits(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """(..., V) logits -> (..., V) probabilities, computed in at least float32.

    temperature == 0 (greedy): the one-hot distribution at argmax (first index on ties); top_k/top_p ignored.
    Otherwise, in this order (as Hugging Face applies them):
        p = softmax(logits / temperature)
        top-k: keep the k largest logits (ties with the k-th are kept), the rest get probability 0
        top-p: keep the smallest set of most likely tokens whose mass reaches top_p (the token that
               crosses top_p is kept), then renormalise.
    """
    check_sampling(temperature, top_k, top_p)
    V = logits.shape[-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), V).to(logits.dtype)
    if temperature < TINY_TEMPERATURE:     # logits / T would overflow (inf - inf = NaN in softmax), T may be 0 in fp32:
        wide = logits.double()              # shift the max to 0 (softmax is shift-invariant), divide in float64
        logits = ((wide - wide.amax(-1, keepdim=True)) / temperature).to(logits.dtype)     # others -> -inf at worst
    else:
        logits = logits / temperature
    if top_k is not None and top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]                 # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass of the tokens ranked above it already reaches top_p
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what the target p still owes after a draft drawn from q was rejected (speculative
    sampling's correction). p == q up to rounding leaves no mass (such a rejection has probability ~0): then p."""
    r = (p - q.to(p)).clamp_min(0)
    mass = r.sum()
    return r / mass if mass > 0 else p


@dataclass(frozen=True)
class SamplingParams:
    """Validated decoding settings. temperature 0 means greedy (argmax)."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V) logits -> (..., V) probabilities under these settings."""
        return probs_from_logits(logits, self.temperature, self.top_k, self.top_p)

    def sample(self, probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """One token id from a (V,) distribution. Greedy distributions are one-hot: take the argmax, no draw."""
        if self.greedy:
            return int(probs.argmax())
        return int(torch.multinomial(probs, 1, generator=generator))
