"""The table of docs/training.md, "Distilling for sampling": the shipped MTP modules against modules re-distilled
for sampling, from the stored results in docs/results/distill_sampled/ (written by the commands in that section).

    python tools/distill_sampled_table.py    # ~10 s: the shipped modules' sampled acceptance, then the table

metrics_NAME.json and config_NAME.json are the metrics.json and config.json of `mtp-lab distill --out runs/NAME ...`
(its DistillConfig: loss, temperature, steps); bench_t1_NAME.json and
bench_t0_NAME.json are `mtp-lab bench --checkpoint runs/NAME --json ...` at temperature 1 and greedy (NAME shipped:
no --checkpoint). The shipped model's metrics.json predates sampled_acceptance, so it is measured here, as
`mtp-lab distill` measures it (mtp_lab.metrics.sampled_acceptance).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from mtp_lab import load_pretrained
from mtp_lab.checkpoint import PRETRAINED_DIR
from mtp_lab.data import build_corpus
from mtp_lab.distill import DistillConfig
from mtp_lab.metrics import sampled_acceptance

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "distill_sampled"
RUNS = ("shipped", "kl0", "kl1", "tv")       # the shipped modules, then runs/NAME of the commands in docs/training.md
LOSSES = {"kl": "cross-entropy", "tv": "total variation"}


def _row(rows: list[dict], drafter: str, k: int) -> dict | None:
    return next((r for r in rows if r["drafter"] == drafter and r["k"] == k), None)


def main() -> None:
    torch.set_num_threads(1)
    model, tok = load_pretrained()
    shipped = json.loads((PRETRAINED_DIR / "metrics.json").read_text())
    shipped["sampled_acceptance"] = sampled_acceptance(model, build_corpus(tok).splits["test"])
    print("| modules | loss | text | steps | 1 - TV at T = 1, depth 1 / 2 | greedy agreement, depth 1 / 2 | greedy "
          "first-draft acceptance | T = 1: chain speed-up, k = 2 / 3 / 4 (tokens per verify at k = 4) | greedy: chain "
          "k = 4 tokens per verify; adaptive k = 32 speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in RUNS:
        path = RESULTS / f"metrics_{name}.json"
        if name != "shipped" and not path.is_file():
            continue
        m = shipped if name == "shipped" else json.loads(path.read_text())
        config = PRETRAINED_DIR / "config.json" if name == "shipped" else RESULTS / f"config_{name}.json"
        dc = {**dataclasses.asdict(DistillConfig()), **json.loads(config.read_text())["distill_config"]}
        text = "greedy" if dc["temperature"] == 0 else f"sampled, T = {dc['temperature']:g}"
        cells = [name, LOSSES[dc["loss"]], text, str(dc["steps"]),
                 " / ".join(f"{a:.3f}" for a in m["sampled_acceptance"]["depth"]),
                 " / ".join(f"{a:.3f}" for a in m["test"]["agree"]),
                 f"{m['greedy_acceptance']['acceptance_rate']:.3f}"]
        t1, t0 = RESULTS / f"bench_t1_{name}.json", RESULTS / f"bench_t0_{name}.json"
        if t1.is_file() and t0.is_file():
            rows1, rows0 = json.loads(t1.read_text())["rows"], json.loads(t0.read_text())["rows"]
            chain = [_row(rows1, "mtp", k) for k in (2, 3, 4)]
            cells.append(" / ".join(f"{r['speedup']:.2f}x" for r in chain)
                         + f" ({chain[-1]['tokens_per_main_forward']:.2f})")
            cells.append(f"{_row(rows0, 'mtp', 4)['tokens_per_main_forward']:.2f}; "
                         f"{_row(rows0, 'adaptive', 32)['speedup']:.2f}x")
        else:
            cells += ["-", "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
