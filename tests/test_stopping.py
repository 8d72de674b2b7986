"""mtp_lab.stopping: the records of the MTP chain, the acceptance table, fixed-k rates by hand, and the cost rule
against an oracle where confidence tells everything and against the best fixed k where it tells nothing."""

import bisect
import random

import pytest
import torch
from test_decoding import prompts, trained  # noqa: F401  (fixture)

from mtp_lab.decoding import speculative_steps
from mtp_lab.stopping import StepRecord, _steps, acceptance_table, record_chain, stopping_bound
from mtp_lab.tree import Q_BINS, TreeCost

pytestmark = pytest.mark.usefixtures("one_thread")

COST = TreeCost(c=0.1, v=(1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6))


def test_acceptance_table_counts_the_drafts_reached_and_passed():
    records = [StepRecord(0, (0.97, 0.5, 0.01), kept=1),      # draft 1 passed, draft 2 reached and failed
               StepRecord(1, (0.97, 0.5, 0.01), kept=3),      # all passed
               StepRecord(1, (0.3, 0.5, 0.01), kept=0)]       # draft 1 failed: 2 and 3 never reached
    table = acceptance_table(records)
    b = [bisect.bisect(Q_BINS, x) for x in (0.97, 0.5, 0.01, 0.3)]
    assert table[0][b[0]] == [2, 2] and table[0][b[3]] == [0, 1]
    assert table[1][b[1]] == [1, 2]
    assert table[2][b[2]] == [1, 1]
    assert sum(c[1] for row in table for c in row) == 2 + 3 + 1


def test_fixed_k_rates_by_hand():
    records = [StepRecord(0, (0.9, 0.9, 0.9), kept=3), StepRecord(1, (0.9, 0.9, 0.9), kept=0)]
    fixed = stopping_bound(records, COST)["fixed"]
    # k = 1: tokens (1 + 1) + (0 + 1) = 3, time 2 (c + v(2)) = 2 (0.1 + 1.0)
    assert fixed[1] == pytest.approx(3 / 2.2)
    # k = 3: tokens (3 + 1) + 1 = 5, time 2 (3 c + v(4)) = 2 (0.3 + 1.2)
    assert fixed[3] == pytest.approx(5 / 3.0)


