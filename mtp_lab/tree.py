"""Tree drafts: several candidates per position, verified in ONE main-model forward (SpecInfer, EAGLE-2, SGLang's
MTP topk tree), grown from the MTP modules, with an optional n-gram branch (hybrid) and a per-step size chosen from
the measured costs (adaptive).

The drafted nodes x_1..x_N hang under the last committed token t_n (the root, entry 0 of the verify forward).
    tree mask:     entry e attends to the cached prefix, its ancestors and itself        (ancestor_mask)
    position ids:  prefix length + depth (the root at the prefix length, its children one further)
so each node sees exactly the sequence it would see on its own path, and the main model scores every node in one
forward. Acceptance (mtp-facts section 8): at the node x the walk stands on (the root first), with p' = p( . | t_0..t_n,
path to x), the children are tried in entry order, each drawn from its proposal r:

    accept child c with probability min(1, p'(c) / r_c(c)) and move to it; else p' <- norm(max(0, p' - r_c))
    if every child is rejected (or x is a leaf: the bonus), emit y ~ p' and stop                      (tree_accept)

recursive rejection sampling (SpecInfer; Jeon et al. 2024 without replacement). Greedy: the children are the
drafter's top-b and the lookup's continuations, and the walk follows the child equal to argmax p. Sampling: the MTP
children are draws from the drafter's q without replacement (TreeDrafter._sample), the lookup's are deterministic
(r one-hot: they pass with p'(c)). Every emitted token is a draw from the target given the tokens before it, so the
output is distributed exactly as the main model's own samples; greedy gives the greedy output token for token.
Afterwards every KV cache keeps the root and the accepted path only, moved to consecutive positions (keep_path); the
nodes come depth-first, best child first, so the likeliest path is a prefix of the entries and then costs no copy.

Costs (one thread on a CPU, batch 1): the verify forward of n tokens costs v(n) AR-token times and every module call
of the drafter c; `measure_costs` times both, `TreeDrafter(cost=...)` uses them to size each step's tree.
"""

from __future__ import annotations

import bisect
import heapq
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import check_int, check_number
from .drafters import Draft, NGramDrafter, Recycle
from .layers import KVCache
from .model import ModelCache, MTPModel
from .sampling import SamplingParams, residual


