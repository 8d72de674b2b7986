"""Speculative sampling is exact: emitted tokens follow the main model's distribution, whatever the drafter.

The main model here has its attention output projections set to zero, so each position's logits depend on
its own token only: the main model is a Markov chain whose transition matrix P[a, b] = p(b | a) is enumerated
exactly by one forward over the vocabulary. Every token the engine emits (accepted draft, corrected token,
bonus token) is then one draw from P[previous token], and the emitted tokens (>= 20k for the main setting)
are compared with P by chi-square tests. The drafts differ strongly from the target: a random table over the
last two tokens, the MTP modules with random weights (they keep their attention, so drafts depend on the
whole history), or n-gram lookup; and trees of the MTP modules' top-b candidates (with an n-gram branch), where
the second-order counts C[a, b, c] test the joint of consecutive tokens within one tree step.
"""

import math

import pytest
import torch

from mtp_lab import (
    ModelConfig,
    MTPModel,
    SamplingParams,
    generate,
    speculative_accept,
    speculative_generate,
    speculative_steps,
)
from mtp_lab.drafters import Draft, NGramDrafter
from mtp_lab.tree import TreeCost, TreeDrafter

pytestmark = pytest.mark.usefixtures("one_thread")      # tiny models: one thread is fastest

V = 6


def markov_model(depth: int, max_seq_len: int = 1024, seed: int = 0) -> MTPModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=max_seq_len,
                      mtp_depth=depth, init_std=0.5)
    model = MTPModel(cfg).double().eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.wo.weight.zero_()        # no token mixing in the main model: a Markov chain
    return model


@torch.inference_mode()
def transitions(model: MTPModel, params: SamplingParams) -> torch.Tensor:
    """P (V, V): P[a] = the target distribution of the token after a, under the sampling settings."""
    logits, _ = model.forward_main(torch.arange(V)[:, None])                  # (V, 1, V)
    return params.probs(logits[:, 0])


class TableDrafter:
    """A drafter far from the target: q(. | last two tokens) from a fixed random table, chained over its drafts."""

    def __init__(self, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.logits = 2.5 * torch.randn(V, V, V, generator=g, dtype=torch.float64)   # (a, b) -> logits of c

    def start(self, cache):
        pass

    def propose(self, tokens, k, params, generator):
        seq, probs = list(tokens), []
        for _ in range(k):
            q = params.probs(self.logits[seq[-2], seq[-1]])
            seq.append(params.sample(q, generator))
            probs.append(q)
        return Draft(seq[len(tokens):], torch.stack(probs), None, forwards=0)

    def commit(self, hidden, n_kept):
        pass


def chi2_quantile(df: int, z: float = 4.75) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at the standard-normal quantile z (4.75: 1e-6)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: torch.Tensor, P: torch.Tensor) -> tuple[float, int]:
    """Pearson chi-square of transition counts C[a, b] against rows of P, and its degrees of freedom."""
    n = counts.sum(-1, keepdim=True)                                          # (..., 1) visits of each context
    expected = n * P
    keep = expected > 0
    stat = float(((counts - expected) ** 2 / expected.where(keep, 1.0)).where(keep, 0.0).sum())
    df = int(((P > 0).sum(-1) - 1).where(n[..., 0] > 0, 0).sum())
    return stat, df


