"""FP8Linear and DeepSeek-V3's FP8 mixed-precision recipe (report section 3.3, Figure 6).

All three GEMMs of a linear layer y = x W^T take E4M3 inputs and accumulate in FP32:
    Fprop   y  = x  W^T     x: 1x128 tiles (per token),       W: 128x128 blocks
    Dgrad   dx = dy W       dy: 1x128 tiles (per token),      W: the same 128x128 blocks, transposed
    Wgrad   dW = dy^T x     dy and x re-quantized in 128x1 tiles (along tokens, the GEMM's K); x is the
                            FP8 activation cached by the forward, dequantized and transposed first
Master weights, their gradients and the layer's output stay in high precision (FP32 here, or the
input's dtype under autocast). `apply_fp8_recipe` puts FP8Linear into the transformer blocks (the main
model's, the MTP modules', or both) and leaves the embedding, output head, norms and attention core
(softmax(QK^T)V) alone. The MTP projection `eh_proj` also stays in high precision by default, as in the
released DeepSeek-V3 checkpoint (BF16, no `weight_scale_inv`; vLLM and SGLang load it as a plain Linear);
`eh_proj_fp8=True` quantizes it too, which is what the report's recipe implies: eh_proj is a GEMM, and its
list of components kept in high precision (embedding, output head, MoE gating, norms, attention) omits it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .config import FP8Recipe, check_choice
from .fp8 import Backend, ScaleMode, chunk_scales, dequantize, quant_stats, quantize, scaled_matmul

BLOCK_LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3")


def _fp8_gemm(qa, sa, qb, sb, b_granularity: str, layer: "FP8Linear") -> torch.Tensor:
    """(M, K) x (N, K)^T with a's tile scales and b's tile/block scales; fp32 (M, N)."""
    (M, K), N = qa.shape, qb.shape[0]
    return scaled_matmul(qa, chunk_scales(sa, "tile", M, K, layer.block_size), qb,
                         chunk_scales(sb, b_granularity, N, K, layer.block_size), layer.block_size, layer.backend)


class FP8LinearFunction(torch.autograd.Function):
    """y = x W^T (+ b) with Fprop, Dgrad and Wgrad all on E4M3-quantized inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        K, N = weight.shape[1], weight.shape[0]
        x2 = x.reshape(-1, K)                                                       # (M, K)
        with torch.autocast(x.device.type, enabled=False):
            qx, sx = quantize(x2, "e4m3", "tile", layer.block_size, layer.scale)    # 1x128 tiles
            qw, sw = quantize(weight, "e4m3", "block", layer.block_size, layer.scale)  # 128x128 blocks
            # Fprop: y = x W^T
            y = _fp8_gemm(qx, sx, qw, sw, "block", layer)                            # (M, N) fp32
            if layer.record_stats:
                ref = x2.float() @ weight.float().t()                                # the fp32 GEMM
                layer.stats = {"input": quant_stats(x2, qx, sx, "tile", layer.block_size),
                               "weight": quant_stats(weight, qw, sw, "block", layer.block_size),
                               "output_rel_error": float((y - ref).norm() / ref.norm().clamp_min(1e-30))}
            if bias is not None:
                y = y + bias.float()
        ctx.save_for_backward(qx, sx, qw, sw)          # the activation is cached in FP8, as in the report
        ctx.layer, ctx.has_bias = layer, bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return y.to(x.dtype).reshape(*x.shape[:-1], N)

    @staticmethod
    def backward(ctx, dy):
        qx, sx, qw, sw = ctx.saved_tensors
        layer = ctx.layer
        N, K = qw.shape
        dx = dw = db = None
        with torch.autocast(dy.device.type, enabled=False):
            dy2 = dy.reshape(-1, N).float()                                            # (M, N)
            if ctx.needs_input_grad[0]:
                # Dgrad: dx = dy W, reducing over N: dy in 1x128 tiles, W^T's blocks are W's transposed
                qg, sg = quantize(dy2, "e4m3", "tile", layer.block_size, layer.scale)
                dx = _fp8_gemm(qg, sg, qw.t(), sw.t(), "block", layer)                # (M, K)
                dx = dx.to(ctx.x_dtype).reshape(ctx.x_shape)
                if layer.record_stats:
                    layer.stats["grad_output"] = quant_stats(dy2, qg, sg, "tile", layer.block_size)
            if ctx.needs_input_grad[1]:
                # Wgrad: dW = dy^T x, reducing over tokens: both re-quantized in 128x1 tiles
                x_cached = dequantize(qx, sx, "tile", layer.block_size)                # (M, K)
                qgT, sgT = quantize(dy2.t(), "e4m3", "tile", layer.block_size, layer.scale)       # (N, M)
                qxT, sxT = quantize(x_cached.t(), "e4m3", "tile", layer.block_size, layer.scale)  # (K, M)
                dw = _fp8_gemm(qgT, sgT, qxT, sxT, "tile", layer).to(ctx.w_dtype)     # (N, K)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = dy2.sum(0)
        return dx, dw, db, None


