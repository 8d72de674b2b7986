"""An exported model and its record: write it, reload it as `load_pretrained` does, and measure it (metrics.json).

Library code used by `mtp-lab train --export` and `mtp-lab distill`; it imports neither command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TEST_EVAL_BATCHES = 64    # test-split windows scored for an exported model: 64 x batch_size sequences
ACCEPT_PROMPTS = 8        # test-split prompts for the greedy acceptance recorded in metrics.json
SAMPLED_PROMPTS = 64      # test-split prompts the main model continues at temperature 1 for the sampled acceptance


def export(trainer, directory: Path, dtype: torch.dtype, extra: dict | None = None,
           undistilled: dict | None = None) -> None:
    """Write the model in `dtype` (and, if it was self-distilled, its `undistilled` MTP modules), reload it as
    load_pretrained does, and record its val/test metrics."""
    from .checkpoint import save_model, save_undistilled

    cfg = trainer.cfg
    tokens_per_s = trainer.step * cfg.batch_size * cfg.seq_len * trainer.world / max(trainer.elapsed, 1e-9)
    save_model(directory, trainer.model, trainer.corpus.tokenizer, dtype=dtype,
               metadata={"train_config": cfg.to_dict(), "train_seconds": round(trainer.elapsed, 1),
                         "tokens_per_second": round(tokens_per_s, 1), "world_size": trainer.world,
                         **(extra or {})})
    save_undistilled(directory, undistilled, dtype)
    write_metrics(directory, trainer.corpus, cfg.batch_size, cfg.seq_len, trainer.step)


def greedy_acceptance(model, test: "np.ndarray", prompts: int = ACCEPT_PROMPTS, prompt_len: int = 64,
                      new_tokens: int = 128) -> dict:
    """First-draft acceptance of greedy speculative decoding (k = 1, MTP drafter) on test-split prompts."""
    from .decoding import GenerationStats, speculative_generate

    prompt_len = min(prompt_len, model.config.max_seq_len // 4)     # room for new tokens in small models
    starts = np.linspace(0, len(test) - prompt_len - 1, prompts).astype(np.int64)
    stats = GenerationStats.merge([speculative_generate(model, [int(t) for t in test[s:s + prompt_len]], new_tokens,
                                        num_draft=1).stats for s in starts])
    return {"k": 1, "prompts": prompts, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "acceptance_rate": stats.acceptance_rate, "mean_acceptance_length": stats.mean_acceptance_length}


def sampled_acceptance(model, test: "np.ndarray", prompts: int = SAMPLED_PROMPTS, prompt_len: int = 32,
                       total_len: int = 128, seed: int = 0) -> dict:
    """Each depth's expected acceptance at temperature 1, 1 - TV(p, q) (distill.expected_acceptance), on the main
    model's own continuations, sampled at temperature 1 (seed `seed`), of test-split prompts."""
    from .distill import continuations, expected_acceptance

    total_len = min(total_len, model.config.max_seq_len)
    prompt_len = min(prompt_len, total_len // 4)
    starts = np.linspace(0, len(test) - prompt_len - 1, prompts).astype(np.int64)
    x = torch.stack([torch.from_numpy(test[s:s + prompt_len].astype(np.int64)) for s in starts])
    text = continuations(model, x, total_len, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    return {"temperature": 1.0, "prompts": prompts, "prompt_len": prompt_len, "total_len": total_len, "seed": seed,
            "depth": expected_acceptance(model, text)}


def write_metrics(directory: Path, corpus, batch_size: int, seq_len: int, step: int) -> dict:
    """Reload `directory` as load_pretrained does; write metrics.json: val/test losses, accuracies, agreement,
    and (with MTP modules) greedy first-draft acceptance and the expected acceptance at temperature 1 on the test
    split."""
    from .checkpoint import UNDISTILLED_FILE, load_pretrained
    from .data import atomic_write_json, eval_batches
    from .train import evaluate, format_eval

    model, _ = load_pretrained(directory)
    metrics = {split: evaluate(model, eval_batches(corpus.splits[split], TEST_EVAL_BATCHES, batch_size, seq_len))
               for split in ("val", "test")}
    if len(model.mtp):
        metrics["greedy_acceptance"] = greedy_acceptance(model, corpus.splits["test"])
        metrics["sampled_acceptance"] = sampled_acceptance(model, corpus.splits["test"])
    if (directory / UNDISTILLED_FILE).is_file():          # the same main model with its MTP-loss-only modules
        before, _ = load_pretrained(directory, mtp="undistilled")
        metrics["undistilled"] = {
            "test": evaluate(before, eval_batches(corpus.splits["test"], TEST_EVAL_BATCHES, batch_size, seq_len)),
            "greedy_acceptance": greedy_acceptance(before, corpus.splits["test"]),
            "sampled_acceptance": sampled_acceptance(before, corpus.splits["test"])}
    atomic_write_json(directory / "metrics.json", metrics)
    for split in ("val", "test"):
        print(f"exported {directory}: " + format_eval(step, metrics[split], split), flush=True)
    for label, m in (("", metrics), (" before self-distillation", metrics.get("undistilled", {}))):
        if "greedy_acceptance" in m:
            print(f"greedy first-draft acceptance{label} (test prompts, k=1): "
                  f"{m['greedy_acceptance']['acceptance_rate']:.3f}; at temperature 1, 1 - TV(p, q) by depth: "
                  + ", ".join(f"{a:.3f}" for a in m["sampled_acceptance"]["depth"]), flush=True)
    return metrics
