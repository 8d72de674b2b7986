"""Training: AdamW, warmup then cosine decay, gradient clipping, bf16 autocast, the MTP lambda schedule,
periodic evaluation, callbacks for live plots, checkpoints with exact resume, and DistributedDataParallel.

Under `torchrun --nproc_per_node=N` (env WORLD_SIZE > 1) the Trainer joins the process group (gloo on
CPU, nccl on CUDA), wraps the model in DDP and samples batches from its own contiguous shard of the
training stream; rank 0 evaluates, logs and saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import load_model, load_train_state, recover, save_checkpoint
from .config import MAX_LR, MAX_STEPS, ModelConfig, check_choice, check_int, check_number, check_seed
from .data import SPLITS, Corpus, eval_batches, sample_batch
from .loss import mtp_lambda, mtp_loss
from .model import MTPModel

Precision = Literal["auto", "bf16", "fp32"]     # bf16 autocast where the hardware has it natively, always, never


@dataclass
class TrainConfig:
    # defaults = the shipped course model's recipe (assets/MODEL_CARD.md: 2 processes under torchrun)
    steps: int = 1800                 # optimizer steps
    batch_size: int = 16              # sequences per step and rank (global batch = batch_size x world size)
    seq_len: int = 128                # training context T (<= the model's max_seq_len)
    lr: float = 2e-3                  # peak learning rate
    min_lr: float = 2e-4              # learning rate at the end of the cosine decay
    warmup: int = 50                  # linear warmup steps
    weight_decay: float = 0.1         # AdamW decay, on matrices only (not norms)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0            # max global gradient norm (0 = no clipping)
    lam: float | None = None          # a constant MTP weight lambda; None = DeepSeek's schedule (0.3, then 0.1)
    eval_interval: int = 100          # evaluate every this many steps (and at the end)
    eval_batches: int = 4             # validation batches per evaluation (fixed windows)
    save_interval: int = 100          # checkpoint every this many steps (and at the end) when out is set
    precision: Precision = "auto"     # "auto" (bf16 where supported), "bf16" or "fp32"
    seed: int = 1337                  # initial weights (the same on every rank) and every batch

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_interval", "eval_batches", "save_interval"):
            check_int(f"TrainConfig.{name}", getattr(self, name), minimum=1, maximum=MAX_STEPS)
        check_int("TrainConfig.warmup", self.warmup, minimum=0, maximum=MAX_STEPS)
        check_number("TrainConfig.lr", self.lr, positive=True, maximum=MAX_LR, note=" (the peak learning rate)")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            check_number(f"TrainConfig.{name}", getattr(self, name))
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2 and
                all(not isinstance(b, bool) and isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        check_choice("precision", self.precision, Precision)
        if self.lam is not None:
            check_number("lambda", self.lam, note=" (or None for the schedule)")
        check_seed("TrainConfig.seed", self.seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def corpus_identity(corpus: Corpus) -> dict:
    """What a run's data depends on, as recorded in its checkpoints: the sha256 of every split's token stream (it
    covers the files, the mix and the tokenizer together), each split's length, and the tokenizer's sha256."""
    tokens = hashlib.sha256()
    for split in SPLITS:
        tokens.update(split.encode() + corpus.splits[split].astype("<u2").tobytes())
    return {"tokens_sha256": tokens.hexdigest(), "tokens": {s: len(corpus.splits[s]) for s in SPLITS},
            "tokenizer_sha256": hashlib.sha256(corpus.tokenizer.to_str().encode()).hexdigest()}


def check_same_data(directory: str | Path, saved: dict | None, data: dict) -> None:
    """ValueError unless `data` (corpus_source + corpus_identity) is the data recorded in a checkpoint (`saved`,
    trainer.json's "data", checked by read_manifest; None in runs saved before the record)."""
    if saved is not None and saved["tokens_sha256"] != data["tokens_sha256"]:
        def show(d):
            return f"root {d.get('root') or 'default'}, mix {d.get('mix', '?')}, tokens {d.get('tokens')}"
        raise ValueError(f"checkpoint {directory} was trained on other data ({show(saved)}) than this run's "
                         f"({show(data)}); resume on the same corpus files, mix and tokenizer, or start a new run")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over cfg.warmup steps, then cosine decay to cfg.min_lr at cfg.steps.

    lr(s) = lr * (s+1)/warmup                                        for s < warmup
    lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,  p = (s - warmup) / (steps - warmup)
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 autocast is fast: CUDA with compute capability 8.0+, or a CPU with native bf16
    instructions (AVX512-BF16 or AMX). Without them (e.g. AVX2-only CPUs) torch emulates bf16 and a
    training step measured about 8x SLOWER than fp32, so "auto" keeps fp32 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported",
                                                                   "_is_amx_tile_supported")]
    return device.type == "cpu" and any(f() for f in native)


