"""The markdown page of a tools/gpu_check.py report (its JSON holds everything; this is the readable view)."""

from __future__ import annotations


def _f(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _cell(v, key: str, spec: str) -> str:
    """A timing/error cell: the number, or the first words of the error that stopped it."""
    if not isinstance(v, dict):
        return "-"
    return _f(v[key], spec) if key in v else f"error: {v.get('error', '?')[:90]}"


def tests(r: dict) -> list[str]:
    t = r.get("tests", {})
    if not t:
        return []
    lines = [f"`{t['command']}`: **{t['passed']} passed, {t['failed']} failed, {t['error']} errors, "
             f"{t['skipped']} skipped** in {t['seconds']} s (exit code {t['exit_code']})", ""]
    lines += [f"- FAILED `{f['test']}`: {f['message']}" for f in t["failures"]]
    lines += [f"- skipped `{s['test']}`: {s['reason']}" for s in t["skips"]]
    return lines + [""]


def simulation(r: dict) -> list[str]:
    lines = [f"Hardware: {r.get('hardware', '?')}", ""]
    if r.get("kernel_scheme"):
        lines += ["**(a) DeepSeek's scheme** (E4M3, 1x128 tiles x 128x128 blocks, FP32 across 128-chunks). "
                  "Relative Frobenius distance from the exact (float64) sum of the same FP8 values and scales, "
                  "on the corner rows x cols of C:", "",
                  "| M x N x K | corner | sim chunked | sim dequant | 14-bit model | hw per-chunk | hw blockwise "
                  "| hw per-chunk: to 14-bit model / to sim | model closer than exact? | FP8 vs the fp32 GEMM |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["kernel_scheme"]:
            e = row["rel_to_exact"]
            pc = row.get("hw per-chunk", {})
            blk = row.get("hw blockwise", {})
            blk_cell = _f(e["hw blockwise"], ".2e") if "hw blockwise" in e else \
                (f"error: {blk['error'][:80]}" if "error" in blk else "-")
            lines.append(
                f"| {' x '.join(map(str, row['shape']))} | {row['corner'][0]} x {row['corner'][1]} "
                f"| {_f(e['sim chunked'], '.2e')} | {_f(e['sim dequant'], '.2e')} | {_f(e['model 14-bit'], '.2e')} "
                f"| {_f(e.get('hw per-chunk'), '.2e')} | {blk_cell} "
                f"| {_f(pc.get('to_model_14bit'), '.2e')} / {_f(pc.get('to_sim_chunked'), '.2e')} "
                f"| {pc.get('model_closer_than_exact', '-')} | {_f(row['fp32_gemm_rel_to_exact'], '.2%')} |")
        lines.append("")
    if r.get("accumulator"):
        lines += ["**(b) The accumulator**: one scaled_mm over all of K (unit tensor-wise scales, FP32 out), "
                  "against the B-bit accumulation model (slices of 32 products, truncation toward zero). "
                  "Errors relative to the exact sum; best B = the model closest to the hardware element by "
                  "element; B by size = the model whose error is as large; bias < 0 = the hardware shrinks the "
                  "sums (truncation):", "",
                  "| K | M = N | 14-bit model (no promotion) | 14-bit, promoted every 128 | hw default | best B "
                  "| B by size | hw to 14-bit model | bias | hw fast-accum | best B | B by size | hw to 14-bit model "
                  "| bias | 14-bit model closer than exact (default / fast) |", "|---" * 15 + "|"]
        for row in r["accumulator"]:
            d, f = row.get("default", {}), row.get("fast_accum", {})
            lines.append(
                f"| {row['k']} | {row['mn']} | {_f(row['model_14bit_rel'], '.2e')} "
                f"| {_f(row['model_14bit_promoted_rel'], '.2e')} | {_cell(d, 'rel_to_exact', '.2e')} "
                f"| {_f(d.get('best_bits'))} | {_f(d.get('bits_of_same_error_size'))} "
                f"| {_f(d.get('to_model_14bit'), '.2e')} | {_f(d.get('signed_bias'), '.1e')} "
                f"| {_cell(f, 'rel_to_exact', '.2e')} | {_f(f.get('best_bits'))} "
                f"| {_f(f.get('bits_of_same_error_size'))} "
                f"| {_f(f.get('to_model_14bit'), '.2e')} | {_f(f.get('signed_bias'), '.1e')} "
                f"| {d.get('model_14bit_closer_than_exact', '-')} / {f.get('model_14bit_closer_than_exact', '-')} |")
        lines.append("")
    return lines


def throughput(r: dict) -> list[str]:
    lines = []
    if r.get("gemm"):
        names = [k for k in r["gemm"][0] if k not in ("shape", "mnk")]
        lines += ["GEMM time in ms (TFLOP/s, speed-up over bf16):", "",
                  "| shape | M x N x K | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for row in r["gemm"]:
            cells = [f"{v['ms']:.3f} ({v['tflops']:.3g}, {v.get('speedup_over_bf16', 0):.2f}x)" if "ms" in v
                     else f"error: {v['error'][:60]}" for v in (row[n] for n in names)]
            lines.append(f"| {row['shape']} | {' x '.join(map(str, row['mnk']))} | " + " | ".join(cells) + " |")
        lines.append("")
    if r.get("fp8_linear_fwd_bwd"):
        names = [k for k in r["fp8_linear_fwd_bwd"][0] if k not in ("shape", "tokens_in_out")]
        lines += ["Linear layer forward + backward, ms (speed-up over bf16):", "",
                  "| layer | tokens, in, out | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for row in r["fp8_linear_fwd_bwd"]:
            cells = [f"{v['ms']:.3f} ({v.get('speedup_over_bf16', 0):.2f}x)" if "ms" in v
                     else f"error: {v['error'][:60]}" for v in (row[n] for n in names)]
            shape = ", ".join(map(str, row["tokens_in_out"]))
            lines.append(f"| {row['shape']} | {shape} | " + " | ".join(cells) + " |")
        lines.append("")
    if r.get("note"):
        lines += [r["note"], ""]
    return lines


def decoding(r: dict) -> list[str]:
    if not r.get("rows"):
        return []
    lines = [f"Prompts: {r['prompts_source']}; batch 1, greedy, threads {r.get('threads')}.", "",
             "| drafter | k | tau | acceptance | tokens/s | speed-up | identical to AR | c | v |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['drafter']} | {row['k']} | {row['tau']:.3f} | {_f(row['acceptance_rate'], '.3f')} "
                     f"| {row['tokens_per_s']:.1f} | {row['speedup']:.2f}x | {_f(row['identical_to_ar'])} "
                     f"| {_f(row['c'], '.3f')} | {row['v']:.2f} |")
    if r.get("vs_cpu"):
        v = r["vs_cpu"]
        lines += ["", f"Against the CPU report: tau equal for every row: **{v['tau_equal']}**; AR text identical "
                      f"on {v['ar_text_identical_prompts']} of {v['prompts']} prompts; tau differences: "
                  + ", ".join(f"{k} {d:+.3f}" for k, d in v["tau_diff"].items())]
    return lines + [""]


def train(r: dict) -> list[str]:
    if not r.get("runs"):
        return []
    lines = ["| run | tokens/s | final val main | seconds | command |", "|---|---|---|---|---|"]
    for name, run in r["runs"].items():
        lines.append(f"| {name} | {run['tokens_per_s']:.0f} | {run['final_val_main']:.3f} | {run['seconds']:.0f} "
                     f"| `{run['command']}` |")
    first = next(iter(r["runs"].values()))
    lines += ["", "Validation main loss by step:", "",
              "| step | " + " | ".join(r["runs"]) + " |", "|---" * (1 + len(r["runs"])) + "|"]
    for i, point in enumerate(first["curve"]):
        vals = [f"{run['curve'][i]['val_main']:.3f}" if i < len(run["curve"]) else "-" for run in r["runs"].values()]
        lines.append(f"| {point['step']} | " + " | ".join(vals) + " |")
    if r.get("comparison"):
        c = r["comparison"]
        lines += ["", f"FP8 vs BF16 (same seed), final val main: {c['fp8_vs_bf16_final_rel']:.2%}; seed 1337 vs "
                      f"1338 (BF16): {c['seed_vs_seed_final_rel']:.2%}; within seed noise: "
                      f"**{c['within_seed_noise']}**; "
                      f"FP8 (simulated) tokens/s over BF16: {c['fp8_tokens_per_s_over_bf16']:.2f}x"]
    return lines + [""]


def notebooks(r: dict) -> list[str]:
    lines = []
    for nb in r.get("notebooks", []):
        ok = not nb["problems"]
        lines.append(f"- **{nb['notebook']}** ({nb['seconds']} s): "
                     + ("build checks pass (no error, solutions correct, every quoted number shown)" if ok else
                        f"{len(nb['problems'])} build-check problem(s)")
                     + (f"; {len(nb['checked_outputs_changed'])} checked output(s) differ from the stored ones"
                        if nb["checked_outputs_changed"] else "; checked outputs equal to the stored ones"))
        lines += [f"  - {p}" for p in nb["problems"][:20]]
        lines += [f"  - `{c['cell']}` stored `{c['stored'][:100]}` / here `{c['here'][:100]}`"
                  for c in nb["checked_outputs_changed"][:12]]
    if r.get("device_sentences"):
        lines += ["", f"{len(r['device_sentences'])} sentences name a device, a time or a speed (for review; the "
                      "list is in the JSON, `device_sentences`)."]
    return lines + [""]


RENDER = {"tests": ("1. Unit tests on the device", tests),
          "simulation": ("2. FP8 simulation vs hardware", simulation),
          "throughput": ("3. FP8 vs BF16 throughput", throughput),
          "decoding": ("4. Decoding at batch 1", decoding),
          "train": ("5. Training the course preset", train),
          "notebooks": ("6. Notebooks on the device", notebooks)}


def summary(name: str, r: dict) -> str:
    """One line per part: the answer to the question the part asks."""
    if name == "tests" and r.get("tests"):
        t = r["tests"]
        return f"{t['passed']} passed, {t['failed'] + t['error']} failed, {t['skipped']} skipped"
    if name == "simulation" and r.get("kernel_scheme"):
        pc = [row["hw per-chunk"] for row in r["kernel_scheme"] if "hw per-chunk" in row]
        acc = r.get("accumulator", [])
        bits = {k: [row[k].get("best_bits") for row in acc if isinstance(row.get(k), dict)]
                for k in ("default", "fast_accum")}
        worst = max(x["to_sim_chunked"] for x in pc) if pc else None
        return (f"hardware per-chunk vs simulation: at most {worst:.1e} of the norm of C; "
                f"14-bit model closer to the hardware than exact accumulation in "
                f"{sum(x['model_closer_than_exact'] for x in pc)} of {len(pc)} shapes; accumulator bits that fit best "
                f"(default / fast-accum, by K): "
                f"{bits['default']} / {bits['fast_accum']}" if pc else "no FP8 hardware")
    if name == "throughput" and r.get("gemm"):
        row = r["gemm"][0]
        best = {k: v["speedup_over_bf16"] for k, v in row.items() if isinstance(v, dict) and "speedup_over_bf16" in v}
        top = max(best, key=best.get)
        return f"{row['shape']}: fastest {top}, {best[top]:.2f}x bf16"
    if name == "decoding" and r.get("rows"):
        best = max(r["rows"], key=lambda x: x["speedup"])
        same = all(x["identical_to_ar"] == len(r["prompts"]) for x in r["rows"])
        line = f"best {best['drafter']} k={best['k']} {best['speedup']:.2f}x AR (tau {best['tau']:.2f}); greedy = AR " \
               f"on every prompt: {same}"
        return line + (f"; tau equal to the CPU's: {r['vs_cpu']['tau_equal']}" if r.get("vs_cpu") else "")
    if name == "train" and r.get("comparison"):
        c = r["comparison"]
        return (f"FP8 within seed noise of BF16: {c['within_seed_noise']}; FP8/BF16 tokens/s "
                f"{c['fp8_tokens_per_s_over_bf16']:.2f}x")
    if name == "notebooks" and r.get("notebooks"):
        nbs = r["notebooks"]
        return f"{len(nbs)} notebooks: {sum(bool(n['problems']) for n in nbs)} with build-check problems, " \
               f"{sum(bool(n['checked_outputs_changed']) for n in nbs)} with changed checked outputs"
    return "no result"


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# GPU check: {m.get('gpu', 'CPU')}", ""]
    if report.get("note"):
        lines += [f"**{report['note']}.**", ""]
    lines += [f"Written by `python tools/gpu_check.py` (`make gpu-check`) on {m['date_utc']}: device {m['device']}"
              + (f" ({m['gpu']}, compute capability {m['capability']}, {m['gpu_memory_gib']} GiB, CUDA {m['cuda']})"
                 if "gpu" in m else "")
              + f", torch {m['torch']}, Python {m['python']}, {m['cpu_count']} CPUs, commit {m.get('commit')}"
              + (f" with {len(m['modified'])} modified file(s) ({', '.join(m['modified'][:8])})" if m.get("modified")
                 else " (the code as committed)" if m.get("modified") == [] else "") + ". "
              "Every number below comes from the JSON file beside this one.", "",
              "| part | status | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {RENDER[name][0]} | {part['status']} | {part['seconds']} | {summary(name, part['result'])} |"
              for name, part in report["parts"].items()]
    lines.append("")
    for name, part in report["parts"].items():
        title, render = RENDER[name]
        lines += [f"## {title}", "",
                  f"Status: **{part['status']}** in {part['seconds']} s (budget {part['budget_s']:.0f} s)."]
        if part["error"]:
            lines += ["", "```", part["error"][-1500:].strip(), "```"]
        lines += [""] + render(part["result"])
    return "\n".join(lines).rstrip() + "\n"
