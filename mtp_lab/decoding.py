"""Decoding: the autoregressive baseline and lossless speculative decoding with MTP (or n-gram) drafts.

One engine: `speculative_steps` yields one event per main-model forward; `speculative_generate` drains it.
Batch size 1 only (one sequence per call), as is usual for latency-bound speculative decoding.

Each step, with t_0..t_n committed (t_n sampled but not yet fed to the main model):
  1. the drafter proposes d_1..d_k with distributions q_1..q_k;
  2. the main model runs ONE cached forward over [t_n, d_1..d_k] and gives p_1..p_{k+1}
     (p_i is the target distribution of the token after position n+i-1);
  3. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), left to right; at the first rejection
     the step emits a token from norm(max(0, p_i - q_i)); if all k pass, a bonus token from p_{k+1};
  4. every KV cache is truncated back to the kept positions.
The emitted tokens are distributed exactly as the main model's own samples (Leviathan et al. 2023).
Greedy (temperature 0): p and q are one-hot, so a draft is kept iff it equals the target argmax, and the
output is token for token the greedy AR output.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Literal, Sequence, get_args

import numpy as np
import torch

from .config import check_choice, check_int
from .drafters import Drafter, DrafterName, MTPDrafter, NGramDrafter, Recycle
from .model import MTPModel
from .sampling import SamplingParams, residual
from .tree import TreeCost, TreeDrafter, ancestor_mask, keep_path, measure_costs, tree_accept, tree_cost

DRAFTERS: tuple[str, ...] = get_args(DrafterName)      # every drafter make_drafter builds by name

StopReason = Literal["max_new_tokens", "eos", "max_seq_len"]   # why a generation ended


@dataclass
class GenerationStats:
    """Counters of one generation. Metric names follow vLLM."""
    new_tokens: int = 0
    main_forwards: int = 0           # main-model forwards, the prefill included
    draft_forwards: int = 0          # drafter module forwards (0 for weight-free drafters)
    steps: int = 0                   # verify forwards that checked at least one draft
    drafted: int = 0
    accepted: int = 0
    drafted_per_position: list[int] = field(default_factory=list)   # [j]: steps that drafted position j+1
    accepted_per_position: list[int] = field(default_factory=list)  # [j]: steps that accepted position j+1
    wall_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0       # main-model forwards (prefill included)
    stop_reason: StopReason | str = ""   # why it ended ("" until it has)
    accepted_by_source: dict[str, int] = field(default_factory=dict)   # accepted drafts by who proposed them

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def mean_acceptance_length(self) -> float:
        """tau = 1 + accepted / steps: tokens per verifying forward, the bonus or corrected token included."""
        return 1.0 + self.accepted / self.steps if self.steps else float("nan")

    @property
    def per_position(self) -> list[float]:
        """Acceptance rate at draft position j: accepted at j / steps that drafted j (includes the chain)."""
        return [a / d if d else float("nan")
                for a, d in zip(self.accepted_per_position, self.drafted_per_position, strict=True)]

    @property
    def tokens_per_main_forward(self) -> float:
        return self.new_tokens / self.main_forwards if self.main_forwards else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    def record(self, step: "SpeculativeStep", draft_forwards: int = 0) -> None:
        """Fold one engine event into the counters: the one place where tau and the per-position rates are counted
        (the engine, the live dashboard and `merge` all go through here). Draft time is the step's time before its
        verify forward; wall time is the caller's to measure."""
        k = step.depth                   # positions drafted: the chain's length, a tree's depth
        self._grow(k)
        self.main_forwards += 1
        self.new_tokens += len(step.emitted)
        self.draft_forwards += draft_forwards
        self.draft_time_s += step.draft_time_s
        self.verify_time_s += step.verify_time_s
        if k:
            self.steps += 1
            self.drafted += len(step.draft_tokens)                 # a tree: every node
            self.accepted += step.n_accepted
            for j in range(k):
                self.drafted_per_position[j] += 1
                self.accepted_per_position[j] += j < step.n_accepted
            for i in step.path[:step.n_accepted]:
                src = step.sources[i]
                self.accepted_by_source[src] = self.accepted_by_source.get(src, 0) + 1

    def _grow(self, k: int) -> None:
        for counts in (self.drafted_per_position, self.accepted_per_position):
            counts += [0] * (k - len(counts))

    @classmethod
    def merge(cls, stats: Sequence["GenerationStats"]) -> "GenerationStats":
        """Counters summed over generations (per-position lists element-wise, the shorter padded with zeros), so
        that rates pooled over prompts are ratios of sums, not means of ratios."""
        total = cls()
        for s in stats:
            for name in ("new_tokens", "main_forwards", "draft_forwards", "steps", "drafted", "accepted",
                         "wall_time_s", "draft_time_s", "verify_time_s"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total._grow(len(s.drafted_per_position))
            for name in ("drafted_per_position", "accepted_per_position"):
                for j, n in enumerate(getattr(s, name)):
                    getattr(total, name)[j] += n
            for src, n in s.accepted_by_source.items():
                total.accepted_by_source[src] = total.accepted_by_source.get(src, 0) + n
        return total

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("acceptance_rate", "mean_acceptance_length", "per_position",
                     "tokens_per_main_forward", "tokens_per_second"):
            d[name] = getattr(self, name)
        return d


@dataclass
class GenerationResult:
    prompt: list[int]
    tokens: list[int]                # the generated tokens only
    stats: GenerationStats

    @property
    def sequence(self) -> list[int]:
        return self.prompt + self.tokens


@dataclass
class SpeculativeStep:
    """One main-model forward of the engine: what was drafted, what the target said, what was kept.

    Step 0 is the prefill (no drafts). Greedy steps have one-hot probabilities and zero draws.
    """
    index: int
    position: int                     # sequence index of the first token this step emits
    draft_tokens: list[int]           # d_1..d_k
    draft_probs: torch.Tensor         # (k, V): q_i
    draft_logits: torch.Tensor | None  # (k, V): the drafter's raw logits (None: n-gram or no draft)
    target_probs: torch.Tensor        # (k+1, V): p_i, same temperature/top-k/top-p as q
    target_logits: torch.Tensor       # (k+1, V): the main model's raw logits
    uniforms: torch.Tensor            # (k,): u_i; d_i accepted iff u_i < p_i(d_i) / q_i(d_i)
    accepted: list[bool]              # per draft; False after the first rejection (not examined)
    n_accepted: int
    next_token: int                   # the corrected token (after a rejection) or the bonus token
    is_bonus: bool
    emitted: list[int]                # tokens appended this step (cut after EOS)
    draft_time_s: float
    verify_time_s: float
    step_time_s: float
    stop_reason: str | None           # set on the last step
    parents: list[int] | None = None  # a tree draft: each node's parent (-1: the root t_n); None: a chain
    path: list[int] = field(default_factory=list)      # the accepted nodes, root side first (a chain: 0..n-1)
    sources: list[str] = field(default_factory=list)   # who proposed each node ("mtp", "ngram", "mtp+ngram", ...)

    @property
    def depth(self) -> int:
        """Draft positions of this step: a chain's length, a tree's depth."""
        if self.parents is None:
            return len(self.draft_tokens)
        depth: list[int] = []
        for par in self.parents:
            depth.append(depth[par] + 1 if par >= 0 else 1)
        return max(depth, default=0)


def speculative_accept(draft: Sequence[int], q: torch.Tensor, p: torch.Tensor, params: SamplingParams,
                       generator: torch.Generator | None = None) -> tuple[int, int, torch.Tensor]:
    """Speculative sampling over k drafts. q: (k, V), p: (k+1, V). Returns (n_accepted, next token, u).

    accept d_i   iff  u_i < p_i(d_i) / q_i(d_i),   u_i ~ U[0, 1)   (written u_i q_i(d_i) < p_i(d_i))
    first reject at i:  next ~ norm(max(0, p_i - q_i));   all accepted:  next ~ p_{k+1}   (bonus)
    Greedy: p and q are one-hot, the ratio is 0 or 1: d_i passes iff it is the argmax of p_i; no draw (u = 0).
    """
    k = len(draft)
    if params.greedy:
        # the same rule with one-hot p and q: d_i passes iff it is the argmax of p_i; residual and bonus are argmaxes
        target = p.argmax(-1).tolist()                                             # (k+1,)
        n_acc = 0
        while n_acc < k and draft[n_acc] == target[n_acc]:
            n_acc += 1
        return n_acc, target[n_acc], torch.zeros(k, dtype=p.dtype, device=p.device)
    u = torch.rand(k, generator=generator, dtype=p.dtype, device=p.device)
    n_acc = 0
    if k:
        idx = torch.arange(k, device=p.device)
        d = torch.tensor(draft, device=p.device)
        q = q.to(p)
        ok = u * q[idx, d] < p[idx, d]                                             # (k,)
        n_acc = int(ok.long().cumprod(0).sum())
    if n_acc < k:
        return n_acc, params.sample(residual(p[n_acc], q[n_acc]), generator), u   # norm(max(0, p - q))
    return n_acc, params.sample(p[k], generator), u


def _prompt_list(model: MTPModel, prompt_ids) -> list[int]:
    """Validate a prompt (list of ids, or a 1-D or (1, T) tensor or integer numpy array) and return it as a
    list of ints."""
    if isinstance(prompt_ids, np.ndarray):
        if prompt_ids.dtype.kind not in "iu":
            raise ValueError(f"prompt_ids must hold integer token ids, got a numpy array of dtype {prompt_ids.dtype}")
        prompt_ids = torch.from_numpy(prompt_ids.astype(np.int64))
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2 and prompt_ids.shape[0] == 1:
            prompt_ids = prompt_ids[0]
        if prompt_ids.dim() != 1:
            raise ValueError(f"prompt_ids must be one sequence (batch size 1): a 1-D tensor or shape (1, T), "
                             f"got shape {tuple(prompt_ids.shape)}")
        if prompt_ids.is_floating_point() or prompt_ids.dtype == torch.bool:
            raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
        ids = prompt_ids.tolist()
    else:
        if isinstance(prompt_ids, str) or not isinstance(prompt_ids, Iterable):
            raise ValueError(f"prompt_ids must be token ids (a list or tensor), got {type(prompt_ids).__name__}; "
                             f"encode text first: tokenizer.encode(text).ids")
        ids = list(prompt_ids)
        bad = [x for x in ids if isinstance(x, bool) or not isinstance(x, numbers.Integral)]   # numpy ints pass
        if bad:
            raise ValueError(f"prompt_ids must be integer token ids, got {bad[0]!r}")
        ids = [int(x) for x in ids]
    if not ids:
        raise ValueError("prompt_ids is empty: give at least one token id (e.g. the first token of a text)")
    model.check_tokens(torch.tensor([ids]))   # vocabulary range and max_seq_len, with clear messages
    return ids


def _check_common(model: MTPModel, max_new_tokens: int, eos_id: int | None) -> None:
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    V = model.config.vocab_size
    if eos_id is not None and check_int("eos_id", eos_id, minimum=0, note=" (a token id, or None)") >= V:
        raise ValueError(f"eos_id must be None or a token id in [0, {V}), got {eos_id!r}")


def _generator(seed: int | None, model: MTPModel) -> torch.Generator | None:
    """A private RNG for reproducible sampling (None: torch's global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=model.head.weight.device).manual_seed(seed)


def _stop_reason(tokens: list[int], n_new: int, max_new_tokens: int, max_seq_len: int,
                 eos_id: int | None) -> StopReason | None:
    """Why generation must stop now, or None. The sequence (prompt + new) may not exceed max_seq_len."""
    if eos_id is not None and n_new > 0 and tokens[-1] == eos_id:
        return "eos"
    if n_new >= max_new_tokens:
        return "max_new_tokens"
    if len(tokens) >= max_seq_len:
        return "max_seq_len"
    return None


@torch.inference_mode()
def generate(model: MTPModel, prompt_ids, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_id: int | None = None) -> GenerationResult:
    """Autoregressive baseline with a KV cache: one main-model forward per token (batch size 1)."""
    prompt = _prompt_list(model, prompt_ids)
    _check_common(model, max_new_tokens, eos_id)
    params = SamplingParams(temperature, top_k, top_p)
    gen = _generator(seed, model)
    device, max_len = model.head.weight.device, model.config.max_seq_len
    cache = model.new_cache()
    stats = GenerationStats()
    tokens, feed = list(prompt), prompt
    t0 = time.perf_counter()
    while (stop := _stop_reason(tokens, len(tokens) - len(prompt), max_new_tokens, max_len, eos_id)) is None:
        logits, _ = model.forward_main(torch.tensor(feed, device=device)[None], cache)  # (1, T, V)
        tok = params.sample(params.probs(logits[0, -1]), gen)
        tokens.append(tok)
        feed = [tok]
        stats.main_forwards += 1
    stats.wall_time_s = stats.verify_time_s = time.perf_counter() - t0
    stats.new_tokens, stats.stop_reason = len(tokens) - len(prompt), stop
    return GenerationResult(prompt, tokens[len(prompt):], stats)


def make_drafter(model: MTPModel, drafter: DrafterName | Drafter = "mtp", fp8_drafter: bool = False,
                 recycle: Recycle | None = None, cost: TreeCost | None = None) -> Drafter:
    """The one registry: a drafter by name (DRAFTERS), or a Drafter object passed through.

    "mtp", "mtp-pre", "mtp-fp8": the chain of MTP modules (MTPDrafter), recycling beyond D the post-norm state,
    the pre-norm state, or drafting with a copy whose MTP blocks run in simulated FP8 (fp8_linear, scope "mtp":
    the main model still verifies in full precision, so the output is unchanged; fp8_drafter=True asks the same of
    "mtp"); "ngram": prompt lookup (what followed the latest earlier match); "suffix": what followed EVERY earlier
    match (up to tree.OCCURRENCES), one tree of the 16 continuations most matches share (SuffixDecoding's frequency
    tree over this sequence; no weights, no module call); "mtp-tree": a top-2 tree of MTP drafts, 16 nodes at most
    (TreeDrafter); "hybrid": that tree, 4 MTP levels deep, with the suffix tree grown from the root and from the best
    MTP leaf up to depth k;
    "adaptive": the hybrid tree with up to 32 nodes, its MTP depth and size chosen per step by the cost model
    (`cost`, measured by tree.measure_costs on this machine when not given), each node weighed against the rate the
    generation reaches (its drafts, not its output, then depend on timing: pass a TreeCost without ar_ms for drafts
    that repeat exactly). For trees k is the maximum depth.
    """
    if not isinstance(drafter, str):
        if not isinstance(drafter, Drafter):
            raise ValueError(f"drafter must be one of {DRAFTERS} or an object with start/propose/commit "
                             f"(mtp_lab.drafters.Drafter), got {drafter!r}")
        return drafter
    check_choice("drafter", drafter, DrafterName, " (or a Drafter object)")
    if fp8_drafter:
        if drafter not in ("mtp", "mtp-fp8"):
            raise ValueError("fp8_drafter=True needs drafter='mtp' (the FP8 copy drafts the chain), "
                             f"got drafter={drafter!r}")
        drafter = "mtp-fp8"
    V = model.config.vocab_size
    if drafter == "ngram":
        return NGramDrafter(V)
    if drafter == "suffix":
        return TreeDrafter(model, budget=16, ngram=NGramDrafter(V), mtp_steps=0, name=drafter)
    if drafter in ("mtp", "mtp-pre", "mtp-fp8"):
        draft_model = None
        if drafter == "mtp-fp8":
            from .fp8_linear import apply_fp8_recipe
            draft_model = apply_fp8_recipe(model, scope="mtp", inplace=False)
        return MTPDrafter(model, draft_model=draft_model, recycle="pre_norm" if drafter == "mtp-pre" else recycle)
    if drafter == "adaptive" and cost is None:
        cost = tree_cost(measure_costs(model, max_n=min(40, model.config.max_seq_len // 2), repeats=3,
                                       prefix=min(64, model.config.max_seq_len // 2)))
    if drafter == "mtp-tree":
        return TreeDrafter(model, top_b=2, budget=16, recycle=recycle, name=drafter)
    if drafter == "hybrid":
        return TreeDrafter(model, top_b=2, budget=16, ngram=NGramDrafter(V), mtp_steps=4, recycle=recycle,
                           name=drafter)
    return TreeDrafter(model, top_b=2, budget=32, ngram=NGramDrafter(V), cost=cost, recycle=recycle, name=drafter)


def speculative_steps(model: MTPModel, prompt_ids, max_new_tokens: int, num_draft: int = 1,
                      temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                      seed: int | None = None, drafter: DrafterName | Drafter = "mtp", eos_id: int | None = None,
                      fp8_drafter: bool = False) -> Iterator[SpeculativeStep]:
    """The speculative engine as a generator of SpeculativeStep events (one per main-model forward).

    Its return value (StopIteration.value) is the GenerationResult; `speculative_generate` collects it.
    Inputs are validated here, before the first event.
    """
    prompt = _prompt_list(model, prompt_ids)
    _check_common(model, max_new_tokens, eos_id)
    check_int("num_draft", num_draft, minimum=0, note=" (0 = plain decoding)")
    params = SamplingParams(temperature, top_k, top_p)
    drafter = make_drafter(model, drafter, fp8_drafter)
    return _engine(model, prompt, max_new_tokens, num_draft, params, _generator(seed, model), drafter, eos_id)


@torch.inference_mode()
def _engine(model: MTPModel, prompt: list[int], max_new_tokens: int, k: int, params: SamplingParams,
            gen: torch.Generator | None, drafter: Drafter, eos_id: int | None):
    device, max_len = model.head.weight.device, model.config.max_seq_len
    cache = model.new_cache()
    drafter.start(cache)
    stats = GenerationStats(drafted_per_position=[0] * k, accepted_per_position=[0] * k)
    tokens, pending = list(prompt), list(prompt)      # pending: committed tokens not yet in the main cache
    no_draft = torch.zeros(0, model.config.vocab_size, device=device)
    t_start = time.perf_counter()
    stop = _stop_reason(tokens, 0, max_new_tokens, max_len, eos_id)
    index = 0
    while stop is None:
        t0 = time.perf_counter()
        n_new = len(tokens) - len(prompt)
        budget = min(max_new_tokens - n_new, max_len - len(tokens))   # tokens this step may still emit
        k_step = min(k, budget - 1) if index > 0 else 0                  # the prefill has nothing to draft from
        draft = drafter.propose(tokens, k_step, params, gen) if k_step > 0 else None
        drafts = draft.tokens if draft is not None else []
        q = draft.probs if drafts else no_draft
        parents = draft.parents if drafts and draft.parents is not None else None
        sources = (draft.sources if draft.sources is not None else [getattr(drafter, "name", "draft")] * len(drafts)
                   ) if drafts else []
        t1 = time.perf_counter()
        # ONE verify forward over [t_n, d_1..d_k] (the whole prompt at the prefill); a tree: over [t_n, x_1..x_N]
        # with the tree mask and position ids (mtp_lab.tree)
        start = cache.length
        feed = torch.tensor(pending + drafts, device=device)[None]
        if parents is None:
            logits, hidden = model.forward_main(feed, cache)
        else:
            mask, depth = ancestor_mask([-1] + [par + 1 for par in parents], start, device=device)
            logits, hidden = model.forward_main(feed, cache, mask, start + depth)
        t2 = time.perf_counter()
        target_logits = logits[0, -(len(drafts) + 1):]                   # (k+1, V)
        p = params.probs(target_logits)
        if parents is None:
            n_acc, nxt, u = speculative_accept(drafts, q, p, params, gen)
            path = list(range(n_acc))
        else:                         # a tree: recursive rejection sampling over each node's children (tree_accept)
            path, nxt = tree_accept(drafts, parents, p, q, params, gen)
            n_acc, u = len(path), torch.zeros(0)
            keep_path(cache.main, start, [0] + [i + 1 for i in path])   # root and path to consecutive positions
            hidden = hidden[:, [0] + [i + 1 for i in path]]
        emitted = [drafts[i] for i in path] + [nxt]
        if eos_id is not None and eos_id in emitted:
            emitted = emitted[:emitted.index(eos_id) + 1]
        position = len(tokens)
        tokens += emitted
        # roll back: the main cache keeps every committed token but the last (it is fed next step)
        for c in cache.main:
            c.truncate(len(tokens) - 1)
        if parents is None:
            drafter.commit(hidden[:, :len(pending) + len(emitted) - 1], len(emitted) - 1)
        else:
            drafter.commit(hidden[:, :len(emitted)], len(emitted) - 1, path)
        pending = [tokens[-1]]

        stop = _stop_reason(tokens, len(tokens) - len(prompt), max_new_tokens, max_len, eos_id)
        event = SpeculativeStep(
            index=index, position=position, draft_tokens=drafts, draft_probs=q,
            draft_logits=draft.logits if draft is not None else None, target_probs=p,
            target_logits=target_logits, uniforms=u, accepted=[j in path for j in range(len(drafts))],
            n_accepted=n_acc, next_token=nxt,
            is_bonus=bool(drafts) and (path[-1] if path else -1) not in (parents or range(-1, len(drafts) - 1)),
            emitted=emitted, draft_time_s=t1 - t0, verify_time_s=t2 - t1,
            step_time_s=time.perf_counter() - t0, stop_reason=stop, parents=parents, path=path, sources=sources)
        stats.record(event, draft_forwards=draft.forwards if draft is not None else 0)   # calls made, kept or not
        yield event
        index += 1
    stats.wall_time_s = time.perf_counter() - t_start
    stats.stop_reason = stop
    return GenerationResult(prompt, tokens[len(prompt):], stats)


def speculative_generate(model: MTPModel, prompt_ids, max_new_tokens: int, num_draft: int = 1,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         seed: int | None = None, drafter: DrafterName | Drafter = "mtp",
                         eos_id: int | None = None, fp8_drafter: bool = False) -> GenerationResult:
    """Speculative decoding: exactly the main model's output distribution, fewer main-model forwards.

    drafter: "mtp" (chain the MTP modules), "ngram" (prompt lookup) or a drafter object (mtp_lab.drafters).
    For num_draft > D the MTP drafter runs module D again, one position on, fed its own output (by default
    the state after shared_head.norm, as SGLang's NextN returns it; vLLM feeds back the state before that
    norm). That is this package's choice: with D >= 2 vLLM cycles back to module 1 (step % num_mtp_layers)
    or, in V1, uses module 1 for every draft, and SGLang supports one module only (see MTPDrafter).
    fp8_drafter: draft with a copy whose MTP blocks run in simulated FP8 (eh_proj stays in high precision,
    as in the released checkpoint). Returns .tokens and .stats (acceptance_rate, mean_acceptance_length,
    per_position, forward counts, wall time, stop_reason).
    """
    steps = speculative_steps(model, prompt_ids, max_new_tokens, num_draft, temperature, top_k, top_p,
                              seed, drafter, eos_id, fp8_drafter)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
