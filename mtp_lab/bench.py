"""`mtp-lab bench`: autoregressive vs speculative decoding on held-out prompts, batch size 1.

For AR and each drafter x k: tau (mean acceptance length), per-position acceptance, tokens/s and the speedup
over AR measured in the same run. Configurations are interleaved prompt by prompt, so that machine load hits
all of them alike. Greedy runs also check that every speculative output equals the AR output.

Profile: the time of a speculative run splits into draft (drafter.propose), verify (main-model forwards, the
prefill included) and overhead (acceptance, rollback, bookkeeping). Per main-model forward F:
    speedup = (tokens / F) * a / (draft + verify + overhead)        a = AR seconds per token
so speedup / (tokens per F) is the share of the ideal that survives, and draft/a, verify/a, overhead/a say
where the rest goes. tau (vLLM) = 1 + accepted / drafting steps; tokens / F also counts the prefill.

Drafters: every name of decoding.DRAFTERS (make_drafter): the MTP chain (mtp; mtp-pre recycling the pre-norm state,
which differs only for k > D; mtp-fp8 with the MTP blocks in simulated FP8), ngram (prompt lookup), and the trees
(suffix: lookup's continuations of every earlier match; mtp-tree, hybrid, adaptive; mtp_lab.tree), whose k is the
tree's maximum depth.
"""

from __future__ import annotations

import math
import time

import torch

from .config import check_int
from .decoding import DRAFTERS, GenerationStats, generate, make_drafter, speculative_generate


def build_drafters(model, names=DRAFTERS, **kwargs) -> dict:
    """Drafter objects by name (decoding.make_drafter, the one registry), built once and reused for every prompt
    (the FP8 copy is converted once, the adaptive drafter's costs measured once). kwargs go to make_drafter."""
    return {name: make_drafter(model, name, **kwargs) for name in names}


def heldout_prompts(checkpoint: str | None, n: int, prompt_len: int):
    """(model, prompts, description): the shipped (or given) checkpoint and n windows of its TEST split."""
    from .checkpoint import load_pretrained
    from .data import build_corpus
    model, tok = load_pretrained(checkpoint)
    test = build_corpus(tok).splits["test"]
    starts = torch.linspace(0, len(test) - prompt_len - 1, n).long().tolist()
    prompts = [[int(t) for t in test[s:s + prompt_len]] for s in starts]
    return model, prompts, f"checkpoint {checkpoint or 'shipped course model'}, test split"


def random_setup(preset: str, n: int, prompt_len: int, seed: int = 0):
    """(model, prompts, description): random weights and random prompts, to try the command without a checkpoint."""
    from .config import get_preset
    from .model import MTPModel
    torch.manual_seed(seed)
    model = MTPModel(get_preset(preset)).eval()
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (n, prompt_len), generator=g).tolist()
    return model, prompts, f"RANDOM weights, preset {preset}, random prompts"


merge = GenerationStats.merge        # counters summed over generations (kept under its old name)


