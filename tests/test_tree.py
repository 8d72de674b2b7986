"""Tree drafts: the tree mask and position ids give each node the logits of its own path, the walk rule is exact,
greedy trees reproduce AR, and every cache after a tree step equals a fresh forward over the committed tokens."""

import math
import random

import pytest
import torch
from test_decoding import drafts_beyond_depth_reference, fresh_caches, prompts, trained  # noqa: F401  (fixture)
from test_speculative_sampling import chi2, chi2_quantile

from mtp_lab import DRAFTERS, MTPModel, SamplingParams, TreeDrafter, generate, get_preset, speculative_generate
from mtp_lab.decoding import make_drafter, speculative_steps
from mtp_lab.drafters import NGramDrafter
from mtp_lab.tree import TreeCost, _Kids, ancestor_mask, keep_path, measure_costs, tree_accept

pytestmark = pytest.mark.usefixtures("one_thread")

TREES = ("suffix", "mtp-tree", "hybrid", "adaptive")
COST = TreeCost(c=0.1, v=tuple(1.0 + 0.02 * n for n in range(64)))    # a fixed cost model: deterministic tests


def test_ancestor_mask_by_hand():
    # entries: 0 root; 1, 2 children of 0; 3 child of 1; 4 child of 3
    mask, depth = ancestor_mask([-1, 0, 0, 1, 3], prefix=2)
    want = torch.tensor([[1, 1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 0, 1, 0, 0],
                         [1, 1, 1, 1, 0, 1, 0],
                         [1, 1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, want)
    assert depth.tolist() == [0, 1, 1, 2, 3]
    last, d = ancestor_mask([-1, 0, 0, 1, 3], prefix=2, new=2)
    assert torch.equal(last, want[3:]) and d.tolist() == [2, 3]
    with pytest.raises(ValueError, match="parents must come before"):
        ancestor_mask([-1, 2, 0], prefix=0)


def test_tree_forward_equals_each_path_run_alone(trained):  # noqa: F811
    """One cached forward over a tree with its mask and position ids gives, at every node, the logits (and states)
    of a cache-free forward over the prefix and that node's path: the independent reference."""
    prefix = [3, 6, 9, 12, 15]
    tokens = [18, 21, 7, 24, 2, 27, 11]                 # entry 0 is the root t_n
    parents = [-1, 0, 0, 1, 1, 3, 2]
    cache = trained.new_cache()
    trained.forward_main(torch.tensor([prefix]), cache)
    mask, depth = ancestor_mask(parents, len(prefix))
    logits, hidden = trained.forward_main(torch.tensor([tokens]), cache, mask, len(prefix) + depth)
    for e in range(len(tokens)):
        path, x = [], e
        while x >= 0:
            path.insert(0, tokens[x])
            x = parents[x]
        ref_logits, ref_hidden = trained.forward_main(torch.tensor([prefix + path]))
        torch.testing.assert_close(logits[0, e], ref_logits[0, -1])
        torch.testing.assert_close(hidden[0, e], ref_hidden[0, -1])
    # keep one path: the cache then equals the cache of prefix + that path
    keep_path(cache.main[0], len(prefix), [0, 1, 3, 5])
    ref = trained.new_cache()
    trained.forward_main(torch.tensor([prefix + [18, 21, 24, 27]]), ref)
    torch.testing.assert_close(cache.main[0].k[:, :, :9], ref.main[0].k[:, :, :9])
    torch.testing.assert_close(cache.main[0].v[:, :, :9], ref.main[0].v[:, :, :9])


def test_walk_rule_alone_is_exact():
    """One tree, fixed target rows: the first emitted token follows p at the root, the second (after a child was
    followed) follows p at that child, and the step goes on with probability sum of p over the root's children."""
    V = 5
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, V, generator=g, dtype=torch.float64), -1)   # root, nodes 0..2
    tokens, parents = [1, 3, 0], [-1, -1, 0]            # root -> {1, 3}; node 0 (token 1) -> {0}
    q = torch.nn.functional.one_hot(torch.tensor(tokens), V).double()   # deterministic candidates
    params = SamplingParams(temperature=1.0)
    n = 20_000
    first = torch.zeros(V, dtype=torch.float64)
    second = torch.zeros(2, V, dtype=torch.float64)     # after following token 1 (node 0) / token 3 (node 1)
    went_on = 0
    for _ in range(n):
        path, nxt = tree_accept(tokens, parents, p, q, params, g)
        out = [tokens[i] for i in path] + [nxt]
        first[out[0]] += 1
        if path:
            went_on += 1
            row = 0 if tokens[path[0]] == 1 else 1
            second[row, out[1]] += 1
    stat, df = chi2(first[None], p[:1])
    assert stat < chi2_quantile(df)
    stat2, df2 = chi2(second, p[[1, 2]])                # node 0's row is p[1], node 1's p[2]
    assert stat2 < chi2_quantile(df2)
    acc = float(p[0, 1] + p[0, 3])
    assert abs(went_on / n - acc) < 5 * math.sqrt(acc * (1 - acc) / n)
    greedy = tree_accept(tokens, parents, p, q, SamplingParams(), g)
    assert greedy[1] == int(p[0].argmax()) or greedy[0]   # greedy: the argmax is followed or emitted