def _world(informative: bool, n: int = 3000, K: int = 6, seed: int = 0) -> list[StepRecord]:
    """Steps whose drafts pass with chance 0.97 where the drafter is sure (conf 0.97) and 0.03 where it is not
    (conf 0.3), sure with chance 0.7; `informative` False: the same chances of passing, whatever the confidence."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        conf = tuple(0.97 if rng.random() < 0.7 else 0.3 for _ in range(K))
        kept = 0
        while kept < K:
            p = (0.97 if conf[kept] > 0.5 else 0.03) if informative else 0.97 * 0.7 + 0.03 * 0.3
            if rng.random() >= p:
                break
            kept += 1
        records.append(StepRecord(i % 16, conf, kept))
    return records


def test_the_cost_rule_finds_the_oracle_where_confidence_tells_everything():
    """The oracle: verify the drafts before the first unsure one (its call is paid), all K if none. Hand-derived,
    not fitted: the rule must reach its rate, above every fixed k."""
    records = _world(informative=True)
    tokens = time = 0.0
    for rec in records:
        first_unsure = next((j for j, c in enumerate(rec.conf) if c < 0.5), None)
        calls, verified = (len(rec.conf), len(rec.conf)) if first_unsure is None else (first_unsure + 1, first_unsure)
        tokens += min(rec.kept, verified) + 1
        time += calls * COST.c + COST.verify(verified + 1)
    res = stopping_bound(records, COST)
    assert res["in_sample"]["rate"] >= tokens / time - 1e-9
    assert res["cross_fit"]["rate"] >= 0.99 * tokens / time
    assert res["cross_fit"]["gain"] > 1.2


def test_the_cost_rule_gains_nothing_where_confidence_tells_nothing():
    res = stopping_bound(_world(informative=False), COST)
    assert 0.97 < res["cross_fit"]["gain"] < 1.02
    assert res["in_sample"]["gain"] < 1.03


def test_the_cost_rule_is_causal():
    """Whether draft j is verified or module j + 1 called depends on the confidences up to j only: changing what
    comes after the stop never changes the step."""
    records = _world(informative=True, n=400)
    res = stopping_bound(records, COST)
    from mtp_lab.stopping import _fit
    rule = _fit(records, COST)
    assert res["in_sample"]["r"] == rule[2]
    rng = random.Random(1)
    for rec in records:
        calls, verified = _steps(rec, COST, rule)
        tail = tuple(rng.choice((0.01, 0.5, 0.99)) for _ in rec.conf[calls:])
        assert _steps(StepRecord(rec.prompt, rec.conf[:calls] + tail, rec.kept), COST, rule) == (calls, verified)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_record_chain_is_the_engine_s_steps(trained, temperature):  # noqa: F811
    k, ps = 3, prompts(4)
    with torch.inference_mode():
        records = record_chain(trained, ps, k, 20, temperature=temperature, seeds=2)
    expected = []
    for seed in range(2):
        for i, p in enumerate(ps):
            for step in speculative_steps(trained, p, 20, num_draft=k, temperature=temperature, seed=seed):
                if len(step.draft_tokens) == k:
                    q = torch.softmax(step.draft_logits.float(), -1) if temperature == 0 else step.draft_probs
                    # the chance to pass, as 1 - TV(p, q) = 1 - |p - q|_1 / 2; greedy: the target's argmax or not
                    tv = 0.5 * (step.target_probs[:k] - step.draft_probs).abs().sum(-1)
                    argmax = step.target_logits[:k].argmax(-1).tolist()
                    expected.append((i, step.n_accepted, q.max(-1).values.tolist(), (1 - tv).tolist(),
                                     [float(d == t) for d, t in zip(step.draft_tokens, argmax, strict=True)]))
    assert [(r.prompt, r.kept) for r in records] == [(i, kept) for i, kept, *_ in expected]
    for rec, (_, kept, conf, accept, argmax) in zip(records, expected, strict=True):
        assert rec.conf == pytest.approx(conf)
        assert all(0 < c <= 1 for c in rec.conf)
        assert rec.accept == pytest.approx(accept, abs=1e-5)
        if temperature == 0:
            assert list(rec.accept) == argmax and rec.accept[:kept] == (1.0,) * kept
    if temperature > 0:         # sampled, a draft passes with its chance: the mean of accept predicts the passes
        reached = [(rec.accept[j], j < rec.kept) for rec in records for j in range(min(rec.kept + 1, k))]
        assert abs(sum(a for a, _ in reached) - sum(ok for _, ok in reached)) < 3 * len(reached) ** 0.5 * 0.5


def test_the_oracle_knows_what_confidence_does_not():
    """Confidence tells nothing, each draft's true chance to pass tells everything: the rule gains nothing, the
    oracle reaches the hand-derived rate of verifying the drafts before the first doubtful one."""
    rng = random.Random(3)
    records = []
    for i in range(3000):
        accept = tuple(0.97 if rng.random() < 0.7 else 0.03 for _ in range(6))
        kept = 0
        while kept < 6 and rng.random() < accept[kept]:
            kept += 1
        records.append(StepRecord(i % 16, tuple(rng.choice((0.3, 0.97)) for _ in range(6)), kept, accept))
    tokens = time = 0.0
    for rec in records:
        first = next((j for j, a in enumerate(rec.accept) if a < 0.5), None)
        calls, verified = (6, 6) if first is None else (first + 1, first)
        tokens += min(rec.kept, verified) + 1
        time += calls * COST.c + COST.verify(verified + 1)
    res = stopping_bound(records, COST)
    assert res["cross_fit"]["gain"] < 1.02
    assert res["oracle"]["rate"] >= 0.99 * tokens / time and res["oracle"]["gain"] > 1.2
    assert "oracle" not in stopping_bound([StepRecord(i % 2, (0.5,), 1) for i in range(4)], COST)


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="new_tokens"):
        stopping_bound([], COST)
    with pytest.raises(ValueError, match="two prompts"):
        stopping_bound([StepRecord(0, (0.5, 0.5), 1), StepRecord(2, (0.5, 0.5), 0)], COST)