@torch.no_grad()
def evaluate(model: MTPModel, batches: list[tuple[torch.Tensor, torch.Tensor]],
             autocast: bool = False) -> dict:
    """Main and per-depth loss (mean nats per predicted token) and top-1 accuracy over fixed batches.

    Also `agree`: for depth k, the fraction of positions i where argmax of depth-k logits at i equals
    argmax of the main logits at i+k (both predict t_{i+k+1}) -- the greedy acceptance proxy.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    D = len(model.mtp)
    sums = {"main": 0.0, "main_acc": 0.0, "depth": [0.0] * D, "acc": [0.0] * D, "agree": [0.0] * D}
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            out = model(x)
        parts = mtp_loss(out, y, lam=1.0, normalize="mean")
        main_pred = out.logits.argmax(-1)                                           # (B, T)
        sums["main"] += parts.main.item()
        sums["main_acc"] += (main_pred == y).float().mean().item()
        for k in range(1, D + 1):
            pred = out.mtp_logits[k - 1].argmax(-1)                                 # (B, T-k)
            sums["depth"][k - 1] += parts.depth[k - 1].item()
            sums["acc"][k - 1] += (pred == y[:, k:]).float().mean().item()
            sums["agree"][k - 1] += (pred == main_pred[:, k:]).float().mean().item()
    n = len(batches)
    model.train(was_training)
    return {"main": sums["main"] / n, "main_acc": sums["main_acc"] / n,
            "depth": [v / n for v in sums["depth"]], "acc": [v / n for v in sums["acc"]],
            "agree": [v / n for v in sums["agree"]]}


@dataclass
class StepRecord:
    step: int                 # optimizer steps done
    loss: float               # total loss back-propagated (main + lambda-weighted MTP)
    main: float               # main next-token loss
    depth: list[float]        # L^1..L^D as in the objective (report normalisation)
    lam: float
    lr: float
    grad_norm: float
    tokens: int               # training tokens seen so far (all ranks)
    elapsed: float            # seconds since fit() started


class Callback:
    """Subscribe to training events (a live plot, a logger). Every method is optional."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step(self, trainer: "Trainer", record: StepRecord) -> None: ...
    def on_eval(self, trainer: "Trainer", step: int, result: dict) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


@dataclass
class History(Callback):
    """Keeps every step record and evaluation: what a plot or a test reads."""
    steps: list[StepRecord] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)

    def on_step(self, trainer, record):
        self.steps.append(record)

    def on_eval(self, trainer, step, result):
        self.evals.append((step, result))


class ProgressBar(Callback):
    """A tqdm bar (terminal or notebook) with the running loss, lambda and learning rate."""

    def on_train_start(self, trainer):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=trainer.cfg.steps, initial=trainer.step, desc="train", dynamic_ncols=True)

    def on_step(self, trainer, record):
        self.bar.update(record.step - self.bar.n)
        self.bar.set_postfix(loss=f"{record.loss:.3f}", main=f"{record.main:.3f}", lam=record.lam,
                             lr=f"{record.lr:.2e}", refresh=False)

    def on_eval(self, trainer, step, result):
        self.bar.write(format_eval(step, result))

    def on_train_end(self, trainer):
        self.bar.close()


def format_eval(step: int, result: dict, split: str = "val") -> str:
    depth = " ".join(f"d{k}={loss:.3f}/{a:.3f}/{g:.3f}" for k, (loss, a, g) in
                     enumerate(zip(result["depth"], result["acc"], result["agree"], strict=True), start=1))
    return f"step {step}: {split} main={result['main']:.3f} acc={result['main_acc']:.3f} " \
           f"[depth loss/acc/agree] {depth}"


