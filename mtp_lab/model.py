"""The main model and its D sequential MTP modules (DeepSeek-V3 report, section 2.2).

Token indexing in this file is 0-based: tokens t_0 .. t_{T-1}. The main model at position i predicts
t_{i+1}; MTP depth k at position i predicts t_{i+k+1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from .config import ModelConfig
from .layers import Block, KVCache, RMSNorm, causal_mask


class SharedHead(nn.Module):
    """The checkpoint's `shared_head`: the module's own final RMSNorm (`shared_head.norm`).

    The output head it feeds is the main model's (MTPModel.forward_mtp applies both): one tensor, not a copy.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class MTPModule(nn.Module):
    """MTP module k: enorm, hnorm, eh_proj (the report's M_k), one transformer block, shared_head.

    Report, equation (21), hidden state first:
        h'_i^k = M_k [RMSNorm(h_i^{k-1}) ; RMSNorm(Emb(t_{i+k}))]
    The released checkpoint and every engine that loads it (vLLM, SGLang, Megatron-Core) put the
    EMBEDDING first: eh_proj(cat[enorm(emb), hnorm(h)]). For a model trained from scratch the order
    only permutes the columns of M_k; we follow the checkpoint so that names and weights line up.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.enorm = RMSNorm(cfg.d_model, cfg.norm_eps)                      # on Emb(t_{i+k})
        self.hnorm = RMSNorm(cfg.d_model, cfg.norm_eps)                      # on h_i^{k-1}
        self.eh_proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)  # M_k in R^{d x 2d}
        self.block = Block(cfg)                                              # TRM_k
        self.shared_head = SharedHead(cfg)

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """h_prev: (B, T', C) states h^{k-1}_i; emb: (B, T', C) embeddings of t_{i+k}. Returns h^k (B, T', C).
        mask, positions: a tree of drafts (layers.CausalSelfAttention), None for a sequence.

        (21)  h'^k_i = M_k [enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)]     (checkpoint order)
        """
        h = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h_prev)], dim=-1))  # (B, T', C)
        rope = None if positions is None else self.block.attn.rope.tables(0, h.shape[1], positions)
        # (22)  h^k_{1:T-k} = TRM_k(h'^k_{1:T-k})
        return self.block(h, cache, mask, rope)


@dataclass
class MTPOutput:
    logits: torch.Tensor                  # (B, T, V): main next-token logits; [:, i] predicts t_{i+1}
    mtp_logits: list[torch.Tensor]        # D tensors; mtp_logits[k-1] is (B, T-k, V) and [:, i] predicts t_{i+k+1}
    hidden: torch.Tensor                  # (B, T, C): the main model's states that feed MTP module 1


@dataclass
class ModelCache:
    """KV caches for one generation: one per main block, one per MTP module."""
    main: list[KVCache] = field(default_factory=list)
    mtp: list[KVCache] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Positions held by the main model's caches."""
        return self.main[0].length if self.main else 0


class MTPModel(nn.Module):
    """Main model (embedding -> n_layers blocks -> final RMSNorm -> output head) plus D MTP modules."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)               # shared with every MTP module
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)       # shared with every MTP module
        self.mtp = nn.ModuleList(MTPModule(config) for _ in range(config.mtp_depth))
        self.reset_parameters()
        if config.fp8 != "none":
            from .fp8_linear import apply_fp8_recipe  # lazy: the FP8 simulation loads only when asked for
            apply_fp8_recipe(self, scope=config.fp8)

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)                      # RMSNorm gains
            elif name.endswith(("attn.wo.weight", "ffn.w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))  # residual projections
            else:
                nn.init.normal_(p, 0.0, std)

    def feed_state(self, h: torch.Tensor, h_norm: torch.Tensor) -> torch.Tensor:
        """The state that feeds the next depth, chosen once here: after the final norm (config.mtp_input_norm,
        the default) or before it."""
        return h_norm if self.config.mtp_input_norm else h

    def forward_main(self, tokens: torch.Tensor, cache: ModelCache | None = None, mask: torch.Tensor | None = None,
                     positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) -> (logits (B, T, V), hidden (B, T, C) that feeds MTP module 1).

        mask (T, cached + T), positions (T,): a tree of drafts after the cached prefix (mtp_lab.tree), where
        each token sees the prefix and its ancestors and sits at the prefix length plus its depth.
        """
        x = self.embed(tokens)                                                     # (B, T, C)
        T, start = tokens.shape[1], cache.length if cache is not None else 0
        if mask is None and start and T > 1:   # verification of a chain: one lower-right mask for every layer
            mask = causal_mask(T, start + T, tokens.device)                        # (T, start + T)
        if mask is not None and mask.dtype == torch.bool:   # the additive mask SDPA would build in every layer, once
            mask = torch.zeros(mask.shape, device=mask.device, dtype=x.dtype).masked_fill_(~mask, float("-inf"))
        rope = self.layers[0].attn.rope.tables(start, T, positions) if self.layers else None   # one lookup, all layers
        for i, layer in enumerate(self.layers):
            x = layer(x, cache.main[i] if cache is not None else None, mask, rope)
        h_norm = self.norm(x)
        return self.head(h_norm), self.feed_state(x, h_norm)

    def forward_mtp(self, k: int, h_prev: torch.Tensor, tokens: torch.Tensor, cache: ModelCache | None = None,
                    last: int | None = None, state: Literal["feed", "pre_norm", "post_norm"] = "feed",
                    mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth k (1-based). h_prev (B, T', C) = h^{k-1}_i; tokens (B, T') = t_{i+k}.

        Returns (logits (B, T', V) where [:, i] predicts t_{i+k+1}, the state h^k that feeds depth k+1).
        (23)  P^k_{i+k+1} = OutHead(h^k_i)   with the module's own norm and the SHARED head
        Decoding options (the drafter's, as vLLM keeps forward and compute_logits apart): `last` = m gives the
        logits of the last m positions only (B, m, V); `state` picks the state returned: "feed" (what training
        feeds depth k+1, feed_state), or the one before / after the module's final norm; mask, positions: a tree.
        """
        if not 1 <= k <= len(self.mtp):
            raise ValueError(f"MTP depth k={k} out of range 1..{len(self.mtp)} (config.mtp_depth)")
        module = self.mtp[k - 1]
        h = module(h_prev, self.embed(tokens), cache.mtp[k - 1] if cache is not None else None, mask, positions)
        h_norm = module.shared_head.norm(h)                                        # (B, T', C)
        logits = self.head(h_norm if last is None else h_norm[:, -last:])          # the shared head
        out = {"feed": self.feed_state(h, h_norm), "pre_norm": h, "post_norm": h_norm}[state]
        return logits, out

    def forward(self, tokens: torch.Tensor) -> MTPOutput:
        """Full-sequence forward (training, evaluation). tokens: (B, T) int64."""
        self.check_tokens(tokens)
        logits, hidden = self.forward_main(tokens)
        mtp_logits, h = [], hidden
        for k in range(1, len(self.mtp) + 1):
            # depth k pairs h^{k-1}_i with t_{i+k}: only positions i = 0..T-1-k have that token
            h = h[:, :-1]                                                          # (B, T-k, C)
            logits_k, h = self.forward_mtp(k, h, tokens[:, k:])
            mtp_logits.append(logits_k)                                            # (B, T-k, V)
        return MTPOutput(logits=logits, mtp_logits=mtp_logits, hidden=hidden)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Clear errors for inputs that would otherwise fail deep inside torch."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must be a (batch, time) tensor of ids, got "
                             f"{getattr(tokens, 'shape', type(tokens))}; use tokens[None] for one sequence")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be int64 ids, got dtype {tokens.dtype}")
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len "
                             f"{self.config.max_seq_len}; truncate the input or raise max_seq_len")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> ModelCache:
        """Empty KV caches for the main blocks and every MTP module."""
        cfg = self.config
        p = self.head.weight

        def make() -> KVCache:
            return KVCache(batch, cfg.n_heads, max_len or cfg.max_seq_len, cfg.head_dim, device=p.device,
                           dtype=p.dtype)

        return ModelCache(main=[make() for _ in self.layers], mtp=[make() for _ in self.mtp])

    def parameter_counts(self) -> dict:
        """Parameters split as DeepSeek reports them: main model, MTP modules, and the shared tensors.

        `shared` (embedding + output head) is counted once, not per module.
        """

        def n(mod: nn.Module) -> int:
            return sum(p.numel() for p in mod.parameters())

        shared = n(self.embed) + n(self.head)
        main = n(self.layers) + n(self.norm)
        per_module = [n(m) for m in self.mtp]
        return {"shared": shared, "main": main, "mtp": sum(per_module), "mtp_per_module": per_module,
                "main_with_shared": main + shared, "total": shared + main + sum(per_module)}


def is_mtp(name: str) -> bool:
    """True for a parameter or state-dict name inside the MTP modules (MTPModel.mtp: "mtp.<k-1>.<...>")."""
    return name.startswith("mtp.")


def mtp_state(state: dict[str, torch.Tensor], copy: bool = False) -> dict[str, torch.Tensor]:
    """The MTP modules' tensors of a state dict (detached copies with `copy`, e.g. to keep them past training)."""
    return {k: v.detach().clone() if copy else v for k, v in state.items() if is_mtp(k)}