def ancestor_mask(parents: list[int], prefix: int, new: int | None = None, device=None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tree attention mask and depths of the LAST `new` (default: all) of N entries after `prefix` cached ones.

    parents[e]: an earlier entry (< e), or -1 for an entry whose only ancestors are the prefix.
    Returns (mask (new, prefix + N), True = may attend: every prefix position, the entry's ancestors and itself;
             depth (new,): 0 without a parent, else the parent's + 1). Position ids are prefix + depth.
    """
    N = len(parents)
    new = N if new is None else new
    anc = np.zeros((N, N), dtype=bool)
    depth = np.zeros(N, dtype=np.int64)
    for e, p in enumerate(parents):
        if p >= 0:
            if p >= e:
                raise ValueError(f"tree entry {e} has parent {p}: parents must come before their children")
            anc[e] = anc[p]
            depth[e] = depth[p] + 1
        anc[e, e] = True
    mask = torch.ones(new, prefix + N, dtype=torch.bool, device=device)
    mask[:, prefix:] = torch.from_numpy(anc[N - new:])
    return mask, torch.from_numpy(depth[N - new:]).to(device)


def keep_path(caches: KVCache | list[KVCache], start: int, keep: list[int]) -> None:
    """Roll caches back to one path: entries start + keep[i] (ascending) move to start + i, the rest is dropped.

    One index serves every cache given (the engine passes all main layers); a path that is already a prefix of the
    entries (the tree's best branch comes first in depth-first order) costs no copy."""
    caches = [caches] if isinstance(caches, KVCache) else caches
    if keep != list(range(len(keep))):
        idx = torch.tensor(keep, device=caches[0].k.device) + start
        for cache in caches:
            cache.k[:, :, start:start + len(keep)] = cache.k[:, :, idx]
            cache.v[:, :, start:start + len(keep)] = cache.v[:, :, idx]
    for cache in caches:
        cache.truncate(start + len(keep))


def tree_accept(tokens: list[int], parents: list[int], p: torch.Tensor, q: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None = None) -> tuple[list[int], int]:
    """The walk down a tree. p (N+1, V): p[0] the target at the root, p[i+1] at node i; q (N, V): q[i] the proposal
    node i was drawn from (one-hot: a deterministic candidate, an n-gram continuation or a greedy top-b).

    Greedy: follow the child equal to argmax p, else emit the argmax. Sampling: recursive rejection sampling over the
    children of the current node, in entry order (SpecInfer; Jeon et al. 2024 without replacement):
        accept child x with probability min(1, p'(x) / q_x(x)); on rejection  p' <- norm(max(0, p' - q_x))
    starting from p' = p at the node; if every child is rejected, emit y ~ p'. Each candidate must be a fresh draw
    from its q given the siblings tried before it (a one-hot q: any choice made without the target), so every
    emitted token is a draw from the target. Returns (path: the accepted nodes, root side first; the next token).
    """
    children: list[list[int]] = [[] for _ in range(len(tokens) + 1)]          # entry -> its child nodes, in order
    for i, par in enumerate(parents):
        children[par + 1].append(i)
    path, e = [], 0
    while True:
        target, node = p[e], None
        if params.greedy:
            y = int(target.argmax())
            node = next((c for c in children[e] if tokens[c] == y), None)
        else:
            for c in children[e]:
                x = tokens[c]
                if float(torch.rand((), generator=generator, dtype=torch.float64)) * float(q[c, x]) < float(target[x]):
                    node = c                                                   # u < p'(x) / q(x)
                    break
                target = residual(target, q[c])                                # norm(max(0, p' - q))
            if node is None:
                y = params.sample(target, generator)
        if node is None:
            return path, y
        path.append(node)
        e = node + 1


@dataclass(frozen=True)
class TreeCost:
    """Measured costs in AR-token times (one main-model forward of one token = 1): the cost model of a step."""
    c: float                         # one MTP module call of the drafter (a few entries at once)
    v: tuple[float, ...]             # v[n-1]: one verify forward of n tokens after a cached prefix, n = 1..len(v)
    ar_ms: float = float("nan")      # the AR-token time they were measured against, in process CPU ms (NaN: unknown)

    def __post_init__(self) -> None:
        check_number("TreeCost.c", self.c, note=" (one module call, in AR-token times)")
        if len(self.v) < 2:
            raise ValueError(f"TreeCost.v needs v(1) and v(2) at least (v(n) beyond them is extrapolated), got "
                             f"{len(self.v)} value(s); measure it with tree.measure_costs")
        for n, x in enumerate(self.v, start=1):
            check_number(f"TreeCost.v[{n - 1}] (v({n}))", x, positive=True)
        if not math.isnan(self.ar_ms):
            check_number("TreeCost.ar_ms", self.ar_ms, positive=True, note=" (or NaN: unknown)")

    def verify(self, n: int) -> float:
        """v(n); beyond the measured range, extrapolated linearly from the last two points."""
        if n <= len(self.v):
            return self.v[n - 1]
        return self.v[-1] + (n - len(self.v)) * (self.v[-1] - self.v[-2])

    def best_size(self, scores: list[float], rate: float) -> int:
        """How many of the best nodes (scores: descending acceptance estimates) to verify, with r = `rate` the rate the
        generation reaches (tokens per AR-token time): the n-th node is verified iff the one before it is and
            s_n > r (v(n + 1) - v(n))
        it brings more than r times what it adds to the verify forward (the root rides in every forward: n nodes cost
        v(n + 1)). Weighing each node against r maximises the rate of the whole generation, not of one step
        (renewal-reward): a confident step grows a bigger tree, a doubtful one a smaller tree, where the step's own
        ratio (1 + sum) / (calls c + v(N + 1)) does the opposite. On a convex v this is the argmax over N of
        sum of the N best scores - r v(N + 1).

        The rule is causal: whether a node is verified depends on the nodes ranked before it only, never on its own
        children (they rank after it). Sampling needs that. The argmax over N looks past a jump in v at the nodes
        behind it, and a drawn node whose place hung on the draws below it would be verified more often when it is a
        token whose children the drafter is sure of: the walk over siblings would no longer emit exact samples
        (TreeDrafter._sample)."""
        n = 0
        while n < len(scores) and scores[n] > rate * (self.verify(n + 2) - self.verify(n + 1)):
            n += 1
        return n


Q_BINS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)   # bin edges of the drafter's q
RUN_BINS = (1, 2, 4, 8)             # bin edges of an n-gram node's place in its branch (0: the first)
SHARE_BINS = (0.3, 0.6, 0.99)       # bin edges of an n-gram node's share of the occurrences through its parent
OCCURRENCES = 16                    # earlier occurrences of the matched n-gram whose continuations are drafted


class Acceptance:
    """Running acceptance rates by key (a node's kind: MTP module and q bin, or n-gram match length), each pulled
    toward a prior by one pseudo-observation: how often a node of that kind was accepted once its parent was."""

    def __init__(self):
        self.counts: dict[tuple, list[float]] = {}       # key -> [accepted, reached]

    def rate(self, key: tuple, prior: float) -> float:
        accepted, reached = self.counts.get(key, (0.0, 0.0))
        return (accepted + prior) / (reached + 1.0)

    def add(self, key: tuple, accepted: bool) -> None:
        counts = self.counts.setdefault(key, [0.0, 0.0])
        counts[0] += accepted
        counts[1] += 1


class TreeDrafter:
    """A tree of MTP drafts: at each depth the `width` best nodes (by path score) get their `top_b` most likely
    tokens as children (sampling: `top_b` draws from q without replacement, _sample); the `budget` best nodes are
    verified (EAGLE-2's rerank). Options: `ngram` adds prompt
    lookup's continuations as branches, what followed every earlier match of the context's suffix in one frequency
    tree (merged where it meets an MTP node; hybrid; with `mtp_steps=0` the lookup tree alone: suffix); `cost`
    sizes each step's tree and stops drafting early from the cost model (adaptive): with r the rate the generation
    reaches (tokens per AR-token time, measured), a step verifies its best nodes while each brings more than r times
    what it adds to the verify forward (TreeCost.best_size), and drafts another MTP level only if its expected
    children (the frontier's scores times the running children-to-parent score ratio at that depth) raise the
    tree's value, expected tokens - r (calls c + v(N + 1)), by more than r c.

    Path score of a node = its parent's score times its estimated chance of acceptance once the parent is reached,
    the running acceptance of its kind (Acceptance): for an MTP node, nodes of the same module whose q fell in the
    same bin (q: the drafter's probability, softmax of its logits, the temperature ignored: a ranking, not the q of
    speculative sampling); for an n-gram node, nodes from a match of the same length n at a like place in their
    branch with a like share of the matches through their parent (a long match copies reliably, a 1-gram guesses; a
    copy that has held for 8 tokens tends to go on; what most earlier matches went on with is likelier); a node both
    propose is a kind of its own (module, q bin, n). Every drafted child of a node the walk reached is
    labelled, verified or not (_learn). Scores fall along a path, so the best nodes form a tree. With `ngram`,
    the lookup tree grows from both the root and the best deepest MTP node (staged: the MTP modules draft `mtp_steps`
    levels, the lookup goes on to depth k for free).

    Module j at tree node x (depth e) sits at position n - j + e and reads t_{n+e} = x, with h^{j-1} = module j-1's
    state at x's parent (the training computation, as the chain MTPDrafter); past depth D, module D runs again with
    its own state at the parent (`recycle`). Each module's KV cache holds its committed positions plus this step's
    tree entries, masked with ancestor_mask; after verification the accepted path's entries are kept (keep_path)
    where their inputs are all committed (position <= n - 1), the rest is recomputed next step.
    """

    def __init__(self, model: MTPModel, top_b: int = 2, width: int | None = None, budget: int = 16,
                 ngram: NGramDrafter | None = None, cost: TreeCost | None = None, recycle: Recycle | None = None,
                 draft_model: MTPModel | None = None, mtp_steps: int | None = None, name: str = "mtp-tree"):
        self.mtp_steps = None if mtp_steps is None else check_int("mtp_steps", mtp_steps, minimum=0)
        if mtp_steps == 0 and ngram is None:
            raise ValueError("a tree with mtp_steps=0 drafts by lookup only: give it ngram=NGramDrafter(...)")
        if len(model.mtp) == 0 and mtp_steps != 0:
            raise ValueError("the tree drafter needs a model with MTP modules (config.mtp_depth >= 1); "
                             "use drafter='ngram' or 'suffix' for a model without them")
        self.top_b = check_int("top_b", top_b, minimum=1)
        self.width = check_int("width", top_b if width is None else width, minimum=1)
        self.budget = check_int("budget", budget, minimum=1)
        self.ngram, self.cost, self.name = ngram, cost, name
        self.draft_model = draft_model if draft_model is not None else model
        self.recycle = recycle or "feed"
        self.depth = len(model.mtp)                                              # D
        self.hits = Acceptance()              # the scores' calibration: acceptance once the parent is reached
        self.level = {}                       # depth d -> [sum, count] of the children's scores / their parent's
        self.made = [2.0, 1.0]                # tokens emitted, AR-token times spent (a prior of rate 2): the rate r

    def start(self, cache: ModelCache) -> None:
        self.cache = cache
        self.walked: list[int] = []          # the root and the accepted nodes of the last verified tree
        self.pending: list[torch.Tensor | None] = [None] * (self.depth + 2)   # [j]: h^{j-1} not yet fed to module j
        self.drafted = False

    # ------------------------------------------------------------------ drafting

    def _call(self, j: int, nodes: list[int], n_last: int) -> torch.Tensor:
        """Module j over its new entries: the committed catch-up positions (first call of this step) and `nodes`
        (parents first). Returns the logits of the last n_last entries (n_last, V)."""
        m = self.draft_model
        device = m.head.weight.device
        st = self.mod[j]
        h_in, toks = [], []
        if not st["entries"]:                                    # first call: positions start..n-j, committed
            start = self.cache.mtp[j - 1].length
            st["start"] = start
            toks += self.seq[start + j:self.n + 1]                                 # t_{i+j}
            have = self.pending[j]
            if have is not None:
                h_in.append(have)
            got = start + (have.shape[1] if have is not None else 0)             # first position still missing
            if got <= self.n - j:                                                # from module j-1 this step
                assert j > 1, "the main model's states reach t_{n-1}"
                prev = self.mod[j - 1]
                h_in.append(prev["cu"][:, got - prev["start"]:self.n - j + 1 - prev["start"]])
            self.pending[j] = None
            ncu = self.n - j + 1 - start
            st["entries"] = list(range(-ncu, 0))                                 # catch-up entries as negative ids
            st["parents"] = list(range(-1, ncu - 1))
            st["index"] = {-1: ncu - 1}                                          # the root is the last of them
        for x in nodes:                                          # tree entries
            par = self.par[x]
            reuse = j == self.depth and self.dep[x] >= self.depth
            h_in.append(self.mod[j]["state"][par] if reuse else self.mod[j - 1]["state"][par])
            toks.append(self.tok[x])
            st["index"][x] = len(st["entries"])
            st["entries"].append(x)
            st["parents"].append(st["index"][par])
        new = len(toks)
        mask, depth = ancestor_mask(st["parents"], st["start"], new, device)
        h = torch.cat(h_in, dim=1)                                                 # (1, new, C)
        logits, state = m.forward_mtp(j, h, torch.tensor(toks, device=device)[None], self.cache, last=n_last,
                                      state="feed" if j < self.depth else self.recycle, mask=mask,
                                      positions=st["start"] + depth)
        first = len(st["entries"]) - new
        if first == 0:                                           # keep the catch-up states for module j+1
            ncu = st["index"][-1] + 1
            st["cu"] = state[:, :ncu]
            st["state"][-1] = state[:, ncu - 1:ncu]
        for e in range(max(first, st["index"][-1] + 1), len(st["entries"])):
            st["state"][st["entries"][e]] = state[:, e - first:e - first + 1]
        self.calls += 1
        return logits[0]                                                           # (n_last, V)

    def _add(self, tok: int, par: int, cond: float, src: str, key: tuple, q: float = 0.0) -> int:
        """A node under par (-1: the root) accepted with chance cond once par is: its score is par's times cond; key:
        its kind, for the calibration (Acceptance)."""
        self.key[len(self.tok)] = key
        self.q.append(q)
        self.tok.append(tok)
        self.par.append(par)
        self.dep.append(self.dep[par] + 1 if par >= 0 else 1)
        self.cond.append(cond)
        self.score.append((self.score[par] if par >= 0 else 1.0) * cond)
        self.src.append(src)
        self.kids[par][tok] = len(self.tok) - 1
        return len(self.tok) - 1

    def propose(self, tokens: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> Draft:
        n, D = len(tokens) - 1, self.depth
        V = self.draft_model.config.vocab_size
        # nodes that fit in every KV cache: the verify forward appends the root and every node after t_{n-1}
        self.room = self.cache.main[0].max_len - len(tokens)
        if k == 0 or (n < D and self.mtp_steps != 0) or self.room < 1:   # module D needs position n - D
            return Draft([], torch.empty(0, V), None, forwards=0)
        if self.walked:
            self._learn(tokens)
        self.clock = time.process_time()
        self.n, self.seq, self.calls = n, tokens, 0
        self.mod = [{"entries": [], "state": {}}] + [{"entries": [], "state": {}} for _ in range(D)]
        self.tok, self.par, self.dep, self.score, self.src, self.q, self.cond = [], [], [], [], [], [], []
        self.key: dict[int, tuple] = {}                       # node -> its calibration key (Acceptance)
        self.kids = _Kids()                                      # node -> {token: child}; the root is -1
        probs_of: dict[int, torch.Tensor] = {}                   # MTP node -> the distribution it was picked from
        sampled = not params.greedy        # sampling: MTP children drawn from q (_sample), the lookup's come first
        if sampled and self.ngram is not None:
            self._add_ngram(-1, tokens, k)
        frontier, used = [-1], 0
        for d in range(k if self.mtp_steps is None else min(k, self.mtp_steps)):
            j = min(d + 1, D)
            if self.cost is not None and d > 0 and not self._worth_another(frontier, d):
                break
            need = sorted({a for x in frontier for a in self._path(x) if a not in self.mod[j]["index"]}
                          if self.mod[j]["entries"] else {a for x in frontier for a in self._path(x)},
                          key=lambda a: (self.dep[a], a))
            logits = self._call(j, need, len(frontier))                            # (F, V)
            used = max(used, j)
            children = []
            level = self.level.setdefault(d, [0.0, 0.0])
            level[1] += len(frontier)
            if sampled:                                                            # draws from q, the proposal
                q = params.probs(logits)                                           # (F, V)
                for i, x in enumerate(frontier):
                    children += self._sample(x, q[i], d + 1, level, probs_of, generator)
            else:                                                                  # the drafter's top_b
                q = torch.softmax(logits.float(), dim=-1)                          # (F, V): a ranking
                top_p, top_i = q.topk(self.top_b, dim=-1)                          # (F, b)
                for i, x in enumerate(frontier):
                    for s, t in zip(top_p[i].tolist(), top_i[i].tolist(), strict=True):
                        key = self._mtp_key(d + 1, s)
                        a = self.hits.rate(key, prior=s)
                        level[0] += a
                        if len(self.tok) < self.room:
                            children.append(self._add(t, x, a, "mtp", key, s))
                            probs_of[children[-1]] = q[i]
            frontier = sorted(sorted(children, key=lambda c: -self.score[c])[:self.width])   # rows in entry order
            if not frontier:
                break
        if self.ngram is not None:
            starts = ([] if sampled else [-1]) + ([max(frontier, key=lambda c: self.score[c])]
                                                  if frontier and frontier != [-1] else [])
            for x in starts:
                self._add_ngram(x, tokens, k)
            for x, par in enumerate(self.par):          # merged nodes changed their cond: rescore, parents first
                self.score[x] = (self.score[par] if par >= 0 else 1.0) * self.cond[x]
        keep = self._select()
        self.used, self.drafted, self.kept_order = used, True, keep
        index = {x: i for i, x in enumerate(keep)}
        device = self.draft_model.head.weight.device
        probs = torch.zeros(len(keep), V, device=device)         # an n-gram node's row: one-hot on its token
        for i, x in enumerate(keep):
            if x in probs_of:
                probs[i] = probs_of[x]
            else:
                probs[i, self.tok[x]] = 1.0
        return Draft([self.tok[x] for x in keep], probs, None, forwards=self.calls,
                     parents=[index.get(self.par[x], -1) for x in keep], sources=[self.src[x] for x in keep])

    def _sample(self, x: int, q: torch.Tensor, depth: int, level: list[float], probs_of: dict[int, torch.Tensor],
                generator: torch.Generator | None) -> list[int]:
        """Sampling: node x's MTP children, top_b draws from q (V,) without replacement and without the tokens x already
        has as children (the lookup's, drafted first). Child i's proposal r_i = q less the tokens drawn before it,
        renormalised (tree_accept tries the children in this order). Its score must not depend on its own token (a
        node the budget keeps or drops for being the token it is would bias the walk), so its kind is its module, its
        rank among the draws and the bin of max r_i (how sure the drafter is), and it never exceeds the rank before."""
        r = q.clone()
        if self.kids[x]:
            r[list(self.kids[x])] = 0.0
        # the Gumbel top-k trick: the top_b of log r + Gumbel noise are top_b draws without replacement, in order,
        # in one pass over the vocabulary (torch.multinomial takes about 70 us per draw here)
        gumbel = -torch.log(-torch.log(torch.rand(r.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)))
        keys, order = (r.double().log() + gumbel).topk(min(self.top_b, r.shape[0]))
        draws = [t for t, key in zip(order.tolist(), keys.tolist(), strict=True) if key > -math.inf]
        children, cond = [], 1.0
        for rank, t in enumerate(draws):
            mass = float(r.sum())
            if mass <= 0.0 or len(self.tok) >= self.room:
                break
            r = r / mass
            top = float(r.max())
            key = ("mtp", min(depth, self.depth + 1), bisect.bisect(Q_BINS, top), "draw", rank)
            # prior: the rate of every draw of this rank so far (a kind not seen yet is as good as draws in general),
            # before any: rank 0 as sure as the drafter, a later rank passes if the one before failed, cond (1 - cond)
            prior = self.hits.rate(("draw", rank), prior=top if rank == 0 else cond * (1.0 - cond))
            cond = min(cond, self.hits.rate(key, prior=prior))
            level[0] += cond
            children.append(self._add(t, x, cond, "mtp", key, top))
            probs_of[children[-1]] = r
            r = r.clone()
            r[t] = 0.0
        return children

    def _mtp_key(self, depth: int, q: float) -> tuple:
        """An MTP node's calibration key: its module (D + 1 for the recycled levels) and its q bin."""
        return "mtp", min(depth, self.depth + 1), bisect.bisect(Q_BINS, q)

    def _path(self, x: int) -> list[int]:
        """x and its ancestors (tree nodes, not the root)."""
        out = []
        while x >= 0:
            out.append(x)
            x = self.par[x]
        return out

    def _add_ngram(self, x: int, tokens: list[int], k: int) -> None:
        """Prompt lookup's continuations after node x (-1: the root), up to depth k: every earlier occurrence of the
        matched n-gram (the latest `OCCURRENCES`) proposes what followed it, and together they form a trie whose
        nodes count the occurrences that pass through them (SuffixDecoding's frequency tree). The `budget` prefixes
        the most occurrences share are added, best first, merged into the nodes that already hold their tokens; a
        node's kind records its share of the occurrences through its parent."""
        path = [self.tok[a] for a in reversed(self._path(x))]
        n, found = self.ngram.continuations(tokens + path, k - len(path))
        found = found[:OCCURRENCES]
        trie: dict[int, list] = {}                           # token -> [count, trie below it]
        for continuation in found:
            level = trie
            for t in continuation:
                entry = level.setdefault(t, [0, {}])
                entry[0] += 1
                level = entry[1]
        heap = [(-c, 0, i, t, sub, x, len(found)) for i, (t, (c, sub)) in enumerate(trie.items())]
        heapq.heapify(heap)
        order = len(heap)
        for _ in range(self.budget):
            if not heap:
                break
            c, i, _, t, sub, par, through = heapq.heappop(heap)   # most occurrences first, then shallowest
            base = self.score[par] if par >= 0 else 1.0
            key = ("ngram", n, bisect.bisect(RUN_BINS, i), bisect.bisect(SHARE_BINS, -c / through))
            a = self.hits.rate(key, prior=0.5 * -c / through)
            child = self.kids[par].get(t)
            if child is None:
                if len(self.tok) >= self.room:
                    break
                child = self._add(t, par, a, "ngram", key)
            elif self.src[child] == "mtp":           # both sources agree: a kind of its own, more reliable than either
                self.src[child] = "mtp+ngram"
                self.key[child] = ("both",) + self._mtp_key(self.dep[child], self.q[child])[1:] + (n,)
                self.cond[child] = self.hits.rate(self.key[child], prior=max(a, self.cond[child]))
                self.score[child] = base * self.cond[child]
            for t2, (c2, sub2) in sub.items():
                order += 1
                heapq.heappush(heap, (-c2, i + 1, order, t2, sub2, child, -c))

    def _select(self) -> list[int]:
        """The nodes to verify: the best by score (ancestors always before their descendants), at most `budget`,
        as many as the cost model finds worth it; returned in depth-first order, the best child first, so that the
        likeliest path is a prefix of the entries (keep_path then only truncates)."""
        order = sorted(range(len(self.tok)), key=lambda x: (-self.score[x], self.dep[x], x))
        chosen: set[int] = set()
        ranked = []
        for x in order:
            if len(ranked) == self.budget:
                break
            if self.par[x] < 0 or self.par[x] in chosen:
                chosen.add(x)
                ranked.append(x)
        if self.cost is not None:
            ranked = ranked[:self.cost.best_size([self.score[x] for x in ranked], self.rate)]
        kids: dict[int, list[int]] = {}
        for x in ranked:                                  # best first under each parent
            kids.setdefault(self.par[x], []).append(x)
        order, stack = [], kids.get(-1, [])[::-1]
        while stack:                                      # depth-first, best child first: the likeliest path leads
            x = stack.pop()
            order.append(x)
            stack += kids.get(x, [])[::-1]
        return order

    @property
    def rate(self) -> float:
        """r: tokens per AR-token time over the steps this drafter has drafted (time.process_time from the proposal
        to the commit, so drafting, verifying and the engine's acceptance, in units of cost.ar_ms; the modelled cost
        calls c + v(N + 1) when ar_ms is unknown)."""
        return self.made[0] / self.made[1]

    def _value(self, scores: list[float], calls: int) -> float:
        """Expected tokens of the best tree of these scores after `calls` module calls, less r times its cost."""
        n = self.cost.best_size(scores, self.rate)
        return 1 + sum(scores[:n]) - self.rate * (calls * self.cost.c + self.cost.verify(n + 1))

    def _worth_another(self, frontier: list[int], d: int) -> bool:
        """Adaptive depth: one more module call gives each frontier node children whose scores sum to its own times
        the running mean of that ratio at depth d (self.level); draft it only if the best tree then brings more
        beyond r times its cost."""
        scores = sorted(self.score, reverse=True)[:self.budget]
        total, count = self.level.get(d, [0.0, 0.0])
        ratio = (total + 1.0) / (count + 1.0)             # a prior of 1: an unseen depth gets drafted once
        later = sorted(scores + [self.score[x] * ratio for x in frontier], reverse=True)[:self.budget]
        return self._value(later, self.calls + 1) > self._value(scores, self.calls)

    # ------------------------------------------------------------------ after verification

    def _learn(self, tokens: list[int]) -> None:
        """Calibrate on every node drafted last step whose parent was reached, verified or not: at the i-th reached
        node the walk emitted tokens[n + 1 + i] (its draw y, whether or not it matched a child), and a child would
        have been accepted iff it holds that token. So a node the cost model left out is still labelled, and no
        kind of node is starved of data by being scored low. Except a node drawn from q (sampling, _sample): whether
        it passes min(1, p'/r) is a coin of its own, not "the draw y equals it", so it is labelled only if it was
        verified (a drawn node left out would read as almost never accepted, and stay left out), and also counts for
        every draw of its rank: the prior of a kind not seen yet (_sample), so that no kind starts too low to be
        verified and learn."""
        emitted = tokens[self.n + 1:]
        verified = set(self.kept_order)
        for i, node in enumerate(self.walked[:len(emitted)]):
            for x in self.kids[node].values():
                drawn = "draw" in self.key[x]
                if drawn and x not in verified:
                    continue
                accepted = self.tok[x] == emitted[i]
                self.hits.add(self.key[x], accepted)
                if drawn:
                    self.hits.add(("draw", self.key[x][-1]), accepted)          # every draw of its rank
        self.walked = []

    def commit(self, hidden: torch.Tensor, n_kept: int, path: list[int] | None = None) -> None:
        """hidden (1, T_new, C): main states of the newly kept positions; path: the kept nodes of the last Draft."""
        if self.mtp_steps != 0:                          # states for module 1 (a lookup-only tree needs none)
            pend = self.pending[1]
            self.pending[1] = hidden if pend is None else torch.cat([pend, hidden], dim=1)
        if not self.drafted:
            return
        self.drafted = False
        keep_nodes = [self.kept_order[i] for i in (path or [])[:n_kept]]
        self.walked = [-1] + keep_nodes                   # labelled by the next proposal, which sees the tokens
        if self.cost is not None:                         # the step's tokens and cost, for the rate r
            self.made[0] += n_kept + 1
            self.made[1] += (1e3 * (time.process_time() - self.clock) / self.cost.ar_ms if self.cost.ar_ms > 0 else
                             self.calls * self.cost.c + self.cost.verify(len(self.kept_order) + 1))
        kept_states = {}
        for j in range(1, self.used + 1):
            st = self.mod[j]
            ncu = st["index"][-1] + 1
            kept = []                                     # path nodes at depth <= j - 1 (positions <= n - 1) it has
            for x in keep_nodes[:j - 1]:
                if x not in st["index"]:
                    break
                kept.append(x)
            keep_path(self.cache.mtp[j - 1], st["start"], list(range(ncu)) + [st["index"][x] for x in kept])
            kept_states[j] = torch.cat([st["cu"]] + [st["state"][x] for x in kept], dim=1)   # positions start..
        for j in range(1, min(self.used, self.depth - 1) + 1):    # module j's kept states feed module j+1 later
            nxt = self.pending[j + 1]
            end = self.cache.mtp[j].length + (nxt.shape[1] if nxt is not None else 0)
            fresh = kept_states[j][:, end - self.mod[j]["start"]:]
            self.pending[j + 1] = fresh if nxt is None else torch.cat([nxt, fresh], dim=1)


class _Kids(dict):
    """node -> {token: child}; the root is -1."""

    def __missing__(self, key):
        self[key] = {}
        return self[key]


def monotone(v: list[float]) -> list[float]:
    """The non-decreasing sequence closest to v in least squares (pool adjacent violators): a verify forward of more
    tokens never costs less, so dips in a timed curve are noise."""
    blocks: list[list[float]] = []                       # [mean, count]
    for x in v:
        blocks.append([x, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


@torch.inference_mode()
def measure_costs(model: MTPModel, max_n: int = 64, repeats: int = 7, prefix: int = 64, entries: int = 4,
                  seed: int = 0) -> dict:
    """The verify cost v(n), n = 1..max_n, and the draft cost c of one module call over `entries` tree entries, in
    AR-token times (v(1): one token after a cached prefix, the AR step), this process's threads.

    The forward is the engine's: a tree mask (a chain) and position ids after a `prefix`-token cache. c is timed as
    the drafter spends it: one drafting step after a verify forward, modules 1..D and module D once more (the
    recycled level), divided by its D + 1 calls. Each repeat times every job once, in turn (so that load on a shared
    machine hits every n alike), in process CPU seconds (not wall time: waiting for a core is not cost); the medians
    are returned as ms, and v = ms / ms(1) made non-decreasing (`monotone`) as `v_fit`, the curve the cost model
    uses.
    """
    check_int("max_n", max_n, minimum=2)
    check_int("repeats", repeats, minimum=1)
    cfg = model.config
    if prefix + max(max_n, 2 * entries) > cfg.max_seq_len:              # module D drafts `entries` twice
        raise ValueError(f"prefix + max(max_n, 2 entries) = {prefix + max(max_n, 2 * entries)} exceeds max_seq_len "
                         f"{cfg.max_seq_len}; lower max_n or prefix")
    device = model.head.weight.device
    D = len(model.mtp)
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, cfg.vocab_size, (1, prefix + max(max_n, D + entries)), generator=g).to(device)
    h = torch.randn(1, prefix + entries, cfg.d_model, generator=g).to(device)
    cache = model.new_cache()
    model.forward_main(toks[:, :prefix], cache)
    for j in range(1, D + 1):                                                      # each module's committed prefix
        model.forward_mtp(j, h[:, :prefix], toks[:, j:prefix + j], cache)

    def verify(n):
        mask, depth = ancestor_mask(list(range(-1, n - 1)), prefix, device=device)
        model.forward_main(toks[:, prefix:prefix + n], cache, mask, prefix + depth)
        for c in cache.main:
            c.truncate(prefix)

    def draft():
        for j in [*range(1, D + 1), D]:
            mask, depth = ancestor_mask([-1] * entries, cache.mtp[j - 1].length, device=device)
            model.forward_mtp(j, h[:, prefix:], toks[:, prefix:prefix + entries], cache, last=entries, mask=mask,
                              positions=prefix + depth)
        for c in cache.mtp:
            c.truncate(prefix)

    jobs = [lambda n=n: verify(n) for n in range(1, max_n + 1)] + ([draft] if model.mtp else [])
    samples = [[] for _ in jobs]
    for _ in range(repeats + 1):                         # the first round warms every shape up, untimed
        for job, times in zip(jobs, samples, strict=True):
            t0 = time.process_time()
            job()
            times.append(time.process_time() - t0)
    ms = [1e3 * statistics.median(t[1:]) for t in samples]
    v_ms, c_ms = ms[:max_n], (ms[max_n] if model.mtp else float("nan"))
    c_ms /= D + 1                                        # per module call
    v = [x / v_ms[0] for x in v_ms]
    return {"n": list(range(1, max_n + 1)), "ms": v_ms, "v": v, "v_fit": monotone(v), "c": c_ms / v_ms[0],
            "c_ms": c_ms, "ar_ms": v_ms[0], "entries": entries, "prefix": prefix, "repeats": repeats,
            "threads": torch.get_num_threads(), "clock": "process CPU time"}


def tree_cost(measured: dict) -> TreeCost:
    """The TreeCost of a measure_costs result: c and the non-decreasing fit of v."""
    return TreeCost(c=measured["c"], v=tuple(measured["v_fit"]), ar_ms=measured["ar_ms"])
