"""The sweep that chose the course model's shape (assets/MODEL_CARD.md, "Choosing the shape").

For each main-model shape (vocabulary 2048, D = 2 MTP modules, 4 heads):
  cost   c and v(4) timed by the speculative engine on random weights (mtp_lab.proportion), AR ms/token;
  train  training tokens/s and the validation main loss after a FIXED WALL-CLOCK budget (same seed, batch
         16 x 128, lr 2e-3 with a warmup of 10% and cosine decay over the steps that fit the budget).

    python tools/shape_sweep.py --part cost                      # ~2 min, one thread: run it alone
    python tools/shape_sweep.py --part train --budget 240 --jobs 2   # two shapes at a time, one thread each
    python tools/shape_sweep.py --part table                     # the markdown table of artifacts/shape_sweep.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mtp_lab.config import get_preset  # noqa: E402

OUT = ROOT / "artifacts" / "shape_sweep.json"
# (n_layers, d_model, d_ff): today's 4 x 192, then deeper and thinner
SHAPES = [(4, 192, 512), (8, 160, 432), (12, 128, 352), (16, 128, 352), (20, 112, 304), (24, 128, 352),
          (16, 160, 432)]


def shape_cfg(L: int, d: int, ff: int):
    return get_preset("course").replace(n_layers=L, d_model=d, d_ff=ff)


def load() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def save(results: dict) -> None:
    from mtp_lab.data import atomic_write_bytes
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(OUT, (json.dumps(results, indent=1, sort_keys=True) + "\n").encode())


def key(L, d, ff) -> str:
    return f"{L}x{d}x{ff}"


def part_cost() -> None:
    from mtp_lab.model import MTPModel
    from mtp_lab.proportion import measure_draft_cost
    torch.set_num_threads(1)
    results = load()
    for L, d, ff in SHAPES:
        cfg = shape_cfg(L, d, ff)
        c1 = measure_draft_cost(cfg, k=1, prompt_len=64, new_tokens=96, repeats=3)
        c4 = measure_draft_cost(cfg, k=4, prompt_len=64, new_tokens=96, repeats=3)
        counts = MTPModel(cfg).parameter_counts()
        r = results.setdefault(key(L, d, ff), {})
        r.update({"n_layers": L, "d_model": d, "d_ff": ff, "params_total": counts["total"],
                  "params_main_with_shared": counts["main_with_shared"], "params_mtp": counts["mtp"],
                  "c": c1["c"], "c_k4": c4["c"], "verify_k4": c4["verify"], "ar_ms_per_token": c1["ar_ms_per_token"]})
        print(f"{key(L, d, ff):12} params {counts['total']:>9,}  c {c1['c']:.3f} (k=4 {c4['c']:.3f})  "
              f"v(4) {c4['verify']:.2f}  AR {c1['ar_ms_per_token']:.2f} ms/token", flush=True)
        save(results)


def train_one(L: int, d: int, ff: int, budget: float) -> dict:
    """Train one shape for `budget` seconds (steps fixed from a throughput probe), return its metrics."""
    from mtp_lab.data import build_corpus
    from mtp_lab.train import TrainConfig, Trainer
    torch.set_num_threads(1)
    corpus = build_corpus()
    cfg = shape_cfg(L, d, ff)
    probe = Trainer(cfg, TrainConfig(steps=1000, warmup=10), corpus)
    probe.train_step()                                       # warm-up
    t0 = time.perf_counter()
    for _ in range(5):
        probe.train_step()
    step_s = (time.perf_counter() - t0) / 5
    steps = max(20, int(budget / step_s))
    trainer = Trainer(cfg, TrainConfig(steps=steps, warmup=max(5, steps // 10), eval_interval=steps,
                                       eval_batches=8), corpus)
    t0 = time.perf_counter()
    evals = trainer.fit()
    seconds = time.perf_counter() - t0
    return {"train_steps": steps, "train_seconds": round(seconds, 1),
            "train_tokens_per_s": steps * 16 * 128 / seconds, "val_main": evals[-1][1]["main"],
            "val_main_acc": evals[-1][1]["main_acc"], "val_agree": evals[-1][1]["agree"], "budget_s": budget}


def part_train(budget: float, jobs: int) -> None:
    pending = [s for s in SHAPES if "val_main" not in load().get(key(*s), {})]
    running: list[tuple[tuple, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < jobs:
            s = pending.pop(0)
            cmd = [sys.executable, __file__, "--part", "train-one", "--shape", *map(str, s), "--budget", str(budget)]
            running.append((s, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
        s, proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"shape {key(*s)} failed (exit {proc.returncode})")
        metrics = json.loads(out.strip().splitlines()[-1])
        results = load()
        results.setdefault(key(*s), {"n_layers": s[0], "d_model": s[1], "d_ff": s[2]}).update(metrics)
        save(results)
        print(f"{key(*s):12} {metrics['train_steps']} steps, {metrics['train_tokens_per_s']:.0f} tokens/s, "
              f"val main {metrics['val_main']:.3f}", flush=True)


def part_table() -> None:
    rows = sorted(load().values(), key=lambda r: (r["n_layers"], r["d_model"]))
    print("| shape (L x d, d_ff) | parameters | c (k=1) | v(4) | AR ms/token | train tokens/s | "
          "val main loss after the budget |")
    print("|---|---|---|---|---|---|---|")
    def cell(r, name, spec):                 # "-" where that part of the sweep did not run for this shape
        return format(r[name], spec) if name in r else "-"

    for r in rows:
        print(f"| {r['n_layers']} x {r['d_model']}, {r['d_ff']} | {cell(r, 'params_total', ',')} | "
              f"{cell(r, 'c', '.3f')} | "
              f"{cell(r, 'verify_k4', '.2f')} | {cell(r, 'ar_ms_per_token', '.2f')} | "
              f"{cell(r, 'train_tokens_per_s', '.0f')} | {cell(r, 'val_main', '.3f')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["cost", "train", "train-one", "table"], required=True)
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per shape")
    ap.add_argument("--jobs", type=int, default=2, help="shapes trained at once (one thread each)")
    ap.add_argument("--shape", type=int, nargs=3, help="(train-one) n_layers d_model d_ff")
    args = ap.parse_args()
    if args.part == "cost":
        part_cost()
    elif args.part == "train":
        part_train(args.budget, args.jobs)
    elif args.part == "train-one":
        print(json.dumps(train_one(*args.shape, args.budget)))
    else:
        part_table()


if __name__ == "__main__":
    main()
