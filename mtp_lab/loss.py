"""The MTP training objective, equations (24)-(25) of the DeepSeek-V3 report, and its lambda schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import MTPOutput

# DeepSeek-V3: lambda = 0.3 for the first 10T training tokens, 0.1 for the remaining 4.8T.
DEEPSEEK_LAMBDA_HIGH = 0.3
DEEPSEEK_LAMBDA_LOW = 0.1
DEEPSEEK_LAMBDA_SWITCH = 10.0 / 14.8


@dataclass
class LossParts:
    total: torch.Tensor          # main + mtp: what is back-propagated
    main: torch.Tensor           # next-token cross-entropy of the main model
    mtp: torch.Tensor            # L_MTP = (lambda / D) * sum_k L^k (zero when D = 0)
    depth: list[torch.Tensor]    # L^1 .. L^D, each as normalised by `normalize`
    lam: float                   # the lambda used


def mtp_loss(out: MTPOutput, targets: torch.Tensor, lam: float, normalize: str = "report") -> LossParts:
    """Main cross-entropy plus the MTP loss.

    `targets` (B, T) holds the next token of each input position: targets[:, i] = t_{i+1}, as in
    nanoGPT's (x, y) pairs. Depth k at position i predicts t_{i+k+1} = targets[:, i+k], so its
    T-k logits line up with targets[:, k:].

    (24)  L^k = -(1/T) sum_{i=2+k}^{T+1} log P^k_i[t_i]     (report indexing; T-k terms over T)
    (25)  L_MTP = (lambda / D) sum_{k=1}^{D} L^k

    normalize="report" divides each depth's summed loss by T as the report writes it;
    normalize="mean" divides by the T-k positions that have a target (a plain average).
    Every target must be a token id in [0, V): there is no ignore_index (torch's -100 raises ValueError).
    """
    if normalize not in ("report", "mean"):
        raise ValueError(f"normalize must be 'report' or 'mean', got {normalize!r}")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be a tensor of integer token ids (int64), got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if targets.shape != out.logits.shape[:2]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal the logits' (B, T) "
                         f"{tuple(out.logits.shape[:2])}")
    B, T = targets.shape
    D = len(out.mtp_logits)
    if D and T <= D:
        raise ValueError(f"sequence length T={T} must exceed mtp_depth D={D}: depth D needs T-D >= 1 positions")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be a finite number >= 0 (DeepSeek-V3: 0.3, then 0.1), got {lam!r}")
    V = out.logits.shape[-1]
    if targets.numel() == 0:
        raise ValueError("targets is empty (batch size 0): give at least one sequence")
    lo, hi = torch.stack(torch.aminmax(targets)).tolist()  # cheap: one pass over the (B, T) ids, one sync
    if lo < 0 or hi >= V:
        raise ValueError(f"targets must be token ids in [0, {V}), got range [{lo}, {hi}]; mtp_loss has no "
                         f"ignore_index (-100 is not skipped): crop padded positions out before the loss")
    targets = targets.long()
    main = F.cross_entropy(out.logits.reshape(-1, V).float(), targets.reshape(-1))
    depth = []
    for k, logits_k in enumerate(out.mtp_logits, start=1):
        nll = F.cross_entropy(logits_k.reshape(-1, V).float(), targets[:, k:].reshape(-1), reduction="sum")
        depth.append(nll / (B * T if normalize == "report" else B * (T - k)))
    mtp = (lam / D) * torch.stack(depth).sum() if D else main.new_zeros(())
    return LossParts(total=main + mtp, main=main, mtp=mtp, depth=depth, lam=lam)


def mtp_lambda(progress: float, high: float = DEEPSEEK_LAMBDA_HIGH, low: float = DEEPSEEK_LAMBDA_LOW,
               switch: float = DEEPSEEK_LAMBDA_SWITCH) -> float:
    """DeepSeek-V3's step schedule: `high` until `switch` of training (10T of 14.8T tokens), then `low`.

    progress: fraction of training done, in [0, 1].
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return high if progress < switch else low