def test_walk_over_sampled_siblings_is_exact():
    """Recursive rejection sampling at one node with what a sampled tree puts there: a lookup candidate (one-hot)
    and two MTP candidates drawn from q without replacement and without the lookup's token. The emitted token
    follows p (chi-square), the walk goes on as often as the rule's exact probability, enumerated over the draws
    here, and that enumeration gives exactly p back (the rule itself, derived by hand)."""
    V, lookup = 5, 2
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(1.5 * torch.randn(V, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(1.5 * torch.randn(V, generator=g, dtype=torch.float64), -1)     # far from p
    eye = torch.eye(V, dtype=torch.float64)

    def without(r, t):
        r = r.clone()
        r[t] = 0.0
        return r / r.sum()

    def residual(a, b):
        r = (a - b).clamp_min(0)
        return r / r.sum()

    r1 = without(q, lookup)
    # exact: out(y) summed over the draws x1 ~ r1, x2 ~ r2 = r1 less x1, and the accept/reject branches
    out, went_on = torch.zeros(V, dtype=torch.float64), 0.0
    a0 = float(p[lookup])                                          # a one-hot candidate passes with p(x)
    out[lookup] += a0
    went_on += a0
    p1 = residual(p, eye[lookup])
    for x1 in range(V):
        if r1[x1] == 0:
            continue
        a1 = min(1.0, float(p1[x1] / r1[x1]))
        w1 = (1 - a0) * float(r1[x1])
        out[x1] += w1 * a1
        went_on += w1 * a1
        r2, p2 = without(r1, x1), residual(p1, r1) if a1 < 1 else p1
        for x2 in range(V):
            if r2[x2] == 0:
                continue
            a2 = min(1.0, float(p2[x2] / r2[x2]))
            w2 = w1 * (1 - a1) * float(r2[x2])
            out[x2] += w2 * a2
            went_on += w2 * a2
            out += w2 * (1 - a2) * (residual(p2, r2) if a2 < 1 else p2)
    torch.testing.assert_close(out, p, rtol=0, atol=1e-12)

    params = SamplingParams(temperature=1.0)
    rows = p[None].expand(4, V)                                   # the root's row, then each (leaf) node's
    n, first, moved = 20_000, torch.zeros(V, dtype=torch.float64), 0
    for _ in range(n):
        x1 = int(torch.multinomial(r1, 1, generator=g))
        r2 = without(r1, x1)
        x2 = int(torch.multinomial(r2, 1, generator=g))
        path, nxt = tree_accept([lookup, x1, x2], [-1, -1, -1], rows, torch.stack([eye[lookup], r1, r2]), params, g)
        first[[lookup, x1, x2][path[0]] if path else nxt] += 1
        moved += bool(path)
    stat, df = chi2(first[None], p[None])
    assert stat < chi2_quantile(df)
    assert abs(moved / n - went_on) < 5 * math.sqrt(went_on * (1 - went_on) / n)
    assert chi2(first[None], q[None])[0] > 10 * chi2_quantile(df)      # the drafter's q alone would fail


def test_sampled_children_are_draws_without_replacement(trained):  # noqa: F811
    """TreeDrafter._sample (the Gumbel top-k trick): the first child follows q less the tokens the node already has,
    the second that less the first; each child's recorded proposal is exactly that distribution."""
    V = trained.config.vocab_size
    q = torch.zeros(V)
    q[[1, 4, 7, 9]] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    drafter = TreeDrafter(trained, top_b=2)
    g = torch.Generator().manual_seed(0)
    pairs, n = torch.zeros(V, V, dtype=torch.float64), 8_000
    for _ in range(n):
        for name in ("tok", "par", "dep", "score", "src", "q", "cond"):
            setattr(drafter, name, [])
        drafter.key, drafter.kids, drafter.room = {}, _Kids(), 10
        drafter.kids[-1][9] = 99                        # the root already holds token 9 (as a lookup child would)
        probs = {}
        a, b = drafter._sample(-1, q, 1, [0.0, 0.0], probs, g)
        x1, x2 = drafter.tok[a], drafter.tok[b]
        pairs[x1, x2] += 1
    r1 = q.double().clone()
    r1[9] = 0
    r1 /= r1.sum()
    r2 = r1.clone()
    r2[x1] = 0
    torch.testing.assert_close(probs[a].double(), r1)
    torch.testing.assert_close(probs[b].double(), r2 / r2.sum())
    exact = r1[:, None] * r1[None, :] / (1 - r1[:, None])        # P(x1 = i, x2 = j), j != i
    exact.fill_diagonal_(0)
    stat, df = chi2(pairs[[1, 4, 7]][:, [1, 4, 7]][None].flatten(1), exact[[1, 4, 7]][:, [1, 4, 7]][None].flatten(1))
    assert pairs[9].sum() == pairs[:, 9].sum() == pairs.diagonal().sum() == 0
    assert stat < chi2_quantile(df)


@pytest.mark.parametrize("name", TREES)
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_trees_equal_greedy_ar(trained, name, k):  # noqa: F811
    drafter = make_drafter(trained, name, cost=COST)
    accepted = 0
    for prompt in prompts(8):
        ref = generate(trained, prompt, 30)
        out = speculative_generate(trained, prompt, 30, num_draft=k, drafter=drafter)
        assert out.tokens == ref.tokens
        accepted += out.stats.accepted
        assert sum(out.stats.accepted_by_source.values()) == out.stats.accepted
    assert accepted > 0


def test_registry_builds_every_name(trained):  # noqa: F811
    assert set(DRAFTERS) >= {"mtp", "mtp-pre", "mtp-fp8", "ngram", "suffix", "mtp-tree", "hybrid", "adaptive"}
    for name in DRAFTERS:
        drafter = make_drafter(trained, name, cost=COST)
        out = speculative_generate(trained, [1, 4, 7], 12, num_draft=3, drafter=name if name != "adaptive"
                                   else drafter)
        assert out.tokens == generate(trained, [1, 4, 7], 12).tokens
    with pytest.raises(ValueError, match="drafter must be one of"):
        speculative_generate(trained, [1, 2], 5, drafter="beam")


@pytest.mark.parametrize("name,temperature", [("mtp-tree", 0.0), ("hybrid", 0.0), ("mtp-tree", 1.0),
                                              ("adaptive", 1.0)])
def test_caches_after_tree_steps_equal_fresh_forward(trained, name, temperature):  # noqa: F811
    """After every step the main cache and each module's cache hold exactly what a fresh forward over the
    committed tokens gives: the accepted path was kept, not a prefix of the flattened tree."""
    drafter = make_drafter(trained, name, cost=COST)
    prompt = [4, 7, 10, 21, 3, 9, 30]
    tokens = list(prompt)
    off_prefix = 0
    for ev in speculative_steps(trained, prompt, 40, num_draft=4, temperature=temperature, seed=3,
                                drafter=drafter):
        tokens += ev.emitted
        off_prefix += ev.path != list(range(len(ev.path)))
        cache = drafter.cache
        assert cache.length == len(tokens) - 1
        lengths = [c.length for c in cache.mtp]
        for j, m in enumerate(lengths, start=1):
            assert m <= len(tokens) - 1 - j
        ref = fresh_caches(trained, tokens, lengths)
        for got, want in zip(cache.main + cache.mtp, ref.main + ref.mtp, strict=True):
            assert got.length == want.length
            torch.testing.assert_close(got.k[:, :, :got.length], want.k[:, :, :want.length])
            torch.testing.assert_close(got.v[:, :, :got.length], want.v[:, :, :want.length])
    assert off_prefix > 0            # some accepted paths were not a prefix of the node order


def test_tree_drafts_equal_a_full_forward(trained):  # noqa: F811
    """Every MTP node was ranked by the distribution the chain would draft it from after its ancestors: module e at
    position n-1 for depth e <= D (the training computation), module D run again past D; by a cache-free reference."""
    drafter = TreeDrafter(trained, top_b=3, budget=30)
    D = trained.config.mtp_depth
    tokens = [6, 9, 12, 2, 5, 8]
    checked = [0] * 5
    for ev in speculative_steps(trained, tokens, 30, num_draft=4, drafter=drafter):
        for i, par in enumerate(ev.parents or []):
            path, x = [], par
            while x >= 0:
                path.insert(0, ev.draft_tokens[x])
                x = ev.parents[x]
            ref = drafts_beyond_depth_reference(trained, tokens, path + [ev.draft_tokens[i]])   # (e, V)
            q = torch.softmax(ref[len(path)], -1)                             # row e-1 predicts depth e
            torch.testing.assert_close(ev.draft_probs[i], q.to(ev.draft_probs.dtype))
            checked[len(path)] += 1
        tokens += ev.emitted
    assert min(checked[:4]) > 5 and D < 4          # depths 1..4: modules 1, 2 and module 2 reused twice


def test_hybrid_records_sources_and_adaptive_sizes_the_tree(trained):  # noqa: F811
    prompt = [5, 8, 11, 14, 17, 20, 5, 8, 11]
    hybrid = make_drafter(trained, "hybrid")
    out = speculative_generate(trained, prompt, 30, num_draft=6, drafter=hybrid)
    assert "ngram" in "".join(out.stats.accepted_by_source)
    # with verification that costs a lot per token the cost model verifies fewer nodes
    cheap = TreeDrafter(trained, ngram=NGramDrafter(32), cost=COST, budget=32)
    dear = TreeDrafter(trained, ngram=NGramDrafter(32), budget=32,
                       cost=TreeCost(c=0.1, v=tuple(1.0 + 0.5 * n for n in range(64))))
    sizes = {}
    for label, d in (("cheap", cheap), ("dear", dear)):
        steps = list(speculative_steps(trained, prompt, 30, num_draft=6, drafter=d))
        sizes[label] = sum(len(ev.draft_tokens) for ev in steps) / len(steps)
    assert sizes["dear"] < sizes["cheap"]


def test_draft_forwards_count_the_calls_of_steps_that_verify_nothing(trained):  # noqa: F811
    """A tree whose nodes are all judged not worth verifying still cost its module calls: the stats count them (the
    bench's c and calls per forward come from them)."""
    dear = TreeDrafter(trained, ngram=NGramDrafter(32), budget=32,
                       cost=TreeCost(c=0.1, v=tuple(1.0 + 0.5 * n for n in range(64))))
    made, propose = [], dear.propose

    def counting(*args, **kwargs):
        draft = propose(*args, **kwargs)
        made.append((draft.forwards, len(draft.tokens)))
        return draft

    dear.propose = counting
    out = speculative_generate(trained, [5, 8, 11, 14, 17, 20, 5, 8, 11], 30, num_draft=6, drafter=dear)
    assert out.stats.draft_forwards == sum(f for f, _ in made)
    assert any(f > 0 and n == 0 for f, n in made)          # such steps happened


def test_suffix_tree_counts_every_earlier_match(trained):  # noqa: F811
    """The lookup tree by hand: the suffix (1, 2) occurred three times, followed by (5, 6), (5, 7) and (8, 0).
    Every match is a branch; a node's share of the matches through its parent is its prior (0.5 x share), so 5
    (2 of 3 matches) leads, and a budget keeps the nodes most matches share, shallowest first on ties."""
    tokens = [1, 2, 5, 6, 3, 1, 2, 5, 7, 4, 1, 2, 8, 0, 1, 2]
    assert NGramDrafter(32).continuations(tokens, 2) == (2, [[8, 0], [5, 7], [5, 6]])

    def paths(budget, tokens=tokens):
        drafter = TreeDrafter(trained, ngram=NGramDrafter(32), mtp_steps=0, budget=budget, name="suffix")
        drafter.start(trained.new_cache())
        draft = drafter.propose(tokens, 2, SamplingParams(temperature=0.0))
        assert draft.forwards == 0 and set(draft.sources) == {"ngram"}
        out = []
        for i, t in enumerate(draft.tokens):
            out.append((*out[draft.parents[i]], t) if draft.parents[i] >= 0 else (t,))
        return out

    assert paths(16) == [(5,), (5, 7), (5, 6), (8,), (8, 0)]     # depth-first, the likeliest branch first
    assert sorted(paths(3)) == [(5,), (5, 7), (8,)]
    # followed by (5, 6) twice and (8, 0) once: with room for two nodes, the deeper 6 (2 matches) beats 8 (1)
    assert paths(2, [1, 2, 5, 6, 3, 1, 2, 5, 6, 4, 1, 2, 8, 0, 9, 1, 2]) == [(5,), (5, 6)]
    with pytest.raises(ValueError, match="lookup only"):
        TreeDrafter(trained, mtp_steps=0)


def test_cost_model_picks_the_best_size():
    cost = TreeCost(c=0.1, v=(1.0, 1.0, 1.0, 2.0, 3.0))
    assert cost.best_size([0.9, 0.8, 0.1, 0.1], rate=2.0) == 2     # v jumps at 4 tokens: two nodes
    assert cost.verify(7) == 5.0                                  # linear beyond the measured range
    assert TreeCost(c=0.1, v=(1.0, 1.01)).best_size([0.001], rate=2.0) == 0


def test_rate_rule_grows_confident_trees_and_shrinks_doubtful_ones():
    """Hand-derived, v(n) = 1 + 0.1 (n - 1), c = 0.1, one call. The rule with the generation's rate r = 2 verifies
    exactly the nodes scoring above r dv = 0.2; the per-step ratio (1 + sum s) / (c + v(N + 1)) stops a confident
    tree at 6 nodes (6.4 / 1.7 = 3.76 > 6.65 / 1.8) and takes every node of a doubtful one (it keeps rising)."""
    cost = TreeCost(c=0.1, v=tuple(1.0 + 0.1 * n for n in range(40)))
    confident, doubtful = [0.9] * 6 + [0.25] * 6, [0.3] + [0.15] * 7
    assert cost.best_size(confident, rate=2.0) == 12
    assert cost.best_size(doubtful, rate=2.0) == 1

    def step_ratio(scores):                               # the rule it replaces, written out here
        rates = [(1 + sum(scores[:n])) / (0.1 + cost.verify(n + 1)) for n in range(len(scores) + 1)]
        return max(range(len(rates)), key=rates.__getitem__)

    assert step_ratio(confident) == 6
    assert step_ratio(doubtful) == 8
    # the root rides in every verify forward: N nodes cost v(N + 1) (0.9 - 2 * 1.05 > 1.2 - 2 * 1.3)
    assert TreeCost(c=0.1, v=(1.0, 1.05, 1.3, 1.4)).best_size([0.9, 0.3], rate=2.0) == 1


def test_tree_size_rule_is_causal():
    """Sampling: whether the n-th best node is verified must not hang on the nodes ranked after it (its own children
    are among them, and their scores depend on the token it drew). The rule decides each node from the ones before it,
    so its answer on any prefix of the scores is its answer on the whole list. The argmax over N of
    sum s - r v(N + 1) is not causal: with v = (1, 1.5, 1.5, 1.5) and r = 1, one node of 0.3 does not pay for the
    jump at two tokens (0.3 - 1.5 < -1), three of them do (0.9 - 1.5 > -1)."""
    v = (1.0, 1.5, 1.5, 1.5)

    def argmax(scores, r):
        value = [sum(scores[:n]) - r * v[n] for n in range(len(scores) + 1)]
        return max(range(len(value)), key=value.__getitem__)

    assert (argmax([0.3], 1.0), argmax([0.3] * 3, 1.0)) == (0, 3)
    cost = TreeCost(c=0.1, v=v)
    # hand-derived: the first node must bring more than r (1.5 - 1) = 0.5, later ones more than 0
    assert [cost.best_size(s, rate=1.0) for s in ([0.3], [0.3] * 3, [0.6, 0.3, 0.0], [0.6, 0.3, 0.3])] == [0, 0, 2, 3]
    g = random.Random(0)
    for _ in range(300):
        cost = TreeCost(c=0.1, v=tuple([1.0] + sorted(1.0 + 2 * g.random() for _ in range(g.randint(1, 12)))))
        scores, rate = sorted((g.random() for _ in range(g.randint(1, 24))), reverse=True), g.uniform(0.5, 4.0)
        n = cost.best_size(scores, rate)
        assert all(cost.best_size(scores[:m], rate) == min(n, m) for m in range(len(scores) + 1))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_calibration_labels_every_drafted_child_of_a_reached_node(trained, temperature):  # noqa: F811
    """The scores learn from every drafted node whose parent the walk reached, verified or not: at each reached node
    (root, then the accepted path) a child counts as accepted iff it holds the token the walk emitted there. With a
    budget of 2 most drafted nodes go unverified and must still be counted. Sampling: a node drawn from q passes by a
    coin of its own, so it counts only if it was verified (the lookup's deterministic nodes still count always)."""
    drafter = TreeDrafter(trained, top_b=3, ngram=NGramDrafter(32), cost=COST, budget=2)
    last, checked, unverified, drawn_skipped = None, 0, 0, 0
    for ev in speculative_steps(trained, [3, 6, 9, 12, 15, 18, 3, 6, 9], 40, num_draft=4, drafter=drafter,
                                temperature=temperature, seed=5):
        kinds = {k: c for k, c in drafter.hits.counts.items() if k[0] != "draw"}   # not the pooled ("draw", rank)
        counts = [sum(c[i] for c in kinds.values()) for i in (0, 1)]                # accepted, reached
        if last is not None and ev.draft_tokens:   # this event's proposal labelled the tree of the last event
            tok, par, prev, before, verified, keys = last
            reached = [-1] + _path_nodes(tok, par, prev)
            counted = [x in verified or keys[x][-2:-1] != ("draw",) for x in range(len(tok))]
            want = [sum(p in reached and counted[x] and tok[x] == prev.emitted[reached.index(p)]
                        for x, p in enumerate(par)),
                    sum(p in reached and counted[x] for x, p in enumerate(par))]
            assert [counts[0] - before[0], counts[1] - before[1]] == want
            checked += 1
            unverified += sum(p in reached and counted[x] and x not in verified for x, p in enumerate(par)) > 0
            drawn_skipped += sum(p in reached and not counted[x] for x, p in enumerate(par))
        last = ((list(drafter.tok), list(drafter.par), ev, counts, set(drafter.kept_order), dict(drafter.key))
                if ev.draft_tokens else None)
    assert checked >= 3 and unverified >= 1
    assert (drawn_skipped > 0) == (temperature > 0)
    for rank in range(3):      # every labelled draw also counts for its rank, all modules and bins pooled
        pooled = [sum(c[i] for k, c in kinds.items() if k[-2:] == ("draw", rank)) for i in (0, 1)]
        assert drafter.hits.counts.get(("draw", rank), [0.0, 0.0]) == pooled


def test_a_kind_of_draw_not_seen_yet_starts_from_the_draws_of_its_rank(trained):  # noqa: F811
    """Sampling: a drawn node is labelled only where it was verified, so a kind (module, bin of max q, rank) scored
    low from the start would never be verified, never labelled, and stay low: the recycled module's draws did, with
    max q about 0.2 as their prior against an acceptance near 0.67. A kind not seen yet starts from the rate of every
    draw of its rank so far; here rank 0 passed 30 times of 30, so its unseen kinds score about 0.98, not max q."""
    drafter = TreeDrafter(trained, top_b=2, budget=8, cost=COST)
    for _ in range(30):
        drafter.hits.add(("draw", 0), True)
    steps = speculative_steps(trained, [3, 6, 9, 12, 15, 18, 3, 6, 9], 8, num_draft=1, drafter=drafter,
                              temperature=1.0, seed=0)
    next(steps), next(steps)                 # the prefill, then the first tree (labelled only at the next proposal)
    first = [x for x in range(len(drafter.tok)) if drafter.key[x][-2:] == ("draw", 0)]
    assert first and all(drafter.q[x] < 0.9 for x in first)                       # the drafter is not that sure
    pooled = drafter.hits.rate(("draw", 0), prior=0.0)
    assert pooled == pytest.approx(30 / 31)
    for x in first:
        assert drafter.cond[x] == pytest.approx(drafter.hits.rate(("draw", 0), prior=drafter.q[x]))


def _path_nodes(tok: list[int], par: list[int], ev) -> list[int]:
    """The drafter's node ids of the accepted path of event ev, found by walking the drafted tree by token."""
    nodes, node = [], -1
    for t in ev.emitted[:ev.n_accepted]:
        node = next(x for x, (tt, p) in enumerate(zip(tok, par, strict=True)) if p == node and tt == t)
        nodes.append(node)
    return nodes


@pytest.mark.parametrize("kwargs,match", [
    (dict(c=0.1, v=()), r"TreeCost.v needs v\(1\) and v\(2\)"),
    (dict(c=0.1, v=(1.0,)), r"TreeCost.v needs .* got 1 value"),
    (dict(c=float("nan"), v=(1.0, 1.1)), r"TreeCost.c must be a finite number >= 0 .* got nan"),
    (dict(c=0.1, v=(1.0, -1.1)), r"TreeCost.v\[1\] \(v\(2\)\) must be a finite number > 0"),
    (dict(c=0.1, v=(1.0, 1.1), ar_ms=-3.0), r"TreeCost.ar_ms must be a finite number > 0 \(or NaN: unknown\)"),
])
def test_bad_cost_models_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeCost(**kwargs)


def test_measure_costs_is_sane():
    torch.manual_seed(0)
    model = MTPModel(get_preset("tiny")).eval()
    m = measure_costs(model, max_n=8, repeats=2, prefix=16)
    assert m["n"] == list(range(1, 9)) and m["v"][0] == 1.0
    assert all(v > 0 for v in m["v"]) and m["c"] > 0
    with pytest.raises(ValueError, match="max_seq_len"):
        measure_costs(model, max_n=60, prefix=16)
    with pytest.raises(ValueError, match="2 entries"):      # module D's cache takes the entries twice: 59 + 8 > 64
        measure_costs(model, max_n=5, prefix=59)


@pytest.mark.parametrize("name", TREES)
def test_trees_near_max_seq_len_and_eos(trained, name):  # noqa: F811
    """A tree has more nodes than depth: near max_seq_len every node must still fit in every KV cache; EOS in the
    middle of an accepted path stops there."""
    drafter = make_drafter(trained, name, cost=COST)
    L = trained.config.max_seq_len
    for length in (L - 30, L - 12, L - 5, L - 2):
        prompt = ([3, 6, 9, 12] * L)[:length]
        ref = generate(trained, prompt, 50)
        out = speculative_generate(trained, prompt, 50, num_draft=8, drafter=drafter)
        assert out.tokens == ref.tokens and out.stats.stop_reason == "max_seq_len"
    prompt = [3, 6, 9, 12, 15]
    ref = generate(trained, prompt, 30).tokens
    eos = ref[7]
    out = speculative_generate(trained, prompt, 30, num_draft=6, drafter=drafter, eos_id=eos)
    assert out.tokens == ref[:ref.index(eos) + 1] and out.stats.stop_reason == "eos"
