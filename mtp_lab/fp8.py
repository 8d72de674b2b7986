"""FP8 numbers as DeepSeek-V3 uses them (report section 3.3): formats, fine-grained scaling, the GEMM.

Everything here is a faithful *simulation*: values are rounded to FP8 by torch's own casts
(torch.float8_e4m3fn / torch.float8_e5m2, round-to-nearest-even), scaled per group, and multiplied in
FP32. On GPUs that have FP8 tensor cores (compute capability >= 8.9) `scaled_matmul(...,
backend="scaled_mm")` runs the same scheme on real FP8 GEMMs (torch._scaled_mm).

Scaling (online, from the group's max absolute value):
    s = amax / fmt.max          ("amax")   or   s = 2^ceil(log2(amax / fmt.max))   ("pow2", ue8m0)
    q = cast_fp8(clamp(x / s, -fmt.max, fmt.max)),   x ~= q * s
Groups: "tensor" (one scale), "tile" (1 x 128 along the last dim: activations, per token per 128
channels), "block" (128 x 128 of a 2-D weight). Shapes that are not multiples of the group are
zero-padded for the scale computation only. All-zero groups: amax is clamped to >= amax_floor (1e-4,
as in DeepSeek's later kernels), so their scale is finite and they quantize to exact zeros; amax_floor
must therefore be finite and > 0 (at least the smallest normal float32): 0 would give scale 0 and
0/0 = NaN, so it is refused.
NaN or inf inputs raise ValueError: a scale computed from them would silently poison the whole group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .config import check_choice, check_int

Granularity = Literal["tensor", "tile", "block"]     # one scale per tensor, per 1 x 128 tile, per 128 x 128 block
ScaleMode = Literal["amax", "pow2"]                  # s = amax / max, or its next power of two
Backend = Literal["dequant", "chunked", "scaled_mm"]  # how scaled_matmul computes (its docstring)
AMAX_FLOOR = 1e-4
MAX_BLOCK_SIZE = 2 ** 12    # 32x DeepSeek's 128; a larger block only pads (2^31 padded every row out of memory)


@dataclass(frozen=True)
class FP8Format:
    """One 8-bit float format; every number is read from torch.finfo of its dtype."""
    name: str
    dtype: torch.dtype
    max: float            # largest finite value (saturation point)
    min_normal: float     # smallest positive normal value
    min_subnormal: float  # smallest positive value; anything below half of it rounds to 0
    mantissa_bits: int    # explicit fraction bits (3 for E4M3, 2 for E5M2)

    @property
    def rel_error_bound(self) -> float:
        """Round-to-nearest error bound for values in the normal range: half an ulp, |e| <= 2^-(m+1)."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def top_ulp(self) -> float:
        """Spacing of the largest binade: 32 for E4M3 (416 -> 448), 8192 for E5M2."""
        return 2.0 ** (math.floor(math.log2(self.max)) - self.mantissa_bits)

    @classmethod
    def from_dtype(cls, name: str, dtype: torch.dtype) -> "FP8Format":
        fi = torch.finfo(dtype)
        return cls(name, dtype, float(fi.max), float(fi.smallest_normal),
                   float(fi.smallest_normal * fi.eps), int(round(-math.log2(fi.eps))))


FORMATS: dict[str, FP8Format] = {
    "e4m3": FP8Format.from_dtype("e4m3", torch.float8_e4m3fn),  # max 448, no inf: DeepSeek-V3's only format
    "e5m2": FP8Format.from_dtype("e5m2", torch.float8_e5m2),    # max 57344, has inf: earlier works' backward
}


def get_format(fmt: str | FP8Format) -> FP8Format:
    if isinstance(fmt, FP8Format):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown FP8 format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def _check(granularity: Granularity, block_size: int) -> None:
    check_choice("granularity", granularity, Granularity)
    check_int("block_size", block_size, minimum=1, maximum=MAX_BLOCK_SIZE,
              note=" (DeepSeek-V3 uses 128; every row is zero-padded to a multiple of it)")


def _pad(x: torch.Tensor, pads: tuple[int, ...]) -> torch.Tensor:
    return F.pad(x, pads) if any(pads) else x


