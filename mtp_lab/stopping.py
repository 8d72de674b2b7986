"""How much can an adaptive draft length gain? A bound from the MTP chain's own records.

The chain drafts K tokens per step; each step records the drafter's confidence at every draft position (the max of
q, the distribution the draft was drawn from; greedy: the softmax of its logits) and how many drafts the main model
kept. A rule that drafts fewer tokens in a step keeps min(kept, k) of them: speculative sampling judges draft j on
p_j and q_j alone, whatever is drafted after it. So every rule is scored on one set of records:

    rate = sum over steps (kept_k + 1) / sum over steps (calls c + v(verified + 1))       (tokens per AR-token time)

with c and v the measured costs (tree.measure_costs; the engine's own overhead per step is left out). Fixed k drafts
k tokens every step. The cost rule (the adaptive drafter's, tree.TreeCost.best_size and TreeDrafter._worth_another,
in chain form) weighs each draft against r, the rate the generation is worth:

    reach_j = prod_{i <= j} a(i, bin(conf_i))                 the estimated chance that drafts 1..j all pass
    verify draft j        iff  reach_j > r (v(j + 1) - v(j))    (else drop it and stop: its call is paid)
    call module j + 1     iff  reach_j abar(j + 1) > r (c + v(j + 2) - v(j + 1))

a(i, bin): how often draft i passed once draft i - 1 had, among drafts whose confidence fell in that bin (tree.Q_BINS);
abar(i): the same over all bins, as the next draft's confidence is not known before its call. conf_j depends on the
drafts before j, never on d_j itself, so the rule is causal: exact under sampling.

a, abar and r are fitted on half the prompts and the rule scored on the other half, both ways round (cross-fitting):
the gain reported is what a rule learned from past steps earns on new ones. Fitted and scored on the same steps it is
an upper bound (in-sample). Greedy, a draft passes iff it is the target's argmax, which a confident drafter predicts
well; sampled, it passes with chance 1 - TV(p, q) on average, which the drafter's confidence predicts far less.

How much could a better signal add? The records also keep each draft's true chance to pass once reached,
sum_x min(p_j(x), q_j(x)) = 1 - TV(p_j, q_j) (greedy: 1 or 0), known only after the verify forward. The same rule fed
that chance in place of max q is an oracle: a head trained to predict a draft's acceptance from what the drafter
knows before it draws (as SpecDec++ does) cannot know more, so the oracle's gain bounds what such a head could add.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

import torch

from .config import check_int
from .decoding import speculative_steps
from .drafters import MTPDrafter
from .tree import Q_BINS, TreeCost

RATES = tuple(i / 20 for i in range(10, 121))       # the prices r (0.5 .. 6 tokens per AR-token time) tried in a fit


@dataclass(frozen=True)
class StepRecord:
    prompt: int              # which prompt the step came from (cross-fitting splits by prompt)
    conf: tuple[float, ...]  # the drafter's confidence at draft positions 1..K: max of q (greedy: softmax of logits)
    kept: int                # drafts the main model kept, 0..K
    accept: tuple[float, ...] = ()  # each draft's chance to pass once reached, 1 - TV(p_j, q_j) (greedy: 1 or 0):
                                    # known only after the verify forward, so an ORACLE's signal (empty: not recorded)


def record_chain(model, prompts: list[list[int]], k: int, new_tokens: int, temperature: float = 0.0,
                 seeds: int = 1) -> list[StepRecord]:
    """The MTP chain (MTPDrafter) drafting k tokens per step on every prompt, `seeds` runs each (seed s of run s; a
    greedy run needs one): one StepRecord per step that drafted all k (the last steps of a run may draft fewer)."""
    check_int("k", k, minimum=1)
    check_int("seeds", seeds, minimum=1)
    drafter, records = MTPDrafter(model), []
    for seed in range(seeds):
        for i, prompt in enumerate(prompts):
            for step in speculative_steps(model, prompt, new_tokens, num_draft=k, temperature=temperature,
                                          seed=seed, drafter=drafter):
                if len(step.draft_tokens) != k:
                    continue
                q = torch.softmax(step.draft_logits.float(), dim=-1) if temperature == 0 else step.draft_probs
                accept = torch.minimum(step.target_probs[:k], step.draft_probs.to(step.target_probs)).sum(-1)
                records.append(StepRecord(i, tuple(q.max(dim=-1).values.tolist()), step.n_accepted,
                                          tuple(accept.clamp(max=1.0).tolist())))
    return records


def acceptance_table(records: list[StepRecord]) -> list[list[list[int]]]:
    """table[j][b] = [passed, reached]: drafts at position j + 1 whose confidence fell in bin b (tree.Q_BINS), reached
    (the drafts before them all passed) and passed."""
    K = len(records[0].conf)
    table = [[[0, 0] for _ in range(len(Q_BINS) + 1)] for _ in range(K)]
    for rec in records:
        for j, conf in enumerate(rec.conf[:rec.kept + 1]):                      # the drafts reached
            cell = table[j][bisect.bisect(Q_BINS, conf)]
            cell[0] += j < rec.kept
            cell[1] += 1
    return table


def _rates(table: list[list[list[int]]]) -> tuple[list[list[float]], list[float]]:
    """(a(j, b), abar(j)) from a table: each bin pulled toward its position's overall rate by one pseudo-observation."""
    a, abar = [], []
    for row in table:
        passed, reached = sum(c[0] for c in row), sum(c[1] for c in row)
        abar.append((passed + 0.5) / (reached + 1.0))
        a.append([(c[0] + abar[-1]) / (c[1] + 1.0) for c in row])
    return a, abar


