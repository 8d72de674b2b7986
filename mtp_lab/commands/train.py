"""`mtp-lab train`: train (or resume) a model on the standard-library corpus; optionally export it.

Runs unchanged under `torchrun --nproc_per_node=N -m mtp_lab.cli train ...` (DistributedDataParallel).
The training flags are TrainConfig's fields (mtp_lab.train); --mtp-depth and --fp8 override ModelConfig's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import get_args

import torch

from ..config import ModelConfig, get_preset
from ..data import Mix
from ..train import TrainConfig
from .flags import ROOT_HELP, add_dataclass_flags, check_output, dataclass_values, set_threads

MODEL_FLAGS = ("mtp_depth", "fp8")   # ModelConfig fields a new run may override on its preset
SKIPPED = {"betas"}                   # TrainConfig fields without a flag


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an MTP model on the Python standard library",
                              description=__doc__)
    p.add_argument("--preset", default=None, help="model preset (default: course; --resume: the run's)")
    add_dataclass_flags(p, ModelConfig, only=MODEL_FLAGS, keep_defaults=False,
                        help_override={"mtp_depth": "override the preset's MTP depth D (0 = none)"})
    p.add_argument("--out", default="runs/course", help="checkpoint folder (default: runs/course)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    again.add_argument("--overwrite", action="store_true",
                       help="start a new run even though --out holds one (replaced at the first checkpoint); "
                            "also lets --export replace a model folder")
    p.add_argument("--export", default=None, help="at the end, also write the model (--export-dtype) and "
                                                  "its val/test metrics to this folder")
    p.add_argument("--export-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    # TrainConfig's fields; a flag left out keeps the default (or, with --resume, the saved run's value)
    add_dataclass_flags(p, TrainConfig, skip=SKIPPED, keep_defaults=False, rename={"lam": "lambda"})
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: the course model's, "
                                                     "assets/course_model/tokenizer.json); a missing file is trained "
                                                     "on the train split and saved there")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary of a newly trained tokenizer "
                                                                   "(default: the preset's vocab_size)")
    p.add_argument("--root", default=None, help=ROOT_HELP)
    p.add_argument("--mix", choices=get_args(Mix), default=None, help="corpus documents (default: both; "
                                                                        "--resume: the run's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--distill-steps", type=int, default=0,
                   help="after training, self-distil the MTP modules toward the frozen main model for this many "
                        "steps before --export (mtp_lab.distill; 0 = off). The --out checkpoint stays undistilled")
    p.set_defaults(func=run)


def check_outputs(args) -> None:
    """Everything `run` will write, checked before the corpus loads (flags.check_output): --out (a run there
    needs --resume or --overwrite), --export (never the training run; a model there needs --overwrite), and a
    --tokenizer that will be trained."""
    from ..checkpoint import TOKENIZER_FILE

    tokenizer = Path(args.tokenizer) if args.tokenizer and Path(args.tokenizer).is_file() else None
    reads = {"--root": args.root, "--tokenizer": None if args.resume else tokenizer}   # --resume ignores it
    out = check_output(args.out, "--out", "run", reads, overwrite=args.resume or args.overwrite,
                       again="continue it with --resume, replace it with --overwrite, or give another --out")
    if args.export:
        check_output(args.export, "--export", "model", {**reads, "--out": out, "the run's tokenizer":
                                                       out / TOKENIZER_FILE}, overwrite=args.overwrite,
                     again="replace it with --overwrite (not with --resume), or give another --export")
    if args.tokenizer and not args.resume and tokenizer is None:
        check_output(args.tokenizer, "--tokenizer", "file", {"--root": args.root})  # trained and saved there


def resume_data(args, meta: dict) -> tuple[str | None, str]:
    """(root, mix) a resumed run reads: those recorded in its trainer.json (`meta`); a --root or --mix that differs
    is refused, naming both. A run saved before the record keeps the flags' values (or the defaults)."""
    from ..checkpoint import TRAINER_FILE

    data = meta.get("data")
    if data is None:
        print(f"note: {args.out}/{TRAINER_FILE} does not record its corpus (an older run): resuming on --root "
              f"{args.root or 'default'}, --mix {args.mix or 'both'}", file=sys.stderr)
        return args.root, args.mix or "both"
    root, mix = data.get("root"), data.get("mix", "both")
    given_root = str(Path(args.root).resolve()) if args.root else None
    if args.root and given_root != root:
        raise ValueError(f"--root {args.root}: the run in {args.out} was trained on --root {root or '(default)'}; "
                         f"--resume reads the recorded corpus: drop --root (or start a new run with --overwrite)")
    if args.mix and args.mix != mix:
        raise ValueError(f"--mix {args.mix}: the run in {args.out} was trained with --mix {mix}; --resume reads "
                         f"the recorded corpus: drop --mix (or start a new run with --overwrite)")
    return root, mix