def run_bench(model, prompts, new_tokens: int, ks, drafters: dict, temperature: float = 0.0,
              seed: int = 0, progress=None) -> list[dict]:
    """One row per configuration: AR first, then every drafter x k (mtp-pre only where k > D)."""
    D = model.config.mtp_depth
    configs = [("ar", 0)] + [(name, k) for name in drafters for k in ks if name != "mtp-pre" or k > D]

    def run(name, k, prompt, n_new):
        if name == "ar":
            return generate(model, prompt, n_new, temperature=temperature, seed=seed)
        return speculative_generate(model, prompt, n_new, num_draft=k, temperature=temperature, seed=seed,
                                    drafter=drafters[name])

    for name, k in configs:                                   # warm-up, untimed
        run(name, k, prompts[0], min(8, new_tokens))
    stats = {c: [] for c in configs}
    identical = {c: 0 for c in configs}
    cpu = {c: 0.0 for c in configs}          # process CPU seconds: the load-independent measure on a shared machine
    for i, prompt in enumerate(prompts):
        if progress is not None:
            progress(f"prompt {i + 1}/{len(prompts)}")
        ref = None
        for name, k in configs:
            c0 = time.process_time()
            out = run(name, k, prompt, new_tokens)
            cpu[(name, k)] += time.process_time() - c0
            if ref is None:                                   # the AR output, first in every round
                ref = out
            stats[(name, k)].append(out.stats)
            identical[(name, k)] += out.tokens == ref.tokens
    ar = merge(stats[("ar", 0)])
    a = ar.wall_time_s / ar.main_forwards                     # AR seconds per token (one forward each)
    rows = []
    for name, k in configs:
        s = merge(stats[(name, k)])
        F = s.main_forwards
        overhead = s.wall_time_s - s.draft_time_s - s.verify_time_s
        tps = s.tokens_per_second
        rows.append({
            "drafter": name, "k": k, "prompts": len(prompts), "new_tokens": s.new_tokens,
            "tokens_per_s": tps, "speedup": tps / ar.tokens_per_second,
            "cpu_s": cpu[(name, k)], "cpu_speedup": cpu[("ar", 0)] / cpu[(name, k)],
            "tau": s.mean_acceptance_length if k else 1.0, "acceptance_rate": s.acceptance_rate if k else None,
            "per_position": s.per_position, "tokens_per_main_forward": s.tokens_per_main_forward,
            "main_forwards": F, "draft_forwards": s.draft_forwards, "drafting_steps": s.steps,
            "identical_to_ar": identical[(name, k)] if temperature == 0 else None,
            "ms_per_main_forward": {"draft": 1e3 * s.draft_time_s / F, "verify": 1e3 * s.verify_time_s / F,
                                    "overhead": 1e3 * overhead / F, "ar_token": 1e3 * a},
            "ms_per_draft_forward": 1e3 * s.draft_time_s / s.draft_forwards if s.draft_forwards else None,
            "nodes_per_step": s.drafted / s.steps if s.steps else None,
            "accepted_by_source": dict(sorted(s.accepted_by_source.items())),
        })
        r = rows[-1]
        r["c"] = r["ms_per_draft_forward"] / (1e3 * a) if r["ms_per_draft_forward"] is not None else None
        r["v"] = r["ms_per_main_forward"]["verify"] / (1e3 * a)
        r["speedup_over_tau"] = r["speedup"] / r["tau"]
        r["speedup_over_tokens_per_forward"] = r["speedup"] / r["tokens_per_main_forward"]
    return rows