def _steps(rec: StepRecord, cost: TreeCost, rule: tuple | None, k: int = 0) -> tuple[int, int]:
    """(module calls, drafts verified) of one step: fixed k when rule is None, else the cost rule (a, abar, r)."""
    if rule is None:
        return k, k
    a, abar, r = rule
    reach, K = 1.0, len(rec.conf)
    for j, conf in enumerate(rec.conf, start=1):
        reach *= a[j - 1][bisect.bisect(Q_BINS, conf)]
        if reach <= r * (cost.verify(j + 1) - cost.verify(j)):
            return j, j - 1
        if j == K or reach * abar[j] <= r * (cost.c + cost.verify(j + 2) - cost.verify(j + 1)):
            return j, j
    return K, K


def _tally(records: list[StepRecord], cost: TreeCost, rule: tuple | None = None, k: int = 0
           ) -> tuple[float, float, int]:
    """(tokens, AR-token times, drafts verified) of the records under fixed k (rule None) or the cost rule."""
    tokens = time = 0.0
    verified = 0
    for rec in records:
        calls, n = _steps(rec, cost, rule, k)
        tokens += min(rec.kept, n) + 1
        time += calls * cost.c + cost.verify(n + 1)
        verified += n
    return tokens, time, verified


def _score(records: list[StepRecord], cost: TreeCost, rule: tuple | None = None, k: int = 0) -> float:
    """Tokens per AR-token time of the records under fixed k (rule None) or the cost rule (a, abar, r)."""
    tokens, time, _ = _tally(records, cost, rule, k)
    return tokens / time


def _fit(records: list[StepRecord], cost: TreeCost) -> tuple:
    """The cost rule fitted to the records: a and abar from their acceptance table, the r that gives the best rate."""
    a, abar = _rates(acceptance_table(records))
    return max(((a, abar, r) for r in RATES), key=lambda rule: _score(records, cost, rule))


def _cross_fit(records: list[StepRecord], cost: TreeCost) -> dict:
    """The cost rule fitted on one half of the prompts (even, odd) and scored on the other, both ways round."""
    halves = [[rec for rec in records if rec.prompt % 2 == h] for h in (0, 1)]
    if not all(halves):
        raise ValueError("cross-fitting needs steps from at least two prompts (one even, one odd); give more prompts")
    tokens = time = verified = 0.0
    prices = []
    for fit_on, score_on in (halves, halves[::-1]):
        rule = _fit(fit_on, cost)
        prices.append(rule[2])
        tally = _tally(score_on, cost, rule)
        tokens, time, verified = tokens + tally[0], time + tally[1], verified + tally[2]
    return {"r": prices, "rate": tokens / time, "mean_drafts": verified / len(records)}