def ignored_on_resume(args, saved_step: int) -> list[str]:
    """The flags --resume does not use, to be named rather than ignored silently."""
    ignored = [f"--{name.replace('_', '-')} {value}" for name, value in
               (("preset", args.preset), ("tokenizer", args.tokenizer), ("vocab_size", args.vocab_size))
               if value is not None]
    if args.steps is not None and args.steps <= saved_step:
        ignored.append(f"--steps {args.steps} (the run is at step {saved_step} already: nothing to train)")
    return ignored


def run(args) -> int:
    from ..checkpoint import TOKENIZER_FILE, TRAINER_FILE, CheckpointError, load_config, lock, read_trainer_state
    from ..config import MAX_STEPS, check_int
    from ..data import DEFAULT_TOKENIZER, build_corpus
    from ..train import check_same_data, corpus_identity

    check_int("--distill-steps", args.distill_steps, minimum=0, maximum=MAX_STEPS)
    if args.vocab_size is not None:
        check_int("--vocab-size", args.vocab_size, minimum=258, maximum=2 ** 16, note=" (256 bytes + EOT + merges)")
    if args.distill_steps and not args.export:
        raise ValueError("--distill-steps changes the exported model only: give --export DIR as well")
    check_outputs(args)
    set_threads(args.threads)
    out = Path(args.out)
    overrides = dataclass_values(args, ModelConfig, only=MODEL_FLAGS)
    given = dataclass_values(args, TrainConfig, skip=SKIPPED)
    if args.resume:
        meta = read_trainer_state(out)                        # completes an interrupted save first
        saved = meta.get("train_config")
        model_cfg, _ = load_config(out)
        if any(getattr(model_cfg, k) != v for k, v in overrides.items()):
            raise ValueError(f"--resume uses the model config saved in {out}; drop the conflicting overrides "
                             f"{overrides}")
        try:
            if not isinstance(saved, dict):
                raise TypeError("it is not an object")
            train_cfg = TrainConfig(**{**saved, "betas": tuple(saved.get("betas", TrainConfig.betas))})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{out / TRAINER_FILE}: invalid train_config ({e}); the file is corrupt") from e
        train_cfg = dataclasses.replace(train_cfg, **given)
        root, mix = resume_data(args, meta)
        ignored = ignored_on_resume(args, meta["step"])
        tokenizer = out / TOKENIZER_FILE
    else:
        model_cfg = get_preset(args.preset or "course", **overrides)
        train_cfg = TrainConfig(**given)
        tokenizer = Path(args.tokenizer) if args.tokenizer else DEFAULT_TOKENIZER
        if not tokenizer.is_file() and not args.tokenizer:        # never trained into the shipped assets
            raise FileNotFoundError(f"the shipped tokenizer {tokenizer} is missing; reinstall mtp-lab, or pass "
                                    f"--tokenizer PATH (trained on the corpus and saved there if missing)")
        root, mix = (str(Path(args.root).resolve()) if args.root else None), args.mix or "both"
        ignored = []
    rank0 = int(os.environ.get("RANK", 0)) == 0                # the process that writes --out (torchrun: rank 0)
    with lock(out) if rank0 else contextlib.nullcontext():
        corpus = build_corpus(tokenizer, root=root, mix=mix, vocab_size=args.vocab_size or model_cfg.vocab_size)
        if args.resume:                                        # before the Trainer samples its evaluation batches
            check_same_data(out, meta.get("data"), {"root": root, "mix": mix, **corpus_identity(corpus)})
        return train(args, model_cfg, train_cfg, corpus, {"root": root, "mix": mix}, ignored)


