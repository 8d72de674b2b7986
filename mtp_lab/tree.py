"""Tree drafts: several candidates per position, verified in ONE main-model forward (SpecInfer, EAGLE-2, SGLang's
MTP topk tree), grown from the MTP modules, with an optional n-gram branch (hybrid) and a per-step size chosen from
the measured costs (adaptive).

The drafted nodes x_1..x_N hang under the last committed token t_n (the root, entry 0 of the verify forward).
    tree mask:     entry e attends to the cached prefix, its ancestors and itself        (ancestor_mask)
    position ids:  prefix length + depth (the root at the prefix length, its children one further)
so each node sees exactly the sequence it would see on its own path, and the main model scores every node in one
forward. Acceptance with deterministic children (the drafter's top-b, an n-gram continuation; mtp-facts section 8):

    at node x (the root first):  y ~ p( . | t_0..t_n, path to x);  if y is a child of x, move to it, else emit y, stop
    (at a leaf every y is emitted: the bonus token)                                                   (tree_accept)

Every emitted token is a draw from the target given the tokens before it, so the output is distributed exactly as
the main model's own samples; greedy (y = argmax) gives the greedy output token for token. The acceptance at a
node is sum_{children c} p(c): more siblings, more of p covered. Afterwards every KV cache keeps the root and the
accepted path only, moved to consecutive positions (keep_path): not a prefix of the flattened node order.

Costs (one thread on a CPU, batch 1): the verify forward of n tokens costs v(n) AR-token times and every module call
of the drafter c; `measure_costs` times both, `TreeDrafter(cost=...)` uses them to size each step's tree.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import check_int
from .drafters import Draft, NGramDrafter, Recycle
from .layers import KVCache
from .model import ModelCache, MTPModel
from .sampling import SamplingParams


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


def keep_path(cache: KVCache, start: int, keep: list[int]) -> None:
    """Roll a cache back to one path: entries start + keep[i] (ascending) move to start + i, the rest is dropped."""
    if keep != list(range(len(keep))):
        idx = torch.tensor(keep, device=cache.k.device) + start
        cache.k[:, :, start:start + len(keep)] = cache.k[:, :, idx]
        cache.v[:, :, start:start + len(keep)] = cache.v[:, :, idx]
    cache.truncate(start + len(keep))


def tree_accept(tokens: list[int], parents: list[int], p: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None = None) -> tuple[list[int], int]:
    """The walk down a tree of deterministic candidates. p (N+1, V): p[0] the target at the root, p[i+1] at node i.

    Returns (path: the accepted nodes, root side first; the next token: a non-child y ~ p, or the bonus at a leaf).
    """
    children: list[dict[int, int]] = [{} for _ in range(len(tokens) + 1)]      # entry -> {token: node}
    for i, (t, par) in enumerate(zip(tokens, parents, strict=True)):
        children[par + 1].setdefault(t, i)
    path, e = [], 0
    while True:
        y = params.sample(p[e], generator)
        node = children[e].get(y)
        if node is None:
            return path, y
        path.append(node)
        e = node + 1


@dataclass(frozen=True)
class TreeCost:
    """Measured costs in AR-token times (one main-model forward of one token = 1): the cost model of a step."""
    c: float                         # one MTP module call of the drafter (a few entries at once)
    v: tuple[float, ...]             # v[n-1]: one verify forward of n tokens after a cached prefix, n = 1..len(v)

    def verify(self, n: int) -> float:
        """v(n); beyond the measured range, extrapolated linearly from the last two points."""
        if n <= len(self.v):
            return self.v[n - 1]
        return self.v[-1] + (n - len(self.v)) * (self.v[-1] - self.v[-2])

    def best_size(self, scores: list[float], calls: int) -> int:
        """How many of the best nodes (scores: descending acceptance estimates) to verify: argmax over N of
            (1 + sum of the N best scores) / (calls c + v(N + 1))     expected tokens per AR-token time."""
        best, best_rate, gain = 0, 1.0 / (calls * self.c + self.verify(1)), 1.0
        for n, s in enumerate(scores, start=1):
            gain += s
            rate = gain / (calls * self.c + self.verify(n + 1))
            if rate > best_rate:
                best, best_rate = n, rate
        return best


class TreeDrafter:
    """A tree of MTP drafts: at each depth the `width` best nodes (by path score) get their `top_b` most likely
    tokens as children; the `budget` best nodes are verified (EAGLE-2's rerank). Options: `ngram` adds the prompt
    lookup's continuation as a branch (merged where it meets an MTP node; hybrid); `cost` sizes each step's tree
    and stops drafting early from the cost model (adaptive).

    Path score of a node = its parent's score times its estimated chance of acceptance once the parent is reached:
    for an MTP node min(1, f q) with q the drafter's probability (softmax of its logits, the temperature ignored: a
    ranking, not the q of speculative sampling) and f the running ratio accepted / sum of q over the MTP nodes whose
    parent was reached (calibration), for an n-gram node the running acceptance of such n-gram nodes. Scores fall
    along a path, so the best nodes form a tree. With `ngram`, prompt lookup continues both the root and the best
    deepest MTP node (staged: the MTP modules draft `mtp_steps` levels, the lookup goes on to depth k for free).

    Module j at tree node x (depth e) sits at position n - j + e and reads t_{n+e} = x, with h^{j-1} = module j-1's
    state at x's parent (the training computation, as the chain MTPDrafter); past depth D, module D runs again with
    its own state at the parent (`recycle`). Each module's KV cache holds its committed positions plus this step's
    tree entries, masked with ancestor_mask; after verification the accepted path's entries are kept (keep_path)
    where their inputs are all committed (position <= n - 1), the rest is recomputed next step.
    """

    def __init__(self, model: MTPModel, top_b: int = 2, width: int | None = None, budget: int = 16,
                 ngram: NGramDrafter | None = None, cost: TreeCost | None = None, recycle: Recycle | None = None,
                 draft_model: MTPModel | None = None, mtp_steps: int | None = None, name: str = "mtp-tree"):
        if len(model.mtp) == 0:
            raise ValueError("the tree drafter needs a model with MTP modules (config.mtp_depth >= 1); "
                             "use drafter='ngram' for a model without them")
        self.top_b = check_int("top_b", top_b, minimum=1)
        self.width = check_int("width", top_b if width is None else width, minimum=1)
        self.budget = check_int("budget", budget, minimum=1)
        self.ngram, self.cost, self.name = ngram, cost, name
        self.draft_model = draft_model if draft_model is not None else model
        self.recycle = recycle or "feed"
        self.depth = len(model.mtp)                                              # D
        self.mtp_steps = None if mtp_steps is None else check_int("mtp_steps", mtp_steps, minimum=1)
        self.ngram_hits = [1.0, 2.0]          # n-gram nodes accepted, reached (a prior of 1/2), for their score
        self.mtp_hits = [1.0, 1.0]            # MTP nodes accepted, sum of q over those reached: the calibration f

    def start(self, cache: ModelCache) -> None:
        self.cache = cache
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

    def _add(self, tok: int, par: int, score: float, src: str, q: float = 0.0) -> int:
        self.q.append(q)
        self.tok.append(tok)
        self.par.append(par)
        self.dep.append(self.dep[par] + 1 if par >= 0 else 1)
        self.score.append(score)
        self.src.append(src)
        self.kids[par][tok] = len(self.tok) - 1
        return len(self.tok) - 1

    def propose(self, tokens: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> Draft:
        n, D = len(tokens) - 1, self.depth
        V = self.draft_model.config.vocab_size
        # nodes that fit in every KV cache: the verify forward appends the root and every node after t_{n-1}
        self.room = self.cache.main[0].max_len - len(tokens)
        if k == 0 or n < D or self.room < 1:   # module D needs position n - D: too short a context, draft nothing
            return Draft([], torch.empty(0, V), None, forwards=0)
        self.n, self.seq, self.calls = n, tokens, 0
        self.mod = [{"entries": [], "state": {}}] + [{"entries": [], "state": {}} for _ in range(D)]
        self.tok, self.par, self.dep, self.score, self.src, self.q = [], [], [], [], [], []
        self.kids = _Kids()                                      # node -> {token: child}; the root is -1
        probs_of: dict[int, torch.Tensor] = {}                   # node -> the drafter's distribution it was picked from
        frontier, used = [-1], 0
        f = self.mtp_hits[0] / self.mtp_hits[1]
        for d in range(min(k, self.mtp_steps or k)):
            j = min(d + 1, D)
            if self.cost is not None and d > 0 and not self._worth_another(frontier):
                break
            need = sorted({a for x in frontier for a in self._path(x) if a not in self.mod[j]["index"]}
                          if self.mod[j]["entries"] else {a for x in frontier for a in self._path(x)},
                          key=lambda a: (self.dep[a], a))
            logits = self._call(j, need, len(frontier))                            # (F, V)
            used = max(used, j)
            q = torch.softmax(logits.float(), dim=-1)                              # (F, V)
            top_p, top_i = q.topk(self.top_b, dim=-1)                              # (F, b)
            children = []
            for i, x in enumerate(frontier):
                base = self.score[x] if x >= 0 else 1.0
                for s, t in zip(top_p[i].tolist(), top_i[i].tolist(), strict=True):
                    if len(self.tok) < self.room:
                        children.append(self._add(t, x, base * min(1.0, f * s), "mtp", s))
                        probs_of[children[-1]] = q[i]
            frontier = sorted(sorted(children, key=lambda c: -self.score[c])[:self.width])   # rows in entry order
            if not frontier:
                break
        if self.ngram is not None:
            starts = [-1] + ([max(frontier, key=lambda c: self.score[c])] if frontier and frontier != [-1] else [])
            for x in starts:
                self._add_ngram(x, tokens, k, probs_of, V)
        keep = self._select()
        self.used, self.drafted, self.kept_order = used, True, keep
        index = {x: i for i, x in enumerate(keep)}
        device = self.draft_model.head.weight.device
        probs = torch.stack([probs_of[x] for x in keep]) if keep else torch.empty(0, V)
        return Draft([self.tok[x] for x in keep], probs.to(device), None, forwards=self.calls,
                     parents=[index.get(self.par[x], -1) for x in keep], sources=[self.src[x] for x in keep])

    def _path(self, x: int) -> list[int]:
        """x and its ancestors (tree nodes, not the root)."""
        out = []
        while x >= 0:
            out.append(x)
            x = self.par[x]
        return out

    def _add_ngram(self, x: int, tokens: list[int], k: int, probs_of: dict, V: int) -> None:
        """The prompt lookup's continuation after node x (-1: the root) as a branch, up to depth k, merged into the
        nodes that already hold its tokens."""
        r = self.ngram_hits[0] / self.ngram_hits[1]
        path = [self.tok[a] for a in reversed(self._path(x))]
        for t in self.ngram.lookup(tokens + path, k - len(path)):
            score = (self.score[x] if x >= 0 else 1.0) * r
            child = self.kids[x].get(t)
            if child is None:
                if len(self.tok) >= self.room:
                    break
                child = self._add(t, x, score, "ngram")
                probs_of[child] = torch.nn.functional.one_hot(torch.tensor(t), V).float()
            else:
                self.src[child] = "mtp+ngram"
                self.score[child] = max(self.score[child], score)
            x = child

    def _select(self) -> list[int]:
        """The nodes to verify: the best by score (ancestors always before their descendants), at most `budget`,
        as many as the cost model finds worth it; returned parents first."""
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
            ranked = ranked[:self.cost.best_size([self.score[x] for x in ranked], self.calls)]
        return sorted(ranked, key=lambda x: (self.dep[x], x))

    def _worth_another(self, frontier: list[int]) -> bool:
        """Adaptive depth: one more module call adds at most the frontier's scores in expected tokens; draft it only
        if that raises the expected tokens per AR-token time of the best tree so far."""
        scores = sorted(self.score, reverse=True)[:self.budget]
        n_now = self.cost.best_size(scores, self.calls)
        gain_now = 1 + sum(scores[:n_now])
        rate_now = gain_now / (self.calls * self.cost.c + self.cost.verify(n_now + 1))
        extra = min(len(frontier) * self.top_b, self.budget)
        gain = gain_now + sum(self.score[x] for x in frontier)
        return gain / ((self.calls + 1) * self.cost.c + self.cost.verify(n_now + extra + 1)) > rate_now

    # ------------------------------------------------------------------ after verification

    def commit(self, hidden: torch.Tensor, n_kept: int, path: list[int] | None = None) -> None:
        """hidden (1, T_new, C): main states of the newly kept positions; path: the kept nodes of the last Draft."""
        pend = self.pending[1]
        self.pending[1] = hidden if pend is None else torch.cat([pend, hidden], dim=1)
        if not self.drafted:
            return
        self.drafted = False
        keep_nodes = [self.kept_order[i] for i in (path or [])[:n_kept]]
        on_path = {-1, *keep_nodes}
        for x in self.kept_order:                         # nodes whose parent was reached: accepted or not
            if self.par[x] in on_path:
                if "ngram" in self.src[x]:
                    self.ngram_hits[0] += x in on_path
                    self.ngram_hits[1] += 1
                if self.src[x] != "ngram":
                    self.mtp_hits[0] += x in on_path
                    self.mtp_hits[1] += self.q[x]
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

    The forward is the engine's: a tree mask (a chain) and position ids after a `prefix`-token cache. Each repeat
    times every n once, in turn (so that load on a shared machine hits every n alike), in process CPU seconds (not
    wall time: waiting for a core is not cost); the medians are returned as ms, and v = ms / ms(1) made
    non-decreasing (`monotone`) as `v_fit`, the curve the cost model uses.
    """
    check_int("max_n", max_n, minimum=2)
    check_int("repeats", repeats, minimum=1)
    cfg = model.config
    if prefix + max_n > cfg.max_seq_len:
        raise ValueError(f"prefix + max_n = {prefix + max_n} exceeds max_seq_len {cfg.max_seq_len}; lower max_n")
    device = model.head.weight.device
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, cfg.vocab_size, (1, prefix + max_n), generator=g).to(device)
    h = torch.randn(1, prefix + entries, cfg.d_model, generator=g).to(device)
    cache = model.new_cache()
    model.forward_main(toks[:, :prefix], cache)
    if model.mtp:
        model.forward_mtp(1, h[:, :prefix], toks[:, 1:prefix + 1], cache)        # module 1's committed prefix

    def verify(n):
        mask, depth = ancestor_mask(list(range(-1, n - 1)), prefix, device=device)
        model.forward_main(toks[:, prefix:prefix + n], cache, mask, prefix + depth)
        for c in cache.main:
            c.truncate(prefix)

    def draft():
        mask, depth = ancestor_mask([-1] * entries, prefix, device=device)
        model.forward_mtp(1, h[:, prefix:], toks[:, prefix:prefix + entries], cache, last=entries, mask=mask,
                          positions=prefix + depth)
        cache.mtp[0].truncate(prefix)

    jobs = [lambda n=n: verify(n) for n in range(1, max_n + 1)] + ([draft] if model.mtp else [])
    samples = [[] for _ in jobs]
    for _ in range(repeats + 1):                         # the first round warms every shape up, untimed
        for job, times in zip(jobs, samples, strict=True):
            t0 = time.process_time()
            job()
            times.append(time.process_time() - t0)
    ms = [1e3 * statistics.median(t[1:]) for t in samples]
    v_ms, c_ms = ms[:max_n], (ms[max_n] if model.mtp else float("nan"))
    v = [x / v_ms[0] for x in v_ms]
    return {"n": list(range(1, max_n + 1)), "ms": v_ms, "v": v, "v_fit": monotone(v), "c": c_ms / v_ms[0],
            "c_ms": c_ms, "ar_ms": v_ms[0], "entries": entries, "prefix": prefix, "repeats": repeats,
            "threads": torch.get_num_threads(), "clock": "process CPU time"}


def tree_cost(measured: dict) -> TreeCost:
    """The TreeCost of a measure_costs result: c and the non-decreasing fit of v."""
    return TreeCost(c=measured["c"], v=tuple(measured["v_fit"]))
