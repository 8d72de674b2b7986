"""Drafter self-distillation: align the MTP modules with the main model they draft for.

Greedy speculative decoding keeps a draft iff it equals the MAIN model's argmax, not the true next token.
The MTP loss (report eq. 24) trains depth k toward the true token t_{i+k+1}; at inference what matters is
agreement with the main model's own prediction of that token, on the main model's own outputs. This stage
closes that gap, as serving stacks do for their drafters (EAGLE, Medusa-2 "self-distillation"):

  1. the main model, frozen, writes greedy continuations of prompts from the TRAIN split (batched, cached);
  2. only the MTP modules learn (enorm, hnorm, eh_proj, block, shared_head.norm); the embedding and the
     output head are shared with the main model, so they stay frozen too;
  3. depth k at position i is trained toward the main model's distribution at position i+k (both
     predict t_{i+k+1}), on batches of half natural text and half generated text:

        L^k_distill = -1/(T-k) * sum_i sum_v P_main(v | t_0..t_{i+k}) * log P^k_i(v)

That cross-entropy serves greedy decoding. Sampling at temperature 1 keeps a draft with chance
min(1, p/q), so a depth's expected acceptance is sum_v min(p, q) = 1 - TV(p, q), and `loss="tv"` trains toward it
directly (as the Qwen team's Bebop does), on continuations the main model SAMPLES at `temperature` (the text a
sampled generation visits, not its greedy path):

        L^k_tv = 1/(T-k) * sum_i 1/2 sum_v |P_main(v | t_0..t_{i+k}) - P^k_i(v)|

The main model's weights stay bit-identical, so every decoding output is unchanged (speculative decoding
stays lossless); only the acceptance rate moves. DeepSeek-V3 does not do this: its MTP modules come
straight from pre-training with the MTP loss. `mtp-lab distill` runs it on a saved model; `mtp-lab train
--distill-steps N` runs it at the end of training. Both keep the undistilled modules next to the model
(`mtp_undistilled.safetensors`; `load_pretrained(mtp="undistilled")` loads them) for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .config import MAX_LR, MAX_STEPS, check_choice, check_int, check_number, check_seed
from .data import Corpus, sample_batch
from .model import MTPModel, is_mtp
from .sampling import probs_from_logits

DistillLoss = Literal["kl", "tv"]   # cross-entropy to the main model's distribution; total variation from it


@dataclass
class DistillConfig:
    steps: int = 300                  # optimizer steps on the MTP modules
    lr: float = 1e-3                  # peak learning rate (linear warmup, then cosine decay to 0)
    warmup: int = 20                  # warmup steps
    batch_size: int = 16              # sequences per step
    seq_len: int = 128                # tokens per sequence (<= max_seq_len)
    generated: int = 512              # greedy continuations written by the main model before training
    prompt_len: int = 32              # train-split tokens that start each continuation
    generated_fraction: float = 0.5   # share of each batch taken from the continuations (rest: natural text)
    grad_clip: float = 1.0            # max gradient norm of the MTP parameters
    seed: int = 1337                  # the continuations and batches
    loss: DistillLoss = "kl"          # kl: cross-entropy (for greedy decoding); tv: total variation (for sampling)
    temperature: float = 0.0          # the main model's continuations: 0 greedy, > 0 sampled at this temperature

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "generated", "prompt_len"):
            check_int(f"DistillConfig.{name}", getattr(self, name), minimum=1, maximum=MAX_STEPS)
        check_int("DistillConfig.warmup", self.warmup, minimum=0, maximum=MAX_STEPS, note=" (0 = no warmup)")
        check_number("DistillConfig.lr", self.lr, positive=True, maximum=MAX_LR, note=" (the peak learning rate)")
        check_number("DistillConfig.grad_clip", self.grad_clip, positive=True)
        check_number("DistillConfig.generated_fraction", self.generated_fraction, maximum=1.0)
        check_seed("DistillConfig.seed", self.seed)
        check_number("DistillConfig.temperature", self.temperature, note=" (0: greedy continuations)")
        check_choice("DistillConfig.loss", self.loss, DistillLoss)
        if self.prompt_len >= self.seq_len:
            raise ValueError(f"prompt_len ({self.prompt_len}) must be shorter than seq_len ({self.seq_len})")


def lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warmup over cfg.warmup steps (none for 0), then cosine decay to 0 at cfg.steps:
    lr(s) = lr * min(1, (s+1)/warmup) * (1 + cos(pi * s / steps)) / 2."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup)) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))


@torch.inference_mode()
def continuations(model: MTPModel, prompts: torch.Tensor, total_len: int, temperature: float = 0.0, batch: int = 64,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """prompts (N, P) -> (N, total_len): each prompt followed by the main model's continuation, batched with a KV
    cache: greedy at temperature 0 (row i equals generate(model, prompts[i], ...)), else each token drawn from
    softmax(logits / temperature) with `generator`."""
    if total_len > model.config.max_seq_len:
        raise ValueError(f"total_len {total_len} exceeds max_seq_len {model.config.max_seq_len}")
    out, device = [], model.head.weight.device
    for rows in prompts.to(device).split(batch):                                # (b, P)
        cache = model.new_cache(batch=rows.shape[0])
        seq, feed = [rows], rows
        for _ in range(total_len - rows.shape[1]):
            logits, _ = model.forward_main(feed, cache)                           # (b, T, V)
            if temperature == 0:
                feed = logits[:, -1].argmax(-1, keepdim=True)                     # (b, 1)
            else:
                probs = probs_from_logits(logits[:, -1], temperature)             # (b, V)
                # drawn on the CPU, where `generator` lives: the same draws on every device
                feed = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)   # (b, 1)
            seq.append(feed)
        out.append(torch.cat(seq, dim=1))                                         # (b, total_len)
    return torch.cat(out)


def _depths(model: MTPModel, tokens: torch.Tensor):
    """Yields (p, logits_k) for k = 1..D: the frozen main model's distribution at positions k.. (B, T-k, V) and
    depth k's logits (B, T-k, V); depth k at i and the main model at i+k both predict t_{i+k+1}."""
    with torch.no_grad():
        logits, h = model.forward_main(tokens)                                    # (B, T, V), (B, T, C)
        teacher = F.softmax(logits.float(), dim=-1)
    for k in range(1, len(model.mtp) + 1):
        h = h[:, :-1]                                                             # (B, T-k, C)
        logits_k, h = model.forward_mtp(k, h, tokens[:, k:])                      # (B, T-k, V)
        yield teacher[:, k:], logits_k.float()


