"""`mtp-lab fp8-bench`: measure the FP8 recipe (mtp_lab.fp8_bench): quantization and accumulation error, the
cost of a training step, the loss difference over a run, and the drafts' acceptance with an FP8 drafter."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import torch

from .. import fp8_bench
from ..config import FP8Recipe
from ..train import Precision
from .flags import check_output, set_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("fp8-bench", help="measure the FP8 recipe: quantization and accumulation "
                              "error, step cost, loss difference, draft acceptance")
    every = ",".join(fp8_bench.PARTS)
    p.add_argument("--parts", default=every, help=f"comma-separated subset of {every}")
    p.add_argument("--steps", type=int, default=200, help="training steps per run for 'train' (default 200)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step for 'cost' and 'train'")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for 'cost' and 'train'")
    p.add_argument("--cost-rounds", type=int, default=6, help="timed steps per variant for 'cost'")
    p.add_argument("--recipe", default="all", choices=get_args(FP8Recipe), help="FP8 scope for 'train'")
    p.add_argument("--precision", default="auto", choices=get_args(Precision),
                   help="baseline precision for 'train' (auto: bf16 only where the hardware has it natively)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder for 'acceptance' (default: shipped)")
    p.add_argument("--prompts", type=int, default=16, help="prompts for the generation acceptance")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 on a shared CPU: idle threads spin and steal time)")
    p.add_argument("--json", default=None, help="also write all results (loss curves included) to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(fp8_bench.PARTS))
    if unknown or not parts:
        raise ValueError(f"unknown --parts {unknown or parts}; choose from {','.join(fp8_bench.PARTS)}")
    if min(args.steps, args.batch_size, args.seq_len, args.cost_rounds, args.prompts, args.new_tokens) <= 0:
        raise ValueError("--steps, --batch-size, --seq-len, --cost-rounds, --prompts and --new-tokens must be > 0")
    from ..checkpoint import PRETRAINED_DIR
    from ..config import check_seed

    check_seed("--seed", args.seed)
    if args.json:
        reads = {"--checkpoint": Path(args.checkpoint or PRETRAINED_DIR)} if "acceptance" in parts else {}
        check_output(args.json, "--json", "file", reads)
    set_threads(args.threads)
    results, corpus = {}, None
    if {"cost", "train"} & set(parts):
        from ..data import build_corpus
        corpus = build_corpus()
    for part in fp8_bench.PARTS:
        if part not in parts:
            continue
        print(f"[fp8-bench] {part} ...", flush=True)
        if part == "quantization":
            results[part] = fp8_bench.quantization_table(args.seed)
        elif part == "accumulation":
            results[part] = fp8_bench.accumulation_error_vs_k(seed=args.seed)
        elif part == "cost":
            results[part] = fp8_bench.step_cost(corpus, args.cost_rounds, args.batch_size, args.seq_len, args.seed)
        elif part == "train":
            results[part] = fp8_bench.train_comparison(corpus, args.steps, args.batch_size, args.seq_len,
                                                       args.seed, args.recipe, args.precision)
        else:
            results[part] = fp8_bench.acceptance_comparison(args.checkpoint, args.prompts, new_tokens=args.new_tokens)
        print(fp8_bench.markdown({part: results[part]}), flush=True)
        if args.json:                     # after every part, so a long run keeps what it measured
            fp8_bench.write_json(Path(args.json), {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                                   "args": vars(args) | {"func": None}, **results})
    return 0