def _groups(x: torch.Tensor, granularity: Granularity, block_size: int) -> torch.Tensor:
    """Zero-pad x and view it as groups: tensor (1, n); tile (..., nK, bs); block (nN, bs, nK, bs)."""
    if granularity == "tensor":
        return x.reshape(1, -1)
    K, bs = x.shape[-1], block_size
    nK = -(-K // bs)
    if granularity == "tile":
        return _pad(x, (0, nK * bs - K)).reshape(*x.shape[:-1], nK, bs)
    if x.dim() != 2:
        raise ValueError(f"block granularity is for 2-D weights (out, in), got shape {tuple(x.shape)}; "
                         f"use granularity='tile' for activations")
    N = x.shape[0]
    nN = -(-N // bs)
    return _pad(x, (0, nK * bs - K, 0, nN * bs - N)).reshape(nN, bs, nK, bs)


def _ungroup(g: torch.Tensor, shape: torch.Size, granularity: Granularity) -> torch.Tensor:
    """Inverse of _groups: back to the original (unpadded) shape."""
    if granularity == "tensor":
        return g.reshape(shape)
    if granularity == "tile":
        return g.flatten(-2)[..., :shape[-1]]
    return g.flatten(2).flatten(0, 1)[:shape[0], :shape[1]]


def _group_dims(granularity: Granularity) -> tuple[int, ...]:
    return {"tensor": (-1,), "tile": (-1,), "block": (1, 3)}[granularity]


def _scale_view(scale: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Give a per-group scale the singleton dims that broadcast it against the grouped view."""
    if granularity == "block":
        return scale[:, None, :, None]
    return scale.reshape(1, 1) if granularity == "tensor" else scale[..., None]


def _check_finite(amax: torch.Tensor) -> None:
    # max() propagates NaN and inf, so checking the per-group amax checks every element
    if not torch.isfinite(amax).all():
        raise ValueError("FP8 quantize: input contains NaN or inf; FP8 scaling needs finite values "
                         "(check the loss/gradients upstream, or lower the learning rate)")


def compute_scale(amax: torch.Tensor, fmt: str | FP8Format = "e4m3", scale: ScaleMode = "amax",
                  amax_floor: float = AMAX_FLOOR) -> torch.Tensor:
    """Scale from a group's max |x|:  s = max(amax, floor) / fmt.max, or its next power of two ("pow2").

    amax_floor (finite, >= the smallest normal float32) keeps every scale finite and nonzero, so all-zero
    groups quantize to exact zeros.
    """
    f = get_format(fmt)
    check_choice("scale mode", scale, ScaleMode)
    fi = torch.finfo(torch.float32)                 # a normal float32: smaller floors underflow s to 0
    if isinstance(amax_floor, bool) or not isinstance(amax_floor, (int, float)) or not fi.tiny <= amax_floor <= fi.max:
        raise ValueError(f"amax_floor must be a finite number >= {fi.tiny:.3g} (default {AMAX_FLOOR}, as in DeepSeek's "
                         f"kernels), got {amax_floor!r}: with 0 an all-zero group gets scale 0 and 0/0 = NaN")
    _check_finite(amax)
    s = amax.float().clamp_min(amax_floor) / f.max
    # pow2: s = 2^ceil(log2(amax / max)) >= amax / max, so amax / s <= max still holds
    return torch.exp2(torch.ceil(torch.log2(s))) if scale == "pow2" else s


def quantize(x: torch.Tensor, fmt: str | FP8Format = "e4m3", granularity: Granularity = "tensor",
             block_size: int = 128, scale: ScaleMode | float = "amax", amax_floor: float = AMAX_FLOOR
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (q in fmt's float8 dtype with x's shape, float32 scale per group).

    Scale shapes: tensor (); tile (*x.shape[:-1], ceil(K/bs)); block (ceil(N/bs), ceil(K/bs)).
    `scale` may also be a fixed positive number (a delayed/static scale): values beyond
    fmt.max * scale then saturate to +-fmt.max, which online amax scaling never does.
    """
    f = get_format(fmt)
    _check(granularity, block_size)
    g = _groups(x.float(), granularity, block_size)
    amax = g.abs().amax(dim=_group_dims(granularity))                       # one per group
    if isinstance(scale, str):
        s = compute_scale(amax, f, scale, amax_floor)
    else:
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be 'amax', 'pow2' or a positive finite number, got {scale!r}")
        _check_finite(amax)
        s = torch.full_like(amax, float(scale))
    # explicit saturation at +-max BEFORE the cast (e5m2 would otherwise turn large values into inf)
    q = (g / _scale_view(s, granularity)).clamp_(-f.max, f.max).to(f.dtype)
    return _ungroup(q, x.shape, granularity), (s.reshape(()) if granularity == "tensor" else s)


def expand_scale(scale: torch.Tensor, shape: torch.Size, granularity: Granularity, block_size: int = 128
                 ) -> torch.Tensor:
    """The per-group scale repeated to one value per element of a tensor of `shape`."""
    _check(granularity, block_size)
    if granularity == "tensor":
        return scale.expand(shape)
    if granularity == "tile":
        return scale.repeat_interleave(block_size, dim=-1)[..., :shape[-1]]
    return scale.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)[:shape[0], :shape[1]]


def dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: Granularity = "tensor", block_size: int = 128
               ) -> torch.Tensor:
    """x ~= q * s, in float32 (float8 arithmetic is not implemented on CPU: always compute in fp32)."""
    _check(granularity, block_size)
    g = _groups(q.float(), granularity, block_size) * _scale_view(scale, granularity)
    return _ungroup(g, q.shape, granularity)


def fake_quantize(x: torch.Tensor, fmt: str | FP8Format = "e4m3", granularity: Granularity = "tensor",
                  block_size: int = 128, scale: ScaleMode | float = "amax") -> torch.Tensor:
    """dequantize(quantize(x)): what the FP8 GEMM actually sees, in float32."""
    q, s = quantize(x, fmt, granularity, block_size, scale)
    return dequantize(q, s, granularity, block_size)


# ----------------------------------------------------------------------------- the GEMM

def chunk_scales(scale: torch.Tensor, granularity: Granularity, rows: int, k: int, block_size: int = 128
                 ) -> torch.Tensor:
    """Scales as the GEMM kernel reads them: one per (row, 128-wide K chunk), shape (rows, ceil(K/bs)).

    A tile scale already is that (after flattening leading dims); a 128x128 block scale is shared by
    the block's 128 rows; a tensor scale by everything.
    """
    nK = -(-k // block_size)
    if granularity == "tensor":
        return scale.reshape(1, 1).expand(rows, nK)
    if granularity == "tile":
        return scale.reshape(rows, nK)
    return scale.repeat_interleave(block_size, 0)[:rows]


def scaled_matmul(qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor,
                  block_size: int = 128, backend: Backend = "dequant") -> torch.Tensor:
    """C = A B^T from FP8 operands qa (M, K), qb (N, K) and chunk scales sa (M, nK), sb (N, nK); fp32 (M, N).

    The released kernel's scheme, chunk c = K columns c*bs .. (c+1)*bs - 1:
        C = sum_c  sa[:, c] sb[:, c]^T * (qa_c qb_c^T)        every partial product promoted to FP32
    backend "chunked": that sum literally, one partial product per chunk.
            "dequant": (qa * sa) (qb * sb)^T as ONE fp32 matmul -- the same value in exact arithmetic,
                       differing only in fp32 rounding; the fast CPU simulation used for training.
            "scaled_mm": each partial product on real FP8 tensor cores (torch._scaled_mm, fp32 output),
                       then scaled and accumulated in FP32 like the kernel.
    """
    check_choice("backend", backend, Backend)
    (M, K), N, nK = qa.shape, qb.shape[0], sa.shape[1]
    if backend == "dequant":
        a = dequantize(qa, sa, "tile", block_size)                                 # (M, K)
        b = dequantize(qb, sb, "tile", block_size)                                 # (N, K)
        return a @ b.t()                                                            # (M, N)
    out = torch.zeros(M, N, device=qa.device, dtype=torch.float32)
    for c in range(nK):
        cols = slice(c * block_size, min((c + 1) * block_size, K))
        if backend == "chunked":
            partial = qa[:, cols].float() @ qb[:, cols].float().t()                # (M, N), exact products
        else:
            partial = _scaled_mm_chunk(qa[:, cols], qb[:, cols])
        out += sa[:, c, None] * sb[None, :, c] * partial                            # FP32 accumulation
    return out


def _scaled_mm_chunk(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """qa (M, k) @ qb (N, k)^T on FP8 GEMM hardware with unit scales, FP32 output.

    torch._scaled_mm wants mat1 row-major, mat2 column-major and every dimension a multiple of 16, so
    the chunk is zero-padded (exactly representable) and the result cropped.
    """
    (M, k), N = qa.shape, qb.shape[0]

    def pad(t: torch.Tensor, rows: int) -> torch.Tensor:                  # (rows, k) -> multiples of 16
        return F.pad(t.float(), (0, -k % 16, 0, -rows % 16)).to(qa.dtype).contiguous()

    one = torch.ones((), device=qa.device, dtype=torch.float32)
    y = torch._scaled_mm(pad(qa, M), pad(qb, N).t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    return y[:M, :N]


def scaled_mm_available(device: torch.device | str | None = None) -> bool:
    """True on CUDA GPUs with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper, Blackwell)."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, fmt: str | FP8Format = "e4m3", block_size: int = 128,
               scale: ScaleMode = "amax", backend: Backend = "chunked") -> torch.Tensor:
    """a (..., K) @ b (N, K)^T -> (..., N) fp32, with DeepSeek-V3's fine-grained FP8 scaling.

    a: activations, quantized per 1 x 128 tile; b: a weight (out, in), quantized per 128 x 128 block.
    """
    if b.dim() != 2 or a.shape[-1] != b.shape[1]:
        raise ValueError(f"fp8_matmul computes a @ b.T: need a (..., K) and b (N, K), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    K, lead = a.shape[-1], a.shape[:-1]
    qa, sa = quantize(a.reshape(-1, K), fmt, "tile", block_size, scale)
    qb, sb = quantize(b, fmt, "block", block_size, scale)
    y = scaled_matmul(qa, sa, qb, chunk_scales(sb, "block", b.shape[0], K, block_size), block_size, backend)
    return y.reshape(*lead, b.shape[0])


def quant_stats(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, granularity: Granularity,
                block_size: int = 128, fmt: str | FP8Format = "e4m3") -> dict:
    """What quantization did to x: the numbers the FP8 visualizer shows.

    amax; scale (per group, on CPU) and its range; underflow = share of NONZERO values that became 0;
    saturated = share with |x / s| > max + top_ulp / 2, i.e. clipped by more than rounding would have
    moved them (0 under online amax scaling by construction; nonzero with a fixed or stale scale);
    rel_error = ||dequantize(q) - x|| / ||x||.
    """
    f = get_format(fmt)
    x = x.detach().float()
    s_full = expand_scale(scale, x.shape, granularity, block_size)
    x_hat = q.float() * s_full
    nonzero = x != 0
    return {
        "amax": float(x.abs().max()) if x.numel() else 0.0,
        "scale": scale.detach().float().cpu(),
        "scale_min": float(scale.min()), "scale_max": float(scale.max()),
        "underflow": float(((x_hat == 0) & nonzero).sum() / nonzero.sum().clamp_min(1)),
        "saturated": float(((x / s_full).abs() > f.max + f.top_ulp / 2).float().mean()),
        "rel_error": float((x_hat - x).norm() / x.norm().clamp_min(torch.finfo(torch.float32).tiny)),
    }


# ----------------------------------------------------------------------------- accumulation precision

def round_to_bits(x: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Keep `mantissa_bits` fraction bits of each float64 significand and drop the rest (toward zero).

    An IEEE double is sign | 11-bit exponent | 52 fraction bits, sign-magnitude: clearing the lowest
    52 - mantissa_bits fraction bits truncates |x| and keeps the sign, i.e. rounds toward zero.
    """
    if x.dtype != torch.float64 or not 0 <= mantissa_bits <= 52:
        raise ValueError(f"round_to_bits needs float64 input and 0 <= mantissa_bits <= 52, got {x.dtype}, "
                         f"{mantissa_bits}")
    return (x.view(torch.int64) & ~((1 << (52 - mantissa_bits)) - 1)).view(torch.float64)


MMA_K = 32   # K of one Hopper FP8 tensor-core instruction: wgmma.mma_async m64nNk32 (e4m3/e5m2), as Ada's mma k32


def limited_precision_matmul(a: torch.Tensor, b: torch.Tensor, mantissa_bits: int = 14,
                             promote_every: int | None = 128, mma_k: int = MMA_K) -> torch.Tensor:
    """C = a (M, K) @ b (N, K)^T summed the way an FP8 tensor core does; fp32 (M, N).

    One tensor-core instruction (MMA) reduces a K slice of `mma_k` products, and its partial sum is added
    to the running accumulator, which keeps only ~14 fraction bits (H800, report section 3.3): the bits
    shifted out while aligning the addends are lost, modelled as round-toward-zero after every such add,
        S_g = round_to_bits(S_{g-1} + sum_{j in slice g} a_j b_j)       (the slice's sum exact)
    mma_k = 32 is the K of Hopper's FP8 instruction (wgmma m64nNk32); mma_k = 1 truncates after every
    scalar product, a pessimistic bound. The hardware's internal adder is not published: this is a model.
    promote_every = N_C: every N_C products the partial sum is copied to an FP32 register accumulator and
    restarted (DeepSeek-V3: N_C = 128, i.e. 4 MMAs); None: all K products stay in the tensor core. Slices
    never straddle a promotion (a chunk shorter than mma_k is one slice).
    Computed in float64 so that the only rounding is the one being modelled; all chunks run at once.
    """
    (M, K), N = a.shape, b.shape[0]
    L = K if promote_every is None else promote_every
    if not isinstance(L, int) or L <= 0:
        raise ValueError(f"promote_every must be a positive number of K elements or None, got {promote_every!r}")
    check_int("mma_k", mma_k, minimum=1, note=f" (K of one tensor-core MMA, {MMA_K} on Hopper)")
    G = min(mma_k, L)
    nC, nG = -(-K // L), -(-L // G)

    def slices(x: torch.Tensor) -> torch.Tensor:                         # (R, K) -> (R, nC, nG, G)
        chunks = F.pad(x.double(), (0, nC * L - K)).reshape(x.shape[0], nC, L)   # zero padding adds nothing
        return F.pad(chunks, (0, nG * G - L)).reshape(x.shape[0], nC, nG, G)

    partial = torch.einsum("mcgj,ncgj->gcmn", slices(a), slices(b))          # (nG, nC, M, N): one per MMA
    acc = torch.zeros(nC, M, N, dtype=torch.float64, device=a.device)
    for g in range(nG):  # sequential inside a chunk, every chunk at once
        acc = round_to_bits(acc + partial[g], mantissa_bits)                  # (nC, M, N)
    out = torch.zeros(M, N, dtype=torch.float32, device=a.device)
    for c in range(nC):  # promotion: FP32 additions of the chunk partial sums
        out += acc[c].float()
    return out


def accumulation_error_vs_k(ks=(128, 256, 512, 1024, 2048, 4096), m: int = 32, n: int = 32,
                            mantissa_bits: int = 14, promote_every: int = 128, seed: int = 0,
                            mma_k: int = MMA_K) -> list[dict]:
    """Relative error ||C - C_exact||_F / ||C_exact||_F of an FP8 GEMM's accumulation, against K.

    Inputs: randn activations (1x128 tiles) and weights (128x128 blocks), quantized to E4M3; C_exact
    is the float64 product of the SAME quantized values, so only accumulation error is measured.
    Columns: "limited" (all K in the ~14-bit accumulator), "promoted" (FP32 promotion every N_C),
    "fp32" (the released kernel: per-chunk scaled partial products summed in FP32); mma_k as in
    limited_precision_matmul.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in ks:
        a, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        qa, sa = quantize(a, "e4m3", "tile")
        qb, sb = quantize(b, "e4m3", "block")
        a_hat, b_hat = dequantize(qa, sa, "tile"), dequantize(qb, sb, "block")
        exact = a_hat.double() @ b_hat.double().t()
        results = {"limited": limited_precision_matmul(a_hat, b_hat, mantissa_bits, None, mma_k),
                   "promoted": limited_precision_matmul(a_hat, b_hat, mantissa_bits, promote_every, mma_k),
                   "fp32": scaled_matmul(qa, sa, qb, chunk_scales(sb, "block", n, k), backend="chunked")}
        rows.append({"k": k, **{name: float((c.double() - exact).norm() / exact.norm())
                                for name, c in results.items()}})
    return rows
