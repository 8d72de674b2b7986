"""`mtp-lab train`: train (or resume) a model on the standard-library corpus; optionally export it.

Runs unchanged under `torchrun --nproc_per_node=N -m mtp_lab.cli train ...` (DistributedDataParallel).
The training flags are TrainConfig's fields (mtp_lab.train); --mtp-depth and --fp8 override ModelConfig's.
"""

from __future__ import annotations

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
    p.add_argument("--preset", default="course", help="model preset (default: course)")
    add_dataclass_flags(p, ModelConfig, only=MODEL_FLAGS, keep_defaults=False,
                        help_override={"mtp_depth": "override the preset's MTP depth D (0 = none)"})
    p.add_argument("--out", default="runs/course", help="checkpoint folder (default: runs/course)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    again.add_argument("--overwrite", action="store_true",
                       help="start a new run even though --out holds one (replaced at the first checkpoint)")
    p.add_argument("--export", default=None, help="at the end, also write the model (--export-dtype) and "
                                                  "its val/test metrics to this folder")
    p.add_argument("--export-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    # TrainConfig's fields; a flag left out keeps the default (or, with --resume, the saved run's value)
    add_dataclass_flags(p, TrainConfig, skip=SKIPPED, keep_defaults=False, rename={"lam": "lambda"})
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: assets/course_model/tokenizer.json; "
                                                     "trained on the train split and saved if missing)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary of a newly trained tokenizer "
                                                                   "(default: the preset's vocab_size)")
    p.add_argument("--root", default=None, help=ROOT_HELP)
    p.add_argument("--mix", choices=get_args(Mix), default="both", help="corpus documents (default: both)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--distill-steps", type=int, default=0,
                   help="after training, self-distil the MTP modules toward the frozen main model for this many "
                        "steps before --export (mtp_lab.distill; 0 = off). The --out checkpoint stays undistilled")
    p.set_defaults(func=run)


def check_outputs(args) -> None:
    """Everything `run` will write, checked before the corpus loads: --out (a run there needs --resume or
    --overwrite), --export (never the training checkpoint), and a --tokenizer that will be trained."""
    from ..checkpoint import CONFIG_FILE, MODEL_FILE, STAGING_DIR, TRAINER_FILE

    out = check_output(args.out, "--out", folder=True)
    held = any((out / name).exists() for name in (CONFIG_FILE, MODEL_FILE, TRAINER_FILE, STAGING_DIR))
    if held and not (args.resume or args.overwrite):
        raise ValueError(f"--out {out} already holds a checkpoint; continue it with --resume, replace it with "
                         f"--overwrite, or give another --out")
    if args.export:
        export = check_output(args.export, "--export", folder=True)
        if export.resolve() == out.resolve() or (export / TRAINER_FILE).exists():
            raise ValueError(f"--export {export} is a training checkpoint folder (--out, or another run's): the "
                             f"export would replace its fp32 weights with {args.export_dtype} ones; give another one")
    if args.tokenizer and not args.resume and not Path(args.tokenizer).is_file():
        check_output(args.tokenizer, "--tokenizer", folder=False)     # trained on the corpus and saved there


def run(args) -> int:
    from ..checkpoint import TOKENIZER_FILE, TRAINER_FILE, CheckpointError, load_config, read_trainer_state
    from ..data import DEFAULT_TOKENIZER, build_corpus
    from ..distill import DistillConfig, distill
    from ..metrics import export
    from ..model import mtp_state
    from ..train import ProgressBar, Trainer

    if args.distill_steps and not args.export:
        raise ValueError("--distill-steps changes the exported model only: give --export DIR as well")
    check_outputs(args)
    set_threads(args.threads)
    out = Path(args.out)
    overrides = dataclass_values(args, ModelConfig, only=MODEL_FLAGS)
    given = dataclass_values(args, TrainConfig, skip=SKIPPED)
    if args.resume:
        saved = read_trainer_state(out).get("train_config")   # completes an interrupted save first
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
        tokenizer = out / TOKENIZER_FILE
    else:
        model_cfg = get_preset(args.preset, **overrides)
        train_cfg = TrainConfig(**given)
        tokenizer = Path(args.tokenizer) if args.tokenizer else DEFAULT_TOKENIZER
    corpus = build_corpus(tokenizer, root=args.root, mix=args.mix,
                          vocab_size=args.vocab_size or model_cfg.vocab_size)
    if corpus.vocab_size != model_cfg.vocab_size and not args.resume:
        print(f"note: preset {args.preset!r} has vocab_size {model_cfg.vocab_size}; using the tokenizer's "
              f"{corpus.vocab_size}", file=sys.stderr)
        model_cfg = model_cfg.replace(vocab_size=corpus.vocab_size)
    trainer = Trainer(model_cfg, train_cfg, corpus, callbacks=[ProgressBar()])
    if args.resume:
        trainer.resume(out)
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
        first = min(train_cfg.save_interval, train_cfg.steps)
        where = (f"the last checkpoint, step {trainer.saved_step}, is in {out}: continue with "
                 f"`mtp-lab train --out {out} --resume`" if trainer.saved_step is not None else
                 f"no checkpoint of this run was written (the first comes at step {first})")
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

