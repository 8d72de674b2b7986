"""The building blocks: RMSNorm, rotary embeddings, a KV cache, causal attention, SwiGLU, a pre-norm block.

The main model and every MTP module are made of these same pieces.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain (no mean subtraction, no bias).

    RMSNorm(x) = g * x / sqrt(mean_j(x_j^2) + eps)
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # the gain g, one per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        # x / sqrt(mean(x^2) + eps), computed in fp32 whatever the input dtype
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE): rotates each (x_j, x_{j+d/2}) pair by angle pos * theta^(-2j/d)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)    # (S, hd/2)
        angles = torch.cat([angles, angles], dim=-1)                                        # (S, hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def tables(self, start: int, T: int, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T, hd), for absolute positions start..start+T-1, or for `positions` (T,) when given (a
        tree of drafts: each node sits at the prefix length plus its depth). A caller looks them up once per forward
        and hands them to every layer."""
        pos = slice(start, start + T) if positions is None else positions
        return self.cos[pos], self.sin[pos]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, hd) rotated by the tables of its T positions."""
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin

    def forward(self, x: torch.Tensor, start: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, T, hd) at absolute positions start..start+T-1, or at `positions` (T,) when given."""
        return self.rotate(x, *self.tables(start, x.shape[-2], positions))


class KVCache:
    """Keys and values of one attention layer for positions 0..length-1, in preallocated buffers.

    `truncate(n)` forgets every position >= n: this is how speculative decoding rolls back
    rejected draft tokens.
    """

    def __init__(self, batch: int, n_heads: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        self.k = torch.zeros(batch, n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T_new, hd) after the cached positions; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions requested, capacity {self.max_len} "
                             f"(ModelConfig.max_seq_len); generate fewer tokens or raise max_seq_len")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of length {self.length} to {length}")
        self.length = length


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """Lower-RIGHT aligned causal mask (True = may attend), shape (n_queries, n_keys).

    The queries are the LAST n_queries positions of the key sequence, so query i sits at absolute
    position n_keys - n_queries + i and sees keys 0..that position. (`is_causal=True` in
    F.scaled_dot_product_attention aligns top-left, which is wrong when n_queries < n_keys.)
    """
    offset = n_keys - n_queries
    q_pos = torch.arange(n_queries, device=device)[:, None] + offset
    k_pos = torch.arange(n_keys, device=device)[None, :]
    return k_pos <= q_pos


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """attn_mask (T, start + T), True = may attend (or its additive form: 0 or -inf, as MTPModel.forward_main
        passes it): the causal_mask of this call when the caller built it once for all its layers, or a tree mask
        (each draft sees the prefix and its ancestors); rope: the (cos, sin)
        tables of this call's positions (RotaryEmbedding.tables; a tree's come from its position ids), looked up
        here from the cache length when not given."""
        B, T, C = x.shape
        start = cache.length if cache is not None else 0
        cos, sin = rope if rope is not None else self.rope.tables(start, T)
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = self.wv(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        q, k = self.rope.rotate(q, cos, sin), self.rope.rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)                                           # (B, H, start+T, hd)
        if attn_mask is not None:  # the caller's mask: a chain after a cached prefix, or a tree
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        elif k.shape[2] == T:      # no earlier positions: the ordinary square causal mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:               # one new query sees every cached key
            y = F.scaled_dot_product_attention(q, k, v)
        else:                      # several new queries after a cached prefix: lower-right mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.shape[2], x.device))
        return self.wo(y.transpose(1, 2).reshape(B, T, C))                      # (B, T, C)


class SwiGLU(nn.Module):
    """Feed-forward FFN(x) = W2 (SiLU(W1 x) * W3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: h = x + Attn(RMSNorm(x)); out = h + FFN(RMSNorm(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, attn_mask, rope)
        return x + self.ffn(self.ffn_norm(x))
