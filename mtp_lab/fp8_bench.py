"""`mtp-lab fp8-bench`: what DeepSeek-V3's FP8 recipe costs and changes, measured on this machine.

Parts (select with --parts):
  quantization  relative error of E4M3/E5M2 per tensor / 128x128 block / 1x128 tile, with and without
                one activation outlier
  accumulation  GEMM accumulation error against K: ~14-bit accumulator, promotion every N_C = 128, FP32
  cost          seconds per training step of the course preset: fp32, bf16 autocast, bf16 + simulated
                FP8 block linears (steps interleaved round-robin so machine load hits all three alike)
  train         same steps, seed and batches with the high-precision baseline (bf16 where the hardware
                has it, else fp32) and with the FP8 recipe: relative difference of the final loss
                (the report, FP8 vs BF16: below 0.25%)
  acceptance    greedy first-draft acceptance of a checkpoint (default: the shipped course model) with its
                MTP modules in FP8 vs full precision: teacher-forced on the test split, and in real
                speculative decoding
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from .config import FP8Recipe, check_choice, get_preset
from .fp8 import FORMATS, fake_quantize
from .fp8_linear import apply_fp8_recipe

PARTS = ("quantization", "accumulation", "cost", "train", "acceptance")


def quantization_table(seed: int = 0, outliers=(1e3, 1e5)) -> list[dict]:
    """Relative error of the NON-outlier values of randn activations (256 x 1024) after FP8 round trip,
    with no outlier and with one value set to each of `outliers`; plus the share of them flushed to 0."""
    x = torch.randn(256, 1024, generator=torch.Generator().manual_seed(seed))
    rest = torch.ones_like(x, dtype=torch.bool)
    rest[3, 7] = False                                          # where the outlier goes
    rows = []
    for fmt in FORMATS:
        for gran in ("tensor", "block", "tile"):
            row = {"format": fmt, "granularity": gran}
            for big in (None, *outliers):
                t = x.clone()
                if big is not None:
                    t[3, 7] = big
                t_hat = fake_quantize(t, fmt, gran)
                row[f"rel_error_{big or 'none'}"] = float((t_hat - t)[rest].norm() / t[rest].norm())
                row[f"underflow_{big or 'none'}"] = float((t_hat[rest] == 0).float().mean())
            rows.append(row)
    return rows


def _trainer(corpus, fp8: str, precision: str, steps: int, batch_size: int, seq_len: int, seed: int, device):
    from .train import TrainConfig, Trainer
    cfg = get_preset("course", vocab_size=corpus.vocab_size, fp8=fp8)
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, warmup=max(1, steps // 10),
                       eval_interval=steps, eval_batches=4, precision=precision, seed=seed)
    return Trainer(cfg, tcfg, corpus, device=device)


def step_cost(corpus, rounds: int = 6, batch_size: int = 8, seq_len: int = 128, seed: int = 1337,
              device=None) -> dict:
    """Median seconds per optimizer step: fp32, bf16 autocast, FP8 block linears ("all") with the rest in
    fp32, and FP8 block linears with the rest under bf16 autocast (the report's setting).

    One warm-up step each, then `rounds` rounds of one step per variant, interleaved. Wall time and
    this process's CPU time (less sensitive to other programs sharing the cores) are both reported.
    """
    variants = {"fp32": ("none", "fp32"), "bf16": ("none", "bf16"), "fp8": ("all", "fp32"),
                "fp8+bf16": ("all", "bf16")}
    trainers = {name: _trainer(corpus, fp8, prec, rounds + 1, batch_size, seq_len, seed, device)
                for name, (fp8, prec) in variants.items()}
    wall, cpu = ({name: [] for name in trainers} for _ in range(2))
    for r in range(rounds + 1):
        for name, tr in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            tr.train_step()
            if r:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    return {"seconds_per_step": med, "cpu_seconds_per_step": med_cpu,
            "fp8_over_fp32": med["fp8"] / med["fp32"], "fp8+bf16_over_bf16": med["fp8+bf16"] / med["bf16"],
            "bf16_over_fp32": med["bf16"] / med["fp32"], "rounds": rounds, "batch_size": batch_size,
            "seq_len": seq_len, "threads": torch.get_num_threads()}


def train_comparison(corpus, steps: int = 200, batch_size: int = 8, seq_len: int = 128, seed: int = 1337,
                     recipe: str = "all", precision: str = "auto", device=None, log=print) -> dict:
    """Train the high-precision baseline and the FP8 recipe for the same steps, seed and batches.

    Both runs use `precision` (TrainConfig: "auto" = bf16 autocast where the hardware has native bf16,
    else fp32) for everything; the FP8 run additionally puts the `recipe` scope's linears in FP8.

    final_train: mean training loss (main + lambda * MTP) over the last 10% of steps;
    val_main / val_mtp1: validation losses at the end (fixed windows, nats per token).
    """
    check_choice("recipe", recipe, FP8Recipe)
    runs = {}
    for name, fp8 in (("base", "none"), ("fp8", recipe)):
        tr = _trainer(corpus, fp8, precision, steps, batch_size, seq_len, seed, device)
        t0, losses = time.perf_counter(), []
        for _ in range(steps):
            losses.append(tr.train_step().loss)
            if tr.step % max(1, steps // 5) == 0:
                log(f"  {name}: step {tr.step}/{steps} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
        ev = tr.evaluate()
        tail = losses[-max(1, steps // 10):]
        runs[name] = {"final_train": sum(tail) / len(tail), "val_main": ev["main"], "val_mtp1": ev["depth"][0],
                      "seconds": time.perf_counter() - t0, "curve": losses}
        autocast = tr.autocast
    rel_diff = {k: abs(runs["fp8"][k] - runs["base"][k]) / runs["base"][k]
                for k in ("final_train", "val_main", "val_mtp1")}
    return {"runs": runs, "rel_diff": rel_diff,
            "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "seed": seed, "recipe": recipe,
            "baseline": "bf16" if autocast else "fp32"}


@torch.no_grad()
def teacher_forced_acceptance(model, batches) -> dict:
    """Greedy first-draft acceptance on real text: share of positions where the depth-1 MTP argmax equals
    the main model's argmax one position later (both predict t_{i+2}), for the model as given, its
    bf16-autocast run, and a copy with the MTP modules in FP8; plus how often FP8 changes the draft."""
    fp8_model = apply_fp8_recipe(model, "mtp", inplace=False)
    device = next(model.parameters()).device
    hits = {"full": 0.0, "bf16": 0.0, "fp8": 0.0, "same_draft": 0.0}
    n = 0
    for x, _ in batches:
        x = x.to(device)
        out = model(x)
        with torch.autocast(device.type, torch.bfloat16):
            out_bf16 = model(x)
        out_fp8 = fp8_model(x)
        target = out.logits.argmax(-1)[:, 1:]                                          # (B, T-1)
        drafts = {k: o.mtp_logits[0].argmax(-1) for k, o in (("full", out), ("bf16", out_bf16), ("fp8", out_fp8))}
        for k in ("full", "fp8"):
            hits[k] += (drafts[k] == target).float().sum().item()
        hits["bf16"] += (drafts["bf16"] == out_bf16.logits.argmax(-1)[:, 1:]).float().sum().item()
        hits["same_draft"] += (drafts["fp8"] == drafts["full"]).float().sum().item()
        n += target.numel()
    return {k: v / n for k, v in hits.items()} | {"positions": n}


def generation_acceptance(model, prompts: list[list[int]], new_tokens: int = 64) -> dict:
    """Greedy speculative decoding with one draft per step: acceptance with the full-precision and the
    FP8 MTP drafter. The main model verifies in full precision, so both produce the same text."""
    from .decoding import speculative_generate
    out = {}
    for name, fp8 in (("full", False), ("fp8", True)):
        acc = dr = 0
        for p in prompts:
            st = speculative_generate(model, p, new_tokens, num_draft=1, temperature=0.0, fp8_drafter=fp8).stats
            acc, dr = acc + st.accepted, dr + st.drafted
        out[name] = acc / dr
    return out | {"prompts": len(prompts), "new_tokens": new_tokens}


def acceptance_comparison(checkpoint: str | None = None, n_prompts: int = 16, prompt_len: int = 32,
                          new_tokens: int = 64, eval_batches_n: int = 4) -> dict:
    """Both acceptance measurements on the test split, for a checkpoint (default: the shipped model)."""
    from .checkpoint import load_pretrained
    from .data import build_corpus, eval_batches
    model, tok = load_pretrained(checkpoint)
    test = build_corpus(tok).splits["test"]
    batches = eval_batches(test, eval_batches_n, 8, min(128, model.config.max_seq_len))
    starts = torch.linspace(0, len(test) - prompt_len - 1, n_prompts).long().tolist()
    prompts = [[int(t) for t in test[s:s + prompt_len]] for s in starts]
    return {"teacher_forced": teacher_forced_acceptance(model, batches),
            "generation": generation_acceptance(model, prompts, new_tokens)}


# ----------------------------------------------------------------------------- command line

def markdown(results: dict) -> str:
    lines = []
    if "quantization" in results:
        big = [k[len("rel_error_"):] for k in results["quantization"][0] if k.startswith("rel_error_")][1:]
        lines += ["| format | granularity | rel. error | " + " | ".join(
                  f"with one {float(b):g} outlier (zeros)" for b in big) + " |", "|---" * (3 + len(big)) + "|"]
        lines += [f"| {r['format']} | {r['granularity']} | {r['rel_error_none']:.2%} | " + " | ".join(
                  f"{r['rel_error_' + b]:.2%} ({r['underflow_' + b]:.2%})" for b in big) + " |"
                  for r in results["quantization"]]
        lines.append("")
    if "accumulation" in results:
        lines += ["| K | ~14-bit accumulator | promoted every 128 | FP32 (kernel) |", "|---|---|---|---|"]
        lines += [f"| {r['k']} | {r['limited']:.3%} | {r['promoted']:.3%} | {r['fp32']:.1e} |"
                  for r in results["accumulation"]]
        lines.append("")
    if "cost" in results:
        c = results["cost"]
        s, cs = c["seconds_per_step"], c["cpu_seconds_per_step"]
        lines += [f"step cost (batch {c['batch_size']} x {c['seq_len']}, median of {c['rounds']} interleaved "
                  f"steps, {c['threads']} threads):", "| variant | s/step (wall) | s/step (CPU) |", "|---|---|---|"]
        lines += [f"| {k} | {s[k]:.3f} | {cs[k]:.3f} |" for k in s]
        lines += [f"fp8/fp32 = {c['fp8_over_fp32']:.2f}x, fp8+bf16 / bf16 = {c['fp8+bf16_over_bf16']:.2f}x, "
                  f"bf16/fp32 = {c['bf16_over_fp32']:.2f}x", ""]
    if "train" in results:
        t = results["train"]
        lines += [f"training, {t['steps']} steps, batch {t['batch_size']} x {t['seq_len']}, seed {t['seed']}, "
                  f"FP8 recipe {t['recipe']!r}:", f"| loss | {t['baseline']} | fp8 | rel. diff |", "|---|---|---|---|"]
        lines += [f"| {k} | {t['runs']['base'][k]:.4f} | {t['runs']['fp8'][k]:.4f} | {t['rel_diff'][k]:.3%} |"
                  for k in ("final_train", "val_main", "val_mtp1")]
        lines.append("")
    if "acceptance" in results:
        tf, g = results["acceptance"]["teacher_forced"], results["acceptance"]["generation"]
        lines += [f"first-draft acceptance, teacher-forced on {tf['positions']} test positions: "
                  f"fp32 {tf['full']:.2%}, bf16 {tf['bf16']:.2%}, MTP in FP8 {tf['fp8']:.2%} "
                  f"(FP8 changes {1 - tf['same_draft']:.2%} of drafts)",
                  f"greedy speculative decoding ({g['prompts']} prompts x {g['new_tokens']} tokens): "
                  f"full-precision drafter {g['full']:.2%}, FP8 drafter {g['fp8']:.2%}", ""]
    return "\n".join(lines)


def write_json(path: Path, obj: dict) -> None:
    from .data import atomic_write_json
    atomic_write_json(path, obj, indent=1)
