"""Drafters for speculative decoding: the model's own MTP modules, and n-gram prompt lookup (no weights).

A drafter proposes up to k tokens after the committed sequence t_0..t_n, each with the distribution q it
was drawn from; the engine (decoding.py) verifies them with the main model and tells the drafter how many
positions were kept, so that the drafter can roll back its own state. `Drafter` is that contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .config import check_choice
from .model import ModelCache, MTPModel
from .sampling import SamplingParams

# the drafters the engine builds by name (decoding.make_drafter; mtp_lab.DRAFTERS): the MTP chain, recycling the
# post-norm (mtp) or pre-norm (mtp-pre) state beyond D, with FP8 MTP blocks (mtp-fp8); n-gram prompt lookup; a top-b
# tree of MTP drafts (mtp-tree); that tree with n-gram branches (hybrid); the hybrid sized per step by the cost model
# (adaptive); the n-gram branches alone, every earlier match's continuation in one tree (suffix, no weights)
DrafterName = Literal["mtp", "mtp-pre", "mtp-fp8", "ngram", "suffix", "mtp-tree", "hybrid", "adaptive"]
Recycle = Literal["post_norm", "pre_norm"]   # the state an MTP module's reuse for drafts k > D is fed back


@dataclass
class Draft:
    tokens: list[int]                   # d_1..d_k' (a tree: its nodes, every parent before its children)
    probs: torch.Tensor                 # (k', V): q_j, the distribution d_j was drawn (a tree: picked) from
    logits: torch.Tensor | None         # (k', V): the drafter's raw logits (None for weight-free drafters and trees)
    forwards: int                       # module forward calls spent on this draft
    parents: list[int] | None = None    # a tree: parent node of each node (-1: the last committed token); None: a chain
    sources: list[str] | None = None    # who proposed each node ("mtp", "ngram", "mtp+ngram"); None: the drafter's name


@runtime_checkable
class Drafter(Protocol):
    """What the engine (decoding.py) calls, in this order, for every generation."""

    def start(self, cache: ModelCache) -> None:
        """A new generation begins; `cache` is the engine's ModelCache."""

    def propose(self, tokens: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> Draft:
        """At most k draft tokens after the committed `tokens`, each with the distribution it was drawn from."""

    def commit(self, hidden: torch.Tensor, n_kept: int) -> None:
        """hidden (1, T_new, C): the main model's states h_i of the newly kept positions; n_kept: how many drafts
        of the last proposal were kept. A tree drafter (its Draft has `parents`) is called with a third argument,
        `path`: the kept nodes, root side first."""


class MTPDrafter:
    """Drafts by chaining the MTP modules 1..D; for k > D module D runs again (this package's choice, see below).

    Indexing (0-based, as in model.py; vLLM's convention, positions NOT shifted): module j at position i
    combines h^{j-1}_i with the token t_{i+j} and predicts t_{i+j+1}. With t_0..t_n committed (t_n sampled
    but not yet fed to the main model), draft j comes from module j at position n-1, where t_{n-1+j} is
    t_n for j = 1 and the draft d_{j-1} otherwise. This is exactly the training-time computation.

    Each module keeps its own KV cache (cache.mtp[j-1]) holding only positions whose inputs are all
    committed tokens; positions built on drafts are truncated after verification and recomputed. Module j
    also needs h^{j-1} at the positions it has not seen: for j = 1 those are the main model's states of
    the newly kept positions (given by `commit`), for j > 1 the outputs of module j-1 kept from the last step.

    For drafts j > D, module D runs again one position further on (its cache advances by one per extra
    draft), fed the previous draft token and the state it output at the previous draft: what training
    computes at the next position, with module D's own output standing in for h^{D-1}. With one module
    (DeepSeek-V3, D = 1) every engine does this too; with D >= 2 the engines differ from it and from each
    other: vLLM's deepseek_mtp.py picks module `spec_step_idx % num_mtp_layers` (1, 2, 1, 2, ...: back to
    module 1, not module D), vLLM V1's EAGLE-style proposer passes no step index, so every draft uses
    module 1, and SGLang's deepseek_nextn.py asserts a single module.
    `recycle` picks the state fed back: "post_norm" = after the module's final norm (shared_head.norm),
    what SGLang's NextN returns; "pre_norm" = the block output before it (residual + hidden), what vLLM
    feeds back; None = the state the config feeds between depths in training (post-norm when
    config.mtp_input_norm, the default). DeepSeek never trained this reuse, so acceptance falls with the
    number of reuses.

    `draft_model` (default: the model itself) supplies the MTP modules, embedding and head, e.g. a copy
    whose MTP blocks run in simulated FP8 while the main model verifies in full precision.
    """

    name = "mtp"

    def __init__(self, model: MTPModel, draft_model: MTPModel | None = None, recycle: Recycle | None = None):
        if len(model.mtp) == 0:
            raise ValueError("the MTP drafter needs a model with MTP modules (config.mtp_depth >= 1); "
                             "use drafter='ngram' for a model without them")
        if recycle is not None:
            check_choice("recycle", recycle, Recycle, " (or None: as the config feeds depths in training)")
        self.draft_model = draft_model if draft_model is not None else model
        if len(self.draft_model.mtp) != len(model.mtp):
            raise ValueError("draft_model must have as many MTP modules as the verifying model")
        self.recycle = recycle or "feed"            # None: as the config feeds depths in training (feed_state)
        self.depth = len(model.mtp)                                              # D

    def start(self, cache: ModelCache) -> None:
        self.cache = cache
        self.main_pending: torch.Tensor | None = None   # main states h_i not yet fed to module 1
        self.kept: list[torch.Tensor | None] = [None] * (self.depth + 1)  # kept[j]: h^{j-1} not yet fed to module j
        self.outputs: list[torch.Tensor] = []            # outputs[j-1]: module j's states from the last proposal
        self.drafted = False                             # the last proposal drafted something, not yet committed
        self.n = 0                                       # index n of the last committed token at the last proposal
        self.modules_used: int | None = None             # modules run per draft (fixed after the first proposal)

    def _module(self, j: int, h_prev: torch.Tensor, tokens: torch.Tensor, chain: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """MTPModel.forward_mtp with the logits of the LAST position only.

        Returns (logits (V,) predicting the next draft, the state fed to depth j+1 as in training (1, T', C)
        or None when `chain` is False (no later module reads it), the state per `recycle` at the last position
        (1, 1, C)).
        """
        if chain:      # depth j+1 reads the fed state everywhere; module D is never chained, so recycle = feed here
            logits, fed = self.draft_model.forward_mtp(j, h_prev, tokens, self.cache, last=1)
            return logits[0, -1], fed, fed[:, -1:]
        logits, state = self.draft_model.forward_mtp(j, h_prev, tokens, self.cache, last=1, state=self.recycle)
        return logits[0, -1], None, state[:, -1:]

    def propose(self, tokens: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> Draft:
        if k == 0:
            return Draft([], torch.empty(0, 0), None, forwards=0)
        n = len(tokens) - 1
        used = min(k, self.depth)
        if self.modules_used is not None and used > self.modules_used:
            raise RuntimeError("the number of drafts per step may only shrink during one generation")
        self.modules_used, self.n = used, n
        device = self.draft_model.head.weight.device
        seq = list(tokens)                     # committed tokens, then the drafts as they are drawn
        drafts, probs, logits_out, self.outputs, self.drafted = [], [], [], [], True
        h_chain = h_recycled = None
        for j in range(1, k + 1):
            if j <= self.depth:
                start = self.cache.mtp[j - 1].length                               # m_j, first unseen position
                if j == 1:
                    h_in = self.main_pending                                       # h_i, i = m_1..n-1
                else:                                                              # h^{j-1}_i, i = m_j..n-1
                    h_in = h_chain if self.kept[j] is None else torch.cat([self.kept[j], h_chain], dim=1)
                # module j at positions i = m_j..n-1 takes t_{i+j}; indices past n are drafts
                toks = torch.tensor(seq[start + j:n + j], dtype=torch.long, device=device)[None]    # (1, n - m_j)
                logits, h_chain, h_recycled = self._module(j, h_in, toks, chain=j < used)
                if j < used:
                    self.outputs.append(h_chain)
            else:                                                                  # reuse module D, one position on
                toks = torch.tensor([seq[-1]], device=device)[None]               # (1, 1): d_{j-1}
                logits, _, h_recycled = self._module(self.depth, h_recycled, toks, chain=False)
            if params.greedy:                  # q is one-hot at the argmax: no distribution to compute per draft
                d = int(logits.argmax())
            else:
                q = params.probs(logits)                                           # (V,)
                d = params.sample(q, generator)
                probs.append(q)
            drafts.append(d)
            seq.append(d)
            logits_out.append(logits)
        self.main_pending = None
        logits_out = torch.stack(logits_out)                                       # (k, V)
        # greedy: the same one-hot rows params.probs would give, built once for the whole draft
        q_all = (F.one_hot(torch.tensor(drafts, device=device), logits_out.shape[-1]).to(logits_out.dtype)
                 if params.greedy else torch.stack(probs))                         # (k, V)
        return Draft(drafts, q_all, logits_out, forwards=k)

    def commit(self, hidden: torch.Tensor, n_kept: int) -> None:
        """hidden (1, T_new, C): the main model's states at the newly kept positions; n_kept drafts kept."""
        pending = self.main_pending
        self.main_pending = hidden if pending is None else torch.cat([pending, hidden], dim=1)
        if not self.drafted:                   # nothing was drafted this step (prefill, or a zero-draft step)
            return
        n_new = self.n + n_kept + 1            # index of the step's corrected or bonus token
        # module j at position i read t_{i+j}, a committed token or a draft; it stays valid iff that
        # token was kept, i <= n_new - 1 - j. Keep length = number of valid positions (never beyond n).
        keep = [max(0, min(self.n, n_new - j)) for j in range(1, self.modules_used + 2)]
        for j in range(1, self.modules_used + 1):
            self.cache.mtp[j - 1].truncate(keep[j - 1])
            if j < self.modules_used:
                # module j+1 will need h^j at positions keep_{j+1}..keep_j - 1: this proposal computed them
                out = self.outputs[j - 1]                                   # positions m_j..n-1
                start = self.n - out.shape[1]
                self.kept[j + 1] = out[:, keep[j] - start:keep[j - 1] - start]
        self.outputs, self.drafted = [], False


class NGramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the context's last n-gram, propose what followed.

    Tries n = max_n down to min_n; no weights, no state. Its drafts are deterministic, so q is one-hot and
    speculative sampling reduces to: accept d with probability p(d), else sample from p with d removed.
    """

    name = "ngram"

    def __init__(self, vocab_size: int, max_n: int = 3, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.vocab_size, self.max_n, self.min_n = vocab_size, max_n, min_n

    def start(self, cache: ModelCache) -> None:
        pass

    def continuations(self, tokens: list[int], k: int) -> tuple[int, list[list[int]]]:
        """(n, continuations): the longest suffix n-gram that occurred earlier (0 if none) and, for each of its
        earlier occurrences, latest first, the up to k tokens that followed it. A longer match is a more reliable
        continuation (tree.TreeDrafter scores it by n; where occurrences disagree, by how many agree)."""
        L = len(tokens)
        if L < 2:
            return 0, []
        ends = [e for e in range(L - 2, -1, -1) if tokens[e] == tokens[-1]]   # never the suffix itself
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            suffix = tokens[L - n:]
            found = [tokens[e + 1:e + 1 + k] for e in ends if e >= n - 1 and tokens[e - n + 1:e + 1] == suffix]
            if found:
                return n, found
        return 0, []

    def match(self, tokens: list[int], k: int) -> tuple[int, list[int]]:
        """(n, continuation): the longest matching suffix n-gram and what followed its LATEST earlier occurrence."""
        n, found = self.continuations(tokens, k)
        return n, (found[0] if found else [])

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier match of the longest matching suffix n-gram."""
        return self.match(tokens, k)[1]

    def propose(self, tokens: list[int], k: int, params: SamplingParams,
                generator: torch.Generator | None = None) -> Draft:
        drafts = self.lookup(tokens, k) if k > 0 else []
        probs = F.one_hot(torch.tensor(drafts, dtype=torch.long), self.vocab_size).float()  # (k', V)
        return Draft(drafts, probs, None, forwards=0)

    def commit(self, hidden: torch.Tensor, n_kept: int) -> None:
        pass