class FP8Linear(nn.Linear):
    """nn.Linear whose three GEMMs run in simulated (or, with backend="scaled_mm", real) FP8.

    Same parameters and state_dict keys as nn.Linear; `from_linear` shares the original's
    Parameters, so optimizers and checkpoints are unaffected by the swap.
    Set `record_stats = True` to keep the last forward's (and backward's) quantization statistics
    in `self.stats`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, block_size: int = 128,
                 scale: ScaleMode = "amax", backend: Backend = "dequant", device=None, dtype=None):
        check_choice("FP8Linear backend", backend, Backend)
        check_choice("FP8Linear scale", scale, ScaleMode)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.block_size, self.scale, self.backend = block_size, scale, backend
        self.record_stats = False
        self.stats: dict = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, **fp8_kwargs) -> "FP8Linear":
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device="meta", **fp8_kwargs)
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FP8LinearFunction.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8=e4m3, block_size={self.block_size}, scale={self.scale}, " \
               f"backend={self.backend}"


def _targets(model: nn.Module, scope: FP8Recipe, eh_proj_fp8: bool) -> list[str]:
    """Qualified names of the linears the recipe converts for `scope`."""
    check_choice("FP8 scope", scope, FP8Recipe, " (main blocks, MTP modules, or both)")
    names = []
    if scope in ("main", "all"):
        names += [f"layers.{i}.{lin}" for i in range(len(model.layers)) for lin in BLOCK_LINEARS]
    if scope in ("mtp", "all"):
        for k in range(len(model.mtp)):
            names += ([f"mtp.{k}.eh_proj"] if eh_proj_fp8 else []) + [f"mtp.{k}.block.{lin}" for lin in BLOCK_LINEARS]
    return names


def apply_fp8_recipe(model: nn.Module, scope: FP8Recipe = "mtp", inplace: bool = True, eh_proj_fp8: bool = False,
                     **fp8_kwargs) -> nn.Module:
    """Swap the block linears of an MTPModel for FP8Linear, DeepSeek-V3 style.

    scope "main": the main model's blocks; "mtp": each MTP module's block; "all": both.
    Embedding, output head, every RMSNorm and the attention core stay in high precision, and so does each
    MTP module's eh_proj unless eh_proj_fp8=True (the released checkpoint keeps it in BF16).
    inplace=False converts a deep copy (e.g. an FP8 drafter next to a full-precision target).
    `model.config.fp8` is updated to describe the result (it does not record eh_proj_fp8: a model rebuilt
    from its config keeps eh_proj in high precision). Returns the converted model.
    """
    if not isinstance(eh_proj_fp8, bool):
        raise ValueError(f"eh_proj_fp8 must be True or False, got {eh_proj_fp8!r}")
    if not inplace:
        model = copy.deepcopy(model)
    for name in _targets(model, scope, eh_proj_fp8):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        if not isinstance(linear, FP8Linear):
            setattr(parent, attr, FP8Linear.from_linear(linear, **fp8_kwargs))
    main, mtp = (any(isinstance(m, FP8Linear) for m in part.modules()) for part in (model.layers, model.mtp))
    model.config = model.config.replace(fp8={(True, True): "all", (True, False): "main",
                                             (False, True): "mtp", (False, False): "none"}[(main, mtp)])
    return model


def fp8_layers(model: nn.Module) -> dict[str, FP8Linear]:
    """Every FP8Linear in the model, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FP8Linear)}


def record_fp8_stats(model: nn.Module, enabled: bool = True) -> int:
    """Turn per-layer statistics on or off for every FP8Linear; returns how many layers it touched."""
    layers = fp8_layers(model)
    for layer in layers.values():
        layer.record_stats = enabled
        if not enabled:
            layer.stats = {}
    return len(layers)


def fp8_stats(model: nn.Module) -> dict[str, dict]:
    """The last recorded statistics of every FP8Linear that has some: {name: {"input", "weight",
    "output_rel_error", and after a backward "grad_output"}}. Call record_fp8_stats(model) first."""
    return {name: layer.stats for name, layer in fp8_layers(model).items() if layer.stats}