def run_engine(model, params, num_draft, drafter, runs, tokens_per_run):
    """Emitted tokens of `runs` seeded generations, and every step event."""
    seqs, events = [], []
    for seed in range(runs):
        prompt = [seed % V, (seed // V) % V]
        steps = speculative_steps(model, prompt, tokens_per_run, num_draft=num_draft, seed=seed, drafter=drafter,
                                  temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
        tokens = list(prompt)
        for ev in steps:
            tokens += ev.emitted
            events.append(ev)
        seqs.append(tokens[1:])                   # the prompt's last token is the first context
    return seqs, events


@pytest.mark.slow                                      # 17 s on 2 cores: >= 20k samples per case
@pytest.mark.parametrize("depth,num_draft,drafter,params,runs,min_tv", [
    # >= 20k samples: a chained random-table drafter, with truncated p and q
    (1, 3, "table", SamplingParams(temperature=0.9, top_k=5, top_p=0.95), 21, 0.4),
    # the MTP drafter with random weights: modules 1, 2 chained, then module 2 reused
    (2, 3, "mtp", SamplingParams(temperature=1.0), 4, 0.4),
    # n-gram prompt lookup: one-hot drafts (TV = 1 - p(d); a Markov chain's n-grams are often right)
    (1, 3, "ngram", SamplingParams(temperature=1.0), 4, 0.1),
    # trees of deterministic candidates (the MTP modules' top-2, random weights), walked with y ~ p at each node;
    # with module 2 reused past D and, for the hybrid, an n-gram branch merged in
    (2, 4, "mtp-tree", SamplingParams(temperature=1.0), 8, 0.3),
    (1, 4, "hybrid", SamplingParams(temperature=0.9, top_k=5), 8, 0.2),
    # the lookup tree alone: every earlier match's continuation as a branch (one-hot, deterministic children)
    (1, 4, "suffix", SamplingParams(temperature=1.0), 8, 0.1),
    # the adaptive tree: its size and depth chosen per step from scores learned on past steps (a fixed cost model,
    # so that the run repeats exactly); each step's tree depends on the past only, so the walk stays exact
    (2, 6, "adaptive", SamplingParams(temperature=1.0), 8, 0.2),
])
def test_emitted_tokens_follow_the_target_exactly(depth, num_draft, drafter, params, runs, min_tv):
    tokens_per_run = 960
    model = markov_model(depth)
    P = transitions(model, params)
    if drafter == "table":
        drafter = TableDrafter()
    elif drafter == "adaptive":
        drafter = TreeDrafter(model, ngram=NGramDrafter(V), budget=32,
                              cost=TreeCost(c=0.1, v=tuple(1.0 + 0.05 * n for n in range(64))))
    seqs, events = run_engine(model, params, num_draft, drafter, runs, tokens_per_run)

    first = torch.zeros(V, V, dtype=torch.float64)                            # C[a, b]
    second = torch.zeros(V, V, V, dtype=torch.float64)                        # C[a, b, c]
    for s in seqs:
        t = torch.tensor(s)
        first.index_put_((t[:-1], t[1:]), torch.ones(len(s) - 1, dtype=torch.float64), accumulate=True)
        second.index_put_((t[:-2], t[1:-1], t[2:]), torch.ones(len(s) - 2, dtype=torch.float64), accumulate=True)
    assert first.sum() == runs * tokens_per_run
    assert (first[P == 0] == 0).all()                 # nothing outside top-k / top-p is ever emitted
    stat, df = chi2(first, P)
    assert stat < chi2_quantile(df), (stat, df)
    stat2, df2 = chi2(second, P[None].expand(V, V, V))  # p(c | a, b) = P[b, c]: no hidden dependence on a
    assert stat2 < chi2_quantile(df2), (stat2, df2)

    if first.sum() >= 7_000:                  # the test has power: a mild change of the target fails it
        hotter = SamplingParams(params.temperature * 1.2, params.top_k, params.top_p)
        assert chi2(first, transitions(model, hotter))[0] > chi2_quantile(df)

    # ... and the drafts really differ from the target: many rejections, corrected and bonus tokens
    drafting = [ev for ev in events if ev.draft_tokens]
    tv = torch.stack([0.5 * (ev.draft_probs[0] - ev.target_probs[0]).abs().sum() for ev in drafting])
    assert tv.mean() > min_tv
    drafted = sum(len(ev.draft_tokens) for ev in drafting)
    accepted = sum(ev.n_accepted for ev in drafting)
    if drafting[0].parents is None:
        assert 0.1 < accepted / drafted < 0.9
    else:   # a tree: the share of steps that followed a child of the root (the lookup tree of every earlier match
        # covers most of a 6-token chain's transitions, so trees with it pass the root's test more often)
        assert 0.1 < sum(ev.n_accepted > 0 for ev in drafting) / len(drafting) < 0.95
    assert sum(ev.is_bonus for ev in drafting) > 10 * runs
    assert sum(not ev.is_bonus for ev in drafting) > 60 * runs    # >= 480 corrected tokens: rejections exercised


def test_greedy_on_the_markov_model_matches_ar():
    model = markov_model(2)
    for k in (1, 3):
        for drafter in ("mtp", "ngram"):
            ref = generate(model, [2], 200)
            assert speculative_generate(model, [2], 200, num_draft=k, drafter=drafter).tokens == ref.tokens


def test_accept_rule_alone_is_exact():
    """One draft position, the rule applied to fixed p and q: the emitted token's distribution is p_1."""
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.05, 0.15, 0.3, 0.5]], dtype=torch.float64)              # far from p_1: TV 0.6
    params = SamplingParams(temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    n = 10_000
    drafts = torch.multinomial(q[0], n, replacement=True, generator=gen).tolist()
    first = torch.zeros(4, dtype=torch.float64)
    accepted = 0
    for d in drafts:
        n_acc, nxt, _ = speculative_accept([d], q, p, params, gen)
        first[d if n_acc else nxt] += 1
        accepted += n_acc
    # acceptance probability sum_x min(p(x), q(x)) = 1 - TV = 0.4
    assert abs(accepted / n - 0.4) < 4 * math.sqrt(0.24 / n)
    stat, df = chi2(first[None], p[:1])
    assert stat < chi2_quantile(df)
    assert chi2(first[None], q)[0] > 100 * chi2_quantile(df)       # the drafter alone would fail badly
