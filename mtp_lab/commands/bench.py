"""`mtp-lab bench`: plain (AR) against speculative decoding with the MTP and n-gram drafters (mtp_lab.bench):
tau, per-position acceptance, tokens/s and speed-up with its spread over repeats, and an optional profile."""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import torch

from .. import bench
from ..decoding import make_drafter
from ..stopping import format_stopping
from .flags import check_output, set_threads

MAX_PROMPTS = 2 ** 16     # --prompts above this is a typo (each prompt is a separate generation)


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, unless it is None or False (the help says what that means)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="AR vs speculative decoding (MTP, n-gram drafters): tau, per-position "
                                            "acceptance, tokens/s, speedup, profile", formatter_class=DefaultsShown)
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped course model)")
    p.add_argument("--random", metavar="PRESET", default=None,
                   help="use random weights of this preset and random prompts instead of a checkpoint")
    p.add_argument("--prompts", type=int, default=16, help="held-out prompts (windows of the test split)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4], help="draft lengths to run")
    p.add_argument("--drafters", nargs="+", default=list(bench.DRAFTERS), choices=bench.DRAFTERS, metavar="NAME",
                   help="the drafters to compare, each against plain decoding: "
                        + inspect.getdoc(make_drafter).split("\n\n")[1].replace("\n", " ").replace("%", "%%"))
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampling (temperature > 0) and of --random's weights and prompts")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is as fast as 2 for batch-1 AR decoding of the course model and "
                        "less noisy, tools/ar_threads.py)")
    p.add_argument("--repeats", type=int, default=1, help="run the whole benchmark this many times and report the "
                                                          "median run's speed-up with the range")
    p.add_argument("--profile", action="store_true", help="also run torch.profiler on AR and the best config")
    p.add_argument("--verify-cost", type=int, default=0, metavar="N",
                   help="instead of the benchmark: measure the verify cost v(n) of n = 1..N tokens and the draft cost "
                        "c (medians of --repeats, process CPU time), the curve the tree drafters' size comes from")
    p.add_argument("--stopping", type=int, default=0, metavar="K",
                   help="instead of the benchmark: record the MTP chain drafting K tokens per step on the prompts "
                        "(--repeats seeds each when sampling) and score fixed k = 1..K against the adaptive "
                        "drafter's cost rule with the measured costs: what an adaptive draft length can gain "
                        "(mtp_lab.stopping)")
    p.add_argument("--json", default="artifacts/bench_speculative.json", help="where to write the results")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import PRETRAINED_DIR
    from ..config import MAX_SEQ_LEN, MAX_STEPS, check_int, check_seed
    from ..data import atomic_write_json
    from ..sampling import check_sampling

    if min(args.prompts, args.prompt_len, args.new_tokens, args.threads, args.repeats, *args.k) <= 0:
        raise ValueError("--prompts, --prompt-len, --new-tokens, --threads, --repeats and every --k must be > 0")
    for flag, value, most in (("--prompts", args.prompts, MAX_PROMPTS), ("--prompt-len", args.prompt_len, MAX_SEQ_LEN),
                              ("--new-tokens", args.new_tokens, MAX_SEQ_LEN), ("--repeats", args.repeats, MAX_STEPS)):
        check_int(flag, value, minimum=1, maximum=most)                  # bounds before the prompts are allocated
    if len(set(args.k)) < len(args.k):
        raise ValueError(f"--k {' '.join(map(str, args.k))} repeats a draft length; give each once")
    if args.random is not None and args.checkpoint is not None:
        raise ValueError("--random PRESET uses random weights, --checkpoint a saved model: give one of them")
    check_seed("--seed", args.seed)
    check_sampling(args.temperature, None, None)
    check_output(args.json, "--json", "file",
                 {"--checkpoint": None if args.random else Path(args.checkpoint or PRETRAINED_DIR)})
    set_threads(args.threads)
    if args.random is not None:
        model, prompts, source = bench.random_setup(args.random, args.prompts, args.prompt_len, args.seed)
    else:
        model, prompts, source = bench.heldout_prompts(args.checkpoint, args.prompts, args.prompt_len)
    if args.verify_cost and args.stopping:
        raise ValueError("--verify-cost and --stopping are two separate measurements: give one of them")
    if args.verify_cost:
        result = bench.verify_cost(model, args.verify_cost, max(args.repeats, 3), source)
        print(bench.format_verify_cost(result))
        atomic_write_json(Path(args.json), bench.json_safe(result), indent=1, allow_nan=False)
        print(f"wrote {args.json}")
        return 0
    if args.prompt_len + args.new_tokens > model.config.max_seq_len:
        raise ValueError(f"--prompt-len + --new-tokens = {args.prompt_len + args.new_tokens} exceeds the model's "
                         f"max_seq_len {model.config.max_seq_len}; lower one of them")
    if args.stopping:
        with torch.inference_mode():
            result = bench.stopping(model, prompts, args.stopping, args.new_tokens, args.temperature, args.repeats,
                                    source)
        print(f"{source}; {args.prompts} prompts x {args.new_tokens} new tokens, temperature {args.temperature}, "
              f"{result['seeds']} seed(s) each, {torch.get_num_threads()} thread(s); {result['steps']} steps of "
              f"the MTP chain at k = {args.stopping}")
        print(format_stopping(result))
        atomic_write_json(Path(args.json), bench.json_safe(result), indent=1, allow_nan=False)
        print(f"wrote {args.json}")
        return 0
    if set(args.drafters) == {"mtp-pre"} and max(args.k) <= model.config.mtp_depth:  # bench.run_bench's rule
        raise ValueError(f"--drafters mtp-pre runs only for k > D = {model.config.mtp_depth} (below, it is the mtp "
                         f"drafter); add a --k above {model.config.mtp_depth} or another drafter")
    drafters = bench.build_drafters(model, args.drafters)
    t0 = time.perf_counter()
    with torch.inference_mode():
        rows = bench.repeated_bench(model, prompts, args.new_tokens, args.k, drafters, args.repeats,
                              temperature=args.temperature, seed=args.seed,
                              progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    result = {"source": source, "config": model.config.to_dict(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch_size": 1, "temperature": args.temperature,
              "prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "repeats": args.repeats,
              "seconds": time.perf_counter() - t0, "rows": rows}
    macs = bench.matmul_macs_per_token(model.config)
    result["cost_model"] = {**macs, "ceiling": {k: bench.speedup_ceiling(macs["c"], k) for k in args.k}}
    print(f"{source}; {args.prompts} prompts x {args.new_tokens} new tokens, batch 1, "
          f"temperature {args.temperature}, {torch.get_num_threads()} threads")
    print(bench.format_table(rows))
    print(f"matmul multiply-adds per token: main model {macs['main']:,}, one MTP module {macs['mtp_module']:,} "
          f"(c = {macs['c']:.2f}); ceiling (k+1)/(1+kc) with all drafts accepted and free verification: "
          + ", ".join(f"k={k} {v:.2f}x" for k, v in result["cost_model"]["ceiling"].items()))
    if args.profile:
        best = max(rows[1:], key=lambda r: r["speedup"])
        result["profile"] = bench.op_profile(model, prompts[0], args.new_tokens, best["k"],
                                             drafters[best["drafter"]])
        for label, prof in result["profile"].items():
            print(f"\n{label}: {prof['aten_calls_per_token']:.0f} aten calls per token, "
                  f"{prof['main_forwards']} main forwards")
            for op in prof["top_ops"][:8]:
                print(f"  {op['op']:40} {op['calls']:6d} calls {op['self_cpu_ms']:8.1f} ms")
    atomic_write_json(Path(args.json), bench.json_safe(result), indent=1, allow_nan=False)
    print(f"wrote {args.json}")
    return 0
