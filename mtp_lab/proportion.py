"""Why proportion matters: the draft cost c of one MTP module relative to the main model, and the speed-up
it allows.

The MTP drafter is always ONE transformer block plus the shared head, whatever the main model's depth, so the
wall-clock gain of MTP drafting depends on the ratio of the two costs (mtp-facts, section 6):

    c = (seconds per draft, as the engine spends them) / (seconds per AR token)
    v(k) = (seconds of one verify forward over k+1 tokens) / (seconds per AR token)

With i.i.d. acceptance alpha the engine emits E = (1 - alpha^(k+1)) / (1 - alpha) tokens per step and spends
k c + v(k) + o AR-token times on it (o: the per-step bookkeeping), so

    speedup(alpha, k, c, v) = E / (k c + v + o)                     (v = 1, o = 0: the textbook tau / (k c + 1))

`measure_draft_cost` times c and v with the engine's own draft and verify clocks on a model with random
weights (acceptance does not matter for the cost per draft), so a learner can see in seconds how c falls as
the main model gets deeper.
"""

from __future__ import annotations

import statistics

import torch

from .config import ModelConfig
from .decoding import generate, speculative_generate
from .drafters import MTPDrafter
from .model import MTPModel


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens per verify step with i.i.d. acceptance alpha and k drafts: 1 + alpha + ... + alpha^k.

    (1 - alpha^(k+1)) / (1 - alpha), written as the sum so that alpha = 1 gives k + 1 (no division by zero).
    """
    return sum(alpha ** j for j in range(k + 1))


def predicted_speedup(alpha: float, k: int, c: float, verify: float = 1.0, overhead: float = 0.0) -> float:
    """Wall-clock speed-up over AR: expected_tokens(alpha, k) / (k c + verify + overhead), all in AR-token units."""
    return expected_tokens(alpha, k) / (k * c + verify + overhead)


def break_even_alpha(k: int, c: float, verify: float = 1.0, overhead: float = 0.0, tol: float = 1e-9) -> float:
    """The acceptance alpha at which speculative decoding is exactly as fast as AR (speed-up 1), by bisection.

    Returns 0.0 when even alpha = 0 pays (impossible with c, verify >= 0 unless k c + verify + overhead <= 1)
    and nan when even alpha = 1 does not (k + 1 <= k c + verify + overhead).
    """
    cost = k * c + verify + overhead
    if expected_tokens(1.0, k) <= cost:
        return float("nan")
    if expected_tokens(0.0, k) >= cost:
        return 0.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:                        # expected_tokens is increasing in alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < cost else (lo, mid)
    return (lo + hi) / 2


def alpha_from_tau(tau: float, k: int, tol: float = 1e-9) -> float:
    """The i.i.d. acceptance alpha whose expected_tokens(alpha, k) equals a measured tau (1 <= tau <= k + 1).

    Measured drafts are not i.i.d. (deeper ones are accepted less often); this "effective alpha" puts a measured
    (tau, speed-up) pair on the same axis as the model's curves.
    """
    if not 1.0 <= tau <= k + 1:
        raise ValueError(f"tau = {tau} must lie in [1, k + 1] = [1, {k + 1}] (tokens per verify step)")
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < tau else (lo, mid)
    return (lo + hi) / 2


def random_model(cfg: ModelConfig, seed: int = 0) -> MTPModel:
    torch.manual_seed(seed)
    return MTPModel(cfg).eval()


@torch.inference_mode()
def measure_draft_cost(cfg: ModelConfig, k: int = 1, new_tokens: int = 48, prompt_len: int = 16,
                       repeats: int = 3, seed: int = 0) -> dict:
    """c and v(k) of `cfg` with random weights, timed by the engine itself (batch 1, this process's threads).

    Each repeat runs AR and a k-draft MTP generation on the same random prompt; c is the engine's draft time
    per drafted token over AR seconds per token, v its verify time per step over the same. Medians over
    `repeats` (with the spread) are returned; the AR run comes first in every repeat, so load hits both alike.
    """
    if prompt_len + new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds max_seq_len {cfg.max_seq_len}")
    model = random_model(cfg, seed)
    drafter = MTPDrafter(model)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=g).tolist()
    generate(model, prompt, 4)                                  # warm-up: allocator, first-call dispatch
    speculative_generate(model, prompt, 4, num_draft=k, drafter=drafter)
    cs, vs, ars = [], [], []
    for _ in range(repeats):
        ar = generate(model, prompt, new_tokens).stats
        spec = speculative_generate(model, prompt, new_tokens, num_draft=k, drafter=drafter).stats
        a = ar.wall_time_s / ar.main_forwards                   # seconds per AR token (prefill included)
        cs.append(spec.draft_time_s / spec.drafted / a)
        vs.append(spec.verify_time_s / spec.main_forwards / a)
        ars.append(1e3 * a)
    return {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "k": k, "c": statistics.median(cs),
            "c_range": (min(cs), max(cs)), "verify": statistics.median(vs), "ar_ms_per_token": statistics.median(ars),
            "threads": torch.get_num_threads()}


def draft_cost_vs_depth(base: ModelConfig, depths=(2, 4, 8, 16, 24), **kwargs) -> list[dict]:
    """measure_draft_cost for main models of several depths, every other field of `base` kept."""
    return [measure_draft_cost(base.replace(n_layers=L), **kwargs) for L in depths]



def bench_point(row: dict) -> dict:
    """One `mtp-lab bench` row (a drafter at one k) in AR-token units: c (per draft), v and o (per main forward),
    the effective alpha, and the measured speed-up: the point the speed-up lab plots."""
    ms = row["ms_per_main_forward"]
    a, k = ms["ar_token"], row["k"]
    c = row["ms_per_draft_forward"] / a if row.get("ms_per_draft_forward") else 0.0
    verify, overhead = ms["verify"] / a, ms["overhead"] / a
    alpha = alpha_from_tau(row["tau"], k)
    return {"drafter": row["drafter"], "k": k, "tau": row["tau"], "alpha": alpha, "c": c, "verify": verify,
            "overhead": overhead, "speedup": row["speedup"]}