def repeated_bench(model, prompts, new_tokens: int, ks, drafters: dict, repeats: int = 3, **kwargs) -> list[dict]:
    """run_bench `repeats` times; each row gets the median speed-up (and c, v) over the repeats and their range.

    Timings on a shared machine move from run to run: a single run is one sample, never the answer.
    The counts (tau, acceptance) are the same in every greedy repeat; the time fields come from the median run.
    """
    check_int("repeats", repeats, minimum=1)
    runs = [run_bench(model, prompts, new_tokens, ks, drafters, **kwargs) for _ in range(repeats)]
    rows = []
    for i in range(len(runs[0])):
        samples = sorted((run[i] for run in runs), key=lambda r: r["speedup"])
        median = dict(samples[len(samples) // 2])
        speedups = [r["speedup"] for r in samples]
        cpu = sorted(r["cpu_speedup"] for r in samples)
        median.update(repeats=repeats, speedup_samples=speedups, speedup_range=(speedups[0], speedups[-1]),
                      cpu_speedup_median=cpu[len(cpu) // 2], cpu_speedup_range=(cpu[0], cpu[-1]))
        rows.append(median)
    return rows


def matmul_macs_per_token(cfg) -> dict:
    """Multiply-adds per token of the weight matmuls (attention scores excluded): main model and one MTP module.

    block = 4 d^2 (wq, wk, wv, wo) + 3 d d_ff (SwiGLU w1, w3, w2);  head = d V (shared)
    main = L * block + head;   MTP module = 2 d^2 (eh_proj) + block + head
    """
    d = cfg.d_model
    block = 4 * d * d + 3 * d * cfg.d_ff
    head = d * cfg.vocab_size
    main, module = cfg.n_layers * block + head, 2 * d * d + block + head
    return {"main": main, "mtp_module": module, "c": module / main}


def speedup_ceiling(c: float, k: int) -> float:
    """Best speedup with k drafts of relative cost c each, EVERY draft accepted, a verify forward over k+1 tokens
    that costs no more than one token, and no overhead: (k + 1) / (1 + k c). With compute-bound costs (a small
    model on a CPU) c is at least the matmul ratio of matmul_macs_per_token."""
    return (k + 1) / (1 + k * c)


def op_profile(model, prompt, new_tokens: int, k: int, drafter, top: int = 15) -> dict:
    """torch.profiler over one AR and one speculative generation: aten ops per generated token, top ops."""
    from torch.profiler import ProfilerActivity, profile
    out = {}
    for label, fn in (("ar", lambda: generate(model, prompt, new_tokens)),
                      (f"spec_k{k}", lambda: speculative_generate(model, prompt, new_tokens, num_draft=k,
                                                                  drafter=drafter))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = fn()
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        calls = sum(e.count for e in events)
        out[label] = {
            "aten_calls_per_token": calls / len(result.tokens),
            "main_forwards": result.stats.main_forwards,
            "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
                        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]],
        }
    return out


def _fmt(x, spec: str, width: int = 5) -> str:
    return f"{'-':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def json_safe(x):
    """NaN (a rate with nothing to count) -> None, so that the file is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def format_table(rows: list[dict]) -> str:
    kmax = min(4, max(r["k"] for r in rows))           # per-position columns: the first four positions
    head = (f"{'drafter':8} {'k':>2} {'tau':>5} {'acc':>5} " + " ".join(f"{'p' + str(j + 1):>5}" for j in range(kmax))
            + f" {'tok/F':>5} {'tok/s':>7} {'speedup':>7} {'range':>10} {'cpu sp':>6} {'sp/tau':>6}"
            + f" {'draft':>6} {'verify':>6} {'ovh':>5} {'c':>5} {'v':>5} {'nodes':>5}  same  accepted from")
    lines = [head, "-" * len(head)]
    for r in rows:
        pos = [r["per_position"][j] if j < len(r["per_position"]) else None for j in range(kmax)]
        ms = r["ms_per_main_forward"]
        lines.append(
            f"{r['drafter']:8} {r['k']:>2} {_fmt(r['tau'], '5.2f')} {_fmt(r['acceptance_rate'], '5.2f')} "
            + " ".join(_fmt(p, "5.2f") for p in pos)
            + f" {r['tokens_per_main_forward']:5.2f} {r['tokens_per_s']:7.1f} {r['speedup']:6.2f}x"
            + f" {r['speedup_range'][0]:5.2f}-{r['speedup_range'][1]:4.2f} {r['cpu_speedup']:5.2f}x"
            + f" {r['speedup_over_tau']:6.2f} {ms['draft']:6.2f} {ms['verify']:6.2f} {ms['overhead']:5.2f}"
            + f" {_fmt(r['c'], '5.3f')} {r['v']:5.2f} {_fmt(r.get('nodes_per_step'), '5.1f')}"
            + f"  {_fmt(r['identical_to_ar'], 'd', 1)}/{r['prompts']}  {_sources(r.get('accepted_by_source') or {})}")
    lines.append(f"speedup = the median of {rows[0].get('repeats', 1)} run(s), range = min-max over them; "
                 "tau = 1 + accepted/drafting steps; pj = acceptance at draft position j; tok/F = tokens per "
                 "main forward; cpu sp = speedup in process CPU time; draft/verify/ovh = ms per main forward "
                 f"(AR: ms per token = {rows[0]['ms_per_main_forward']['ar_token']:.2f}); c = ms per draft / AR ms "
                 "per token; v = verify ms per main forward / AR ms per token; nodes = drafted tokens per drafting "
                 "step (a tree's nodes); same = outputs identical to AR; accepted from = share of accepted drafts "
                 "by who proposed them")
    return "\n".join(lines)


def _sources(counts: dict) -> str:
    total = sum(counts.values())
    return " ".join(f"{src} {n / total:.0%}" for src, n in counts.items()) if total else "-"


def verify_cost(model, max_n: int = 64, repeats: int = 7, source: str = "") -> dict:
    """`mtp-lab bench --verify-cost N`: v(n) for n = 1..N and the draft cost c (tree.measure_costs, process CPU time,
    this process's threads), with the tree sizes the curve implies: the largest n whose verify forward costs at most
    1.25, 1.5 and 2 AR steps (v_fit, the non-decreasing fit)."""
    from .tree import measure_costs
    check_int("--verify-cost", max_n, minimum=2, note=" (the largest n of v(n) to time)")
    if max_n >= model.config.max_seq_len:
        raise ValueError(f"--verify-cost {max_n} must be below the model's max_seq_len {model.config.max_seq_len}")
    out = measure_costs(model, max_n=max_n, repeats=repeats, prefix=min(64, model.config.max_seq_len - max_n))
    fit = out["v_fit"]
    out["largest_n_within"] = {str(x): max(n for n, v in zip(out["n"], fit, strict=True) if v <= x)
                               for x in (1.25, 1.5, 2.0)}
    out.update(source=source, config=model.config.to_dict(), torch=torch.__version__)
    return out


def format_verify_cost(res: dict) -> str:
    ns = [n for n in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64) if n <= len(res["n"])]
    lines = [f"verify cost v(n) = CPU ms of one forward over n tokens / CPU ms of one token (AR: {res['ar_ms']:.2f} "
             f"ms), median of {res['repeats']}, {res['threads']} thread(s), after a {res['prefix']}-token cache",
             "n      " + " ".join(f"{n:>5}" for n in ns),
             "v(n)   " + " ".join(f"{res['v'][n - 1]:5.2f}" for n in ns),
             "fit    " + " ".join(f"{res['v_fit'][n - 1]:5.2f}" for n in ns),
             f"draft cost c = {res['c']:.3f} (one MTP module call over {res['entries']} tree entries, "
             f"{res['c_ms']:.2f} ms: a drafting step's modules 1..D and D again after a verify forward, per call)",
             "largest tree (n = nodes + root) within v(n) <= " + ", ".join(
                 f"{x}: {n}" for x, n in res["largest_n_within"].items())]
    return "\n".join(lines)


def stopping(model, prompts, k: int, new_tokens: int, temperature: float = 0.0, seeds: int = 1,
             source: str = "") -> dict:
    """`mtp-lab bench --stopping K`: the MTP chain recorded at k = K (`seeds` runs per prompt when sampling, one when
    greedy: the runs would repeat) and scored by stopping.stopping_bound with the costs measured now (v up to K + 2
    tokens, c; tree.measure_costs, median of 7)."""
    from .stopping import record_chain, stopping_bound
    from .tree import measure_costs, tree_cost
    check_int("--stopping", k, minimum=1, maximum=model.config.max_seq_len // 2 - 2,
              note=f" (the chain's draft length to record; v(n) is timed up to K + 2 tokens after a cached prefix, "
                   f"within max_seq_len {model.config.max_seq_len})")
    if model.config.mtp_depth == 0:
        raise ValueError("--stopping records the MTP chain: the model needs MTP modules (config.mtp_depth >= 1)")
    seeds = seeds if temperature > 0 else 1
    cost = tree_cost(measure_costs(model, max_n=k + 2, repeats=7, prefix=min(64, model.config.max_seq_len // 2)))
    result = stopping_bound(record_chain(model, prompts, k, new_tokens, temperature, seeds), cost)
    result.update(source=source, config=model.config.to_dict(), torch=torch.__version__, temperature=temperature,
                  seeds=seeds, new_tokens=new_tokens, ar_ms=cost.ar_ms, threads=torch.get_num_threads())
    return result