class Trainer:
    """Trains an MTPModel on a Corpus. `fit()` runs to cfg.steps; `save(dir)`/`resume(dir)` checkpoint."""

    def __init__(self, model_config: ModelConfig, cfg: TrainConfig, corpus: Corpus,
                 callbacks: list[Callback] | None = None, device: str | torch.device | None = None,
                 corpus_source: dict | None = None):
        """corpus_source: how the corpus was made ({"root": ..., "mix": ...}), recorded in every checkpoint with
        corpus_identity(corpus), so that a resume can use (and check) the same data."""
        if cfg.seq_len > model_config.max_seq_len:
            raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's max_seq_len {model_config.max_seq_len}")
        if corpus.vocab_size != model_config.vocab_size:
            raise ValueError(f"tokenizer vocabulary {corpus.vocab_size} != model vocab_size "
                             f"{model_config.vocab_size}; pass vocab_size={corpus.vocab_size}")
        self.cfg, self.corpus, self.callbacks = cfg, corpus, list(callbacks or [])
        self.data = {**(corpus_source or {}), **corpus_identity(corpus)}
        self.rank, self.world = _init_distributed()
        self.device = torch.device(device or (f"cuda:{_local_rank()}" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(cfg.seed)                        # same initial weights on every rank
        self.model = MTPModel(model_config).to(self.device)
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else None
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=cfg.lr, betas=cfg.betas)
        self.autocast = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(self.device))
        train = corpus.splits["train"]
        shard = len(train) // self.world                  # each rank samples from its own contiguous shard
        self.shard = train[self.rank * shard:(self.rank + 1) * shard]
        self.val_batches = eval_batches(corpus.splits["val"], cfg.eval_batches, cfg.batch_size, cfg.seq_len)
        self.step = 0
        self.elapsed = 0.0
        self.saved_step: int | None = None                 # step of the last checkpoint written or resumed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of `step` on this rank: a function of (seed, rank, step) only, so resume replays it."""
        rng = np.random.default_rng([self.cfg.seed, self.rank, step])
        x, y = sample_batch(self.shard, self.cfg.batch_size, self.cfg.seq_len, rng)
        return x.to(self.device), y.to(self.device)

    def lam_at(self, step: int) -> float:
        return self.cfg.lam if self.cfg.lam is not None else mtp_lambda(step / self.cfg.steps)

    def train_step(self) -> StepRecord:
        """One optimizer step. A non-finite loss or gradient norm raises FloatingPointError before the update,
        so the weights (and any checkpoint) stay those of the last finite step."""
        step, cfg = self.step, self.cfg
        lr, lam = lr_at(step, cfg), self.lam_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.batch(step)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            out = (self.ddp or self.model)(x)
        parts = mtp_loss(out, y, lam)
        parts.total.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                    else float("inf")))
        logged = torch.stack([parts.total.detach(), parts.main.detach(), *[d.detach() for d in parts.depth]])
        if self.world > 1:                                  # log the mean over ranks (NaN anywhere: NaN on all)
            dist.all_reduce(logged)
            logged /= self.world
        logged = logged.tolist()
        if not (math.isfinite(logged[0]) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"training step {step + 1}: loss {logged[0]}, gradient norm {norm} (lambda "
                                     f"{lam}, lr {lr:.3g}): not finite; stopped before the update")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepRecord(step=self.step, loss=logged[0], main=logged[1], depth=logged[2:], lam=lam, lr=lr,
                          grad_norm=norm, tokens=self.step * cfg.batch_size * cfg.seq_len * self.world,
                          elapsed=self.elapsed)

    def evaluate(self) -> dict:
        return evaluate(self.model, self.val_batches, autocast=self.autocast)

    def fit(self, out: str | Path | None = None) -> list[tuple[int, dict]]:
        """Train from self.step to cfg.steps; evaluate and (with `out`) checkpoint periodically. Callbacks see
        on_train_end also when training stops early (Ctrl-C, a non-finite loss)."""
        callbacks = self.callbacks if self.is_main else []
        for cb in callbacks:
            cb.on_train_start(self)
        evals = []
        self.model.train()
        start = time.perf_counter() - self.elapsed
        try:
            while self.step < self.cfg.steps:
                record = self.train_step()
                self.elapsed = record.elapsed = time.perf_counter() - start
                for cb in callbacks:
                    cb.on_step(self, record)
                done = self.step == self.cfg.steps
                if self.is_main and (self.step % self.cfg.eval_interval == 0 or done):
                    result = self.evaluate()
                    evals.append((self.step, result))
                    for cb in callbacks:
                        cb.on_eval(self, self.step, result)
                if out is not None and (self.step % self.cfg.save_interval == 0 or done):
                    self.save(out)
        finally:
            for cb in callbacks:
                cb.on_train_end(self)
        return evals

    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Model checkpoint plus optimizer and step, as one atomic unit (rank 0 only); `resume` continues it
        exactly."""
        if not self.is_main:
            return
        save_checkpoint(directory, self.model, self.corpus.tokenizer, self.optimizer,
                        {"step": self.step, "elapsed": self.elapsed, "train_config": self.cfg.to_dict(),
                         "data": self.data}, dtype)
        self.saved_step = self.step

    def resume(self, directory: str | Path) -> None:
        """Load weights, optimizer moments and step from `directory` (written by save; an interrupted save is
        completed or dropped first, and every file is checked against trainer.json)."""
        recover(directory)
        loaded = load_model(directory, device=self.device)
        if loaded.config != self.model.config:
            raise ValueError(f"checkpoint {directory} has model config {loaded.config}, this run uses "
                             f"{self.model.config}; resume with the same preset and overrides")
        meta = load_train_state(directory, self.optimizer)
        check_same_data(directory, meta.get("data"), self.data)
        self.model.load_state_dict(loaded.state_dict())
        self.step, self.elapsed = meta["step"], float(meta.get("elapsed", 0.0))
        self.saved_step = self.step


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def _init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(_local_rank())
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()