def interrupted_at(trainer, out: Path) -> str:
    """What an interrupted run left in --out, and how to go on; the same answer the next command will give."""
    from ..checkpoint import STAGING_DIR, TRAINER_FILE, read_manifest

    resume = f"continue with `mtp-lab train --out {out} --resume`"
    first = min(trainer.cfg.save_interval, trainer.cfg.steps)
    if trainer.saved_step is not None:
        return f"the last checkpoint, step {trainer.saved_step}, is in {out}: {resume}"
    if (out / STAGING_DIR / TRAINER_FILE).is_file():       # the first save was committed, not yet moved in
        return f"the first checkpoint, step {first}, is in {out}: {resume}"
    if (out / TRAINER_FILE).is_file():                    # --overwrite stopped before its first save
        try:
            old = f"step {read_manifest(out)['step']}"
        except ValueError:
            old = "unreadable"
        return (f"no checkpoint of this run was written (the first comes at step {first}); {out} still holds the "
                f"previous run ({old}): {resume}, or start again with --overwrite")
    return f"no checkpoint of this run was written (the first comes at step {first}): start it again"


def train(args, model_cfg: ModelConfig, train_cfg: TrainConfig, corpus, source: dict, ignored: list[str]) -> int:
    """Train (or resume) with --out locked, report where an interrupted run left its checkpoint, export."""
    from ..distill import DistillConfig, distill
    from ..metrics import export
    from ..model import mtp_state
    from ..train import ProgressBar, Trainer

    out = Path(args.out)
    if corpus.vocab_size != model_cfg.vocab_size and not args.resume:
        print(f"note: preset {args.preset or 'course'!r} has vocab_size {model_cfg.vocab_size}; using the "
              f"tokenizer's {corpus.vocab_size}", file=sys.stderr)
        model_cfg = model_cfg.replace(vocab_size=corpus.vocab_size)
    trainer = Trainer(model_cfg, train_cfg, corpus, callbacks=[ProgressBar()], corpus_source=source)
    if args.resume:
        trainer.resume(out)
        if ignored and trainer.is_main:
            print(f"note: --resume continues the run saved in {out} with its own preset, tokenizer and "
                  f"vocabulary; ignored: {', '.join(ignored)}", file=sys.stderr)
    if trainer.is_main:
        counts = trainer.model.parameter_counts()
        print(f"model {json.dumps(model_cfg.to_dict())}\nparameters {counts['total']:,} "
              f"(main+shared {counts['main_with_shared']:,}, mtp {counts['mtp']:,}); train "
              f"{len(corpus.splits['train']):,} tokens, world {trainer.world}, bf16 {trainer.autocast}, "
              f"threads {torch.get_num_threads()}", flush=True)
    distill_cfg = None
    if args.distill_steps:
        distill_cfg = DistillConfig(steps=args.distill_steps, seq_len=train_cfg.seq_len,
                                    prompt_len=min(DistillConfig.prompt_len, train_cfg.seq_len // 4))
    try:
        trainer.fit(out)
    except (KeyboardInterrupt, FloatingPointError, OSError) as e:   # Ctrl-C, a diverged run, a full disk
        if not trainer.is_main:                                       # rank 0, which saves, says what is kept
            raise
        where = interrupted_at(trainer, out)
        raise type(e)(f"{e}; {where}" if str(e) else f"stopped at step {trainer.step}; {where}") from None
    if trainer.is_main and args.export:
        extra, undistilled = {}, None
        if distill_cfg is not None:
            undistilled = mtp_state(trainer.model.state_dict(), copy=True)
            if torch.distributed.is_initialized():       # the other ranks are done: rank 0 may use their cores
                torch.set_num_threads(max(torch.get_num_threads(), min(trainer.world, os.cpu_count() or 1)))
            t0 = time.perf_counter()
            records = distill(trainer.model, corpus, distill_cfg)
            extra = {"distill_config": dataclasses.asdict(distill_cfg),
                     "distill_seconds": round(time.perf_counter() - t0, 1), "distill_final_loss": records[-1]["loss"]}
        export(trainer, Path(args.export), getattr(torch, args.export_dtype), extra, undistilled)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0