def distill_losses(model: MTPModel, tokens: torch.Tensor, loss: DistillLoss = "kl") -> list[torch.Tensor]:
    """[L^1..L^D]: from the frozen main model's distribution to each depth's, cross-entropy (`kl`) or total
    variation (`tv`) (module docstring)."""
    if loss == "kl":
        return [-(p * F.log_softmax(logits_k, dim=-1)).sum(-1).mean() for p, logits_k in _depths(model, tokens)]
    return [0.5 * (p - F.softmax(logits_k, dim=-1)).abs().sum(-1).mean() for p, logits_k in _depths(model, tokens)]


@torch.no_grad()
def expected_acceptance(model: MTPModel, tokens: torch.Tensor) -> list[float]:
    """[a^1..a^D]: each depth's mean sum_v min(p, q) = 1 - TV(p, q) over `tokens` (B, T), the chance a draft it
    samples at temperature 1 passes speculative sampling, teacher-forced (depth k given the true tokens before)."""
    return [torch.minimum(p, F.softmax(logits_k, dim=-1)).sum(-1).mean().item()
            for p, logits_k in _depths(model, tokens)]


def distill(model: MTPModel, corpus: Corpus, cfg: DistillConfig, progress: bool = True) -> list[dict]:
    """Self-distil the MTP modules of `model` in place (main model frozen). Returns one record per step."""
    if len(model.mtp) == 0:
        raise ValueError("the model has no MTP modules (mtp_depth = 0): there is no drafter to distil")
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
    train = corpus.splits["train"]
    rng = np.random.default_rng([cfg.seed, 7])
    was_training = model.training
    model.eval()
    prompts, _ = sample_batch(train, cfg.generated, cfg.prompt_len, rng)         # (N, P)
    t0 = time.perf_counter()
    generated = continuations(model, prompts, cfg.seq_len, cfg.temperature,
                              generator=torch.Generator().manual_seed(cfg.seed)).clone()       # (N, T)
    gen_seconds = time.perf_counter() - t0

    student = [p for name, p in model.named_parameters() if is_mtp(name)]
    frozen = [p for name, p in model.named_parameters() if not is_mtp(name)]
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    n_gen = round(cfg.batch_size * cfg.generated_fraction)
    records = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, desc="distill", dynamic_ncols=True)
    model.train()
    try:
        for step in range(cfg.steps):
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            natural, _ = sample_batch(train, cfg.batch_size - n_gen, cfg.seq_len, rng)
            rows = torch.from_numpy(rng.integers(0, len(generated), n_gen))
            x = torch.cat([natural, generated[rows]]).to(model.head.weight.device)  # (B, T)
            losses = distill_losses(model, x, cfg.loss)
            loss = torch.stack(losses).sum()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(student, cfg.grad_clip)
            if not (torch.isfinite(loss) and torch.isfinite(norm)):      # the weights stay those of the last step
                opt.zero_grad(set_to_none=True)
                raise FloatingPointError(f"distillation step {step + 1}: loss {loss.item()}, gradient norm "
                                         f"{float(norm)} (lr {lr:.3g}): not finite; stopped before the update, "
                                         f"nothing written: lower --lr")
            opt.step()
            opt.zero_grad(set_to_none=True)
            records.append({"step": step + 1, "loss": loss.item(), "depth": [d.item() for d in losses],
                            "lr": lr, "grad_norm": float(norm)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        for p, flag in zip(frozen, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if records:
        records[0]["generation_seconds"] = round(gen_seconds, 2)
    return records