def stopping_bound(records: list[StepRecord], cost: TreeCost) -> dict:
    """Rates (tokens per AR-token time) of fixed k = 1..K and of the cost rule, in-sample and cross-fitted
    over two halves of the prompts (even, odd), and each rule's gain over the best fixed k. With the records' accept
    chances, also the ORACLE: the same rule given each draft's true chance to pass (1 - TV(p_j, q_j)) in place of the
    drafter's confidence, what a perfect predictor of acceptance (a head trained for it) could reach at most."""
    if not records:
        raise ValueError("no steps to score: record_chain found no step that drafted all k tokens; generate more "
                         "tokens per prompt (new_tokens) or lower k")
    K = len(records[0].conf)
    fixed = {k: _score(records, cost, k=k) for k in range(1, K + 1)}
    best_k = max(fixed, key=fixed.get)
    rule = _fit(records, cost)
    in_sample = _score(records, cost, rule)
    cross = _cross_fit(records, cost)
    result = {"K": K, "steps": len(records), "prompts": len({rec.prompt for rec in records}), "c": cost.c,
              "v": list(cost.v[:K + 2]), "fixed": fixed, "best_fixed_k": best_k,
              "in_sample": {"r": rule[2], "rate": in_sample, "gain": in_sample / fixed[best_k]},
              "cross_fit": {**cross, "gain": cross["rate"] / fixed[best_k]},
              "acceptance": acceptance_table(records), "bins": list(Q_BINS)}
    if all(len(rec.accept) == K for rec in records):
        oracle = [replace(rec, conf=rec.accept) for rec in records]
        ins = _score(oracle, cost, _fit(oracle, cost))
        cross = _cross_fit(oracle, cost)
        result["oracle"] = {"in_sample_gain": ins / fixed[best_k], **cross, "gain": cross["rate"] / fixed[best_k]}
    return result


def format_stopping(result: dict) -> str:
    """The acceptance by confidence bin and position, the fixed-k rates and the rule's gains, as text."""
    edges = ["0"] + [f"{b:g}" for b in result["bins"]]
    lines = ["acceptance once reached, by the drafter's confidence (max q) [passed/reached]:",
             "pos  " + " ".join(f"{'>=' + e:>9}" for e in edges)]
    for j, row in enumerate(result["acceptance"], start=1):
        lines.append(f"{j:>3}  " + " ".join(f"{c[0] / c[1]:>4.2f}/{c[1]:<4d}" if c[1] else f"{'-':>9}" for c in row))
    lines.append("modelled rate (tokens per AR-token time), fixed k: "
                 + ", ".join(f"k={k} {r:.3f}" for k, r in result["fixed"].items())
                 + f"  (best k = {result['best_fixed_k']})")
    ins, cf = result["in_sample"], result["cross_fit"]
    lines.append(f"cost rule: in-sample {ins['rate']:.3f} (r {ins['r']:.2f}, gain {ins['gain']:.3f}x); "
                 f"cross-fitted {cf['rate']:.3f} (r {', '.join(f'{t:.2f}' for t in cf['r'])}, "
                 f"{cf['mean_drafts']:.2f} drafts verified per step, gain {cf['gain']:.3f}x)")
    if "oracle" in result:
        orc = result["oracle"]
        lines.append(f"oracle (the rule told each draft's true chance to pass, 1 - TV(p, q), in place of max q): "
                     f"cross-fitted {orc['rate']:.3f} (gain {orc['gain']:.3f}x; in-sample {orc['in_sample_gain']:.3f}x)"
                     ": the most any predictor of acceptance could add")
    return "\n".join(lines)
