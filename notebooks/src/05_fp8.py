# %% [markdown]
# # 05 · FP8 mixed precision, DeepSeek-V3 style
#
# **You will learn**
# - the two FP8 formats (E4M3, E5M2), their range and precision, and why DeepSeek-V3 uses E4M3 everywhere;
# - why FP8 needs **scaling**, and why the scale is fine-grained: 1x128 tiles for activations, 128x128 blocks for
#   weights;
# - the accumulation problem (about 14 bits in the tensor core) and its fix, promotion to FP32 every 128 elements;
# - `FP8Linear` (all three GEMMs in E4M3) and `apply_fp8_recipe`: what goes to FP8 and what stays in BF16/FP32;
# - how much FP8 changes training, measured, and the FP8 explorer on the trained model.
#
# **Time:** about 40 minutes; Run All took 14 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.
#
# Everything here is a faithful **simulation** on the CPU: values are rounded by PyTorch's own float8 casts and
# multiplied in FP32. On a GPU with FP8 tensor cores (H100/H200) `backend="scaled_mm"` runs the same scheme on real
# FP8 GEMMs.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## The formats
#
# An 8-bit float is sign, exponent and mantissa bits. **E4M3** (4 exponent, 3 mantissa bits) is more precise,
# **E5M2** has more range. Earlier FP8 training used E4M3 forward and E5M2 for gradients; DeepSeek-V3 uses **E4M3 for
# every GEMM input** and gets the range from scaling instead. Every number below is read from `torch.finfo`.

# %% tags=["nbval-check-output"]
from mtp_lab import FORMATS

for f in FORMATS.values():
    print(f"{f.name}: max {f.max:g}, smallest normal {f.min_normal:g}, smallest subnormal {f.min_subnormal:g}, "
          f"{f.mantissa_bits} mantissa bits -> relative rounding error <= {f.rel_error_bound:.4f}")

# %% [markdown]
# What a plain cast does at the edges: E4M3 has no infinity and PyTorch's cast **saturates** (449, a million and
# even inf become 448); E5M2 sends large values to inf. And the typical relative error of rounding `randn` values:

# %% tags=["nbval-check-output"]
big = torch.tensor([300.0, 449.0, 1e6, float("inf")])
print("e4m3:", big.to(torch.float8_e4m3fn).float().tolist())
print("e5m2:", big.to(torch.float8_e5m2).float().tolist())
x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
for name, f in FORMATS.items():
    rel = ((x.to(f.dtype).float() - x).norm() / x.norm()).item()
    print(f"relative RMS error of a randn cast to {name}: {rel:.3f}")

# %% [markdown]
# ## Why scale, and how finely
#
# FP8 covers a narrow window. Values far below it underflow to zero, values above it saturate. The fix is a scale per
# group of values, computed online from the group's largest magnitude:
#
# $$s = \frac{\max|x|}{448}, \qquad q = \mathrm{E4M3}(x / s), \qquad x \approx q \cdot s$$
#
# How large is a group? One scale for the whole tensor lets a single outlier (LLM activations have a few channels
# hundreds of times larger than the rest) push every ordinary value towards underflow. DeepSeek-V3 uses **1x128
# tiles** for activations (per token, per 128 channels) and **128x128 blocks** for weights. Below: activations with
# one outlier channel, from 10x to 100 000x larger than the rest, and the error on the ordinary values.

# %% tags=["nbval-check-output"]
from mtp_lab import dequantize, quantize

ordinary = torch.ones(32, 512, dtype=torch.bool)
ordinary[:, 7] = False                                   # channel 7 will be the outlier
print("outlier x   per tensor   1x128 tiles    (relative error of the ordinary values)")
for outlier in (10.0, 1e3, 1e4, 1e5):
    acts = torch.randn(32, 512, generator=torch.Generator().manual_seed(1))
    acts[:, 7] *= outlier
    errors = []
    for gran in ("tensor", "tile"):
        q, s = quantize(acts, "e4m3", gran)             # q: float8_e4m3fn, s: float32 scale(s) per group
        errors.append(((dequantize(q, s, gran) - acts)[ordinary].norm() / acts[ordinary].norm()).item())
    print(f"{outlier:9.0e}   {errors[0]:10.3f}   {errors[1]:11.3f}")
print("tile scales for (32, 512) activations:", tuple(quantize(acts, "e4m3", "tile")[1].shape))

# %% [markdown]
# Up to an outlier of about 1000x the per-tensor scale still copes: E4M3's normal range spans
# $448 / 2^{-6} \approx 2.9 \cdot 10^4$. Beyond that the outlier sets $s$ so large that ordinary values fall into the
# subnormal range, lose their bits, then underflow to zero. With 1x128 tiles only the 127 channels that share the
# outlier's tile (per token) are affected; the token's other three tiles keep full E4M3 precision.
#
# Weights are quantized per 128x128 block, which keeps
# the scales cheap (one per block) while still adapting to different regions of the matrix:

# %% tags=["nbval-check-output"]
W = torch.randn(300, 200, generator=torch.Generator().manual_seed(2)) * 0.02   # (out, in), not multiples of 128
qw, sw = quantize(W, "e4m3", "block")
print("weight", tuple(W.shape), "-> block scales", tuple(sw.shape), "(shapes padded to 128 for the scale only)")
print("relative error:", round(((dequantize(qw, sw, "block") - W).norm() / W.norm()).item(), 3))

# %% [markdown]
# ## The GEMM and the accumulation problem
#
# `fp8_matmul(a, b)` computes $a b^\top$ the way the released kernel does: activations in tiles, the weight in
# blocks, each 128-wide chunk of $K$ multiplied in FP8 and scaled by its two scales, the partial results summed in
# FP32. Its error against the FP32 product comes only from rounding the inputs:

# %% tags=["nbval-check-output"]
from mtp_lab import fp8_matmul

a = torch.randn(64, 1024, generator=torch.Generator().manual_seed(3))
b = torch.randn(256, 1024, generator=torch.Generator().manual_seed(4)) * 0.02
exact = a @ b.T
print("fp8_matmul relative error vs fp32:", round(((fp8_matmul(a, b) - exact).norm() / exact.norm()).item(), 3))

# %% [markdown]
# But H800 tensor cores keep only about **14 bits** while accumulating an FP8 GEMM, so the error of a long sum
# grows with $K$ (the report: up to about 2% at $K = 4096$). DeepSeek-V3's fix: every $N_C = 128$ elements, copy the
# partial sum to an FP32 register and restart. `accumulation_error_vs_k` simulates the 14-bit accumulator bit by bit
# (on inputs already in E4M3, so only accumulation error is measured). A tensor core does not add one product at a
# time: one MMA instruction sums a slice of $K$ (32 products for Hopper's FP8 `wgmma`, so $N_C = 128$ is 4 of
# them), and that partial sum is what gets added into the 14-bit accumulator, truncating the bits that do not fit:
#
# $$S_g = \mathrm{trunc}_{14}\Big(S_{g-1} + \sum_{j \in \text{slice } g} a_j b_j\Big)$$

# %% tags=["nbval-check-output"]
from mtp_lab import accumulation_error_vs_k

print("    K   14-bit all K   promoted every 128   fp32 chunks < 1e-6")
for row in accumulation_error_vs_k(ks=(128, 512, 1024, 4096), m=16, n=16):
    print(f"{row['k']:5d}   {row['limited']:11.2%}   {row['promoted']:18.2%}   {row['fp32'] < 1e-6}")
one_by_one = accumulation_error_vs_k(ks=(4096,), m=16, n=16, mma_k=1)[0]
print(f"K = 4096, a truncation after every single product (mma_k=1): {one_by_one['limited']:.2%} without promotion, "
      f"{one_by_one['promoted']:.2%} promoted")

# %% [markdown]
# Without promotion the error grows with $K$; with promotion it stays at the level of a 128-long
# sum whatever $K$ is.
#
# Compare the $K = 4096$ row with the report's "nearly 2%": this model, one truncating add per 32-product MMA,
# stays far below it ({{0.17%}}). With `mma_k=1` (a truncation after every single product, the last line) it lands
# above it ({{5.25%}}).
# NVIDIA does not publish how the adder aligns and rounds, and the report does not say which inputs or which error
# measure it used, so the simulation reproduces the shape (growth with $K$, cured by promotion), not the constant.
#
# ## FP8Linear and the recipe
#
# `FP8Linear` is an `nn.Linear` whose three GEMMs (forward $y = xW^\top$, input gradient $dx = dy\,W$, weight
# gradient $dW = dy^\top x$) all take E4M3 inputs. Master weights and gradients stay in FP32 (the report keeps AdamW
# moments in BF16). It shares the original layer's parameters, so swapping it in changes nothing else:

# %% tags=["nbval-check-output"]
from mtp_lab import FP8Linear

torch.manual_seed(0)
linear = torch.nn.Linear(512, 256, bias=False)
fp8 = FP8Linear.from_linear(linear)
x = torch.randn(8, 512, requires_grad=True)
y_ref, y_fp8 = linear(x), fp8(x)
(dx_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
(dx_fp8,) = torch.autograd.grad(y_fp8.square().sum(), x)


def rel(u, v):
    return round(((u - v).norm() / v.norm()).item(), 3)


print("same Parameter object:", fp8.weight is linear.weight)
print("relative error: output", rel(y_fp8, y_ref), " input gradient", rel(dx_fp8, dx_ref))

# %% [markdown]
# `apply_fp8_recipe(model, scope)` swaps the linears of the transformer blocks (`"main"`), of the MTP modules'
# blocks (`"mtp"`), or both (`"all"`). What stays in high precision, following the report: the **embedding**, the
# **output head**, every **normalisation**, and the **attention core** (softmax of $QK^\top$ times $V$); also MoE
# gating in DeepSeek-V3. These are small in FLOPs but sensitive: the head's logits decide which tokens are drafted
# and accepted, and norms divide by statistics of the whole vector.
#
# One linear is a judgement call: the MTP projection `eh_proj`. The report's list of high-precision parts does not
# name it, so its recipe implies FP8; the released checkpoint keeps it in BF16 (it has no FP8 scales, and vLLM and
# SGLang load it as a plain linear). The package follows the checkpoint; `apply_fp8_recipe(model, "mtp",
# eh_proj_fp8=True)` follows the report.

# %% tags=["nbval-check-output"]
from mtp_lab import MTPModel, apply_fp8_recipe, get_preset

model = MTPModel(get_preset("course"))
apply_fp8_recipe(model, scope="mtp")
converted = [n for n, m in model.named_modules() if isinstance(m, FP8Linear)]
print(len(converted), "FP8Linear layers, e.g.", converted[:3])
print("config.fp8 =", model.config.fp8)
print("still high precision:", type(model.embed).__name__, type(model.head).__name__,
      type(model.layers[0].attn.wq).__name__, "(main blocks are untouched with scope='mtp')")

# %% [markdown]
# ## FP8 vs high-precision training
#
# DeepSeek-V3 reports that FP8 training stayed within 0.25% relative loss of BF16. We train a small model twice from
# the same seed on the same batches: once with every block linear (main and MTP) in simulated FP8
# (`ModelConfig(fp8="all")`), once without. The baseline runs in FP32 here, because bf16 autocast is slow on many
# CPUs; `mtp-lab fp8-bench` runs the longer BF16-vs-FP8 comparison on the course model.

# %%
from mtp_lab.data import DEFAULT_TOKENIZER, build_corpus, list_files, split_files
from mtp_lab.train import History, TrainConfig, Trainer

groups = split_files(list_files())
corpus = build_corpus(DEFAULT_TOKENIZER, files=groups["train"][:24] + groups["val"][:6])
small = get_preset("course", d_model=128, n_layers=2, n_heads=4, d_ff=344, max_seq_len=64, mtp_depth=1)
train_cfg = TrainConfig(steps=12, batch_size=8, seq_len=64, lr=3e-3, warmup=3, eval_interval=12, eval_batches=4,
                        precision="fp32", seed=0)
runs = {}
for recipe in ("none", "all"):
    runs[recipe] = History()
    Trainer(small.replace(fp8=recipe), train_cfg, corpus, callbacks=[runs[recipe]], device=device).fit()
for recipe, hist in runs.items():
    print(f"fp8={recipe:4s}: training loss per step", [round(r.loss, 3) for r in hist.steps[::3]])

# %% tags=["nbval-check-output"]
final = {recipe: hist.evals[-1][1]["main"] for recipe, hist in runs.items()}
rel = abs(final["all"] - final["none"]) / final["none"]
print(f"validation main loss: FP32 {final['none']:.2f}, FP8 {final['all']:.2f}")
print("relative difference below 1%:", rel < 0.01)

# %% [markdown]
# ## The FP8 explorer
#
# The E4M3 and E5M2 number lines (move a value and see where it rounds), the error of each scaling granularity as
# an outlier grows, the 128x128 block scales of a weight and the 1x128 tile scales of its input, and the
# accumulation error against $K$ with adjustable accumulator bits and promotion interval.
#
# **Why the heatmaps start on a synthetic layer.** The course model is 128 wide, exactly one block: every attention
# weight is a single 128x128 block (one scale), the SwiGLU weights are 3 blocks (344 = 2.7 x 128), and every token's
# input is one 1x128 tile, so on its layers the block heatmap is one or three squares and the tile heatmap a single
# column. DeepSeek-V3's layers are 7168 wide (56 tiles per token). So the menu's first entry is a wider synthetic
# layer, 512x1024 with 64 tokens: 4x8 weight blocks and 8 tiles per token, its rows and columns of different scale,
# and three outlier input channels. Look for the two tile columns that hold those channels: their scales are far
# larger, and only their own 128 values pay for it. Then pick a layer of the shipped model in the menu to see the
# single block.

# %%
from mtp_lab import load_pretrained
from mtp_lab.viz import fp8_explorer

trained, tokenizer = load_pretrained(device=device)
fp8_explorer(trained, tokenizer)

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: tile scales
# Write `tile_scales(x)` for activations `x` of shape (M, K): one E4M3 scale per row and per 128 columns (pad the
# last tile), shape (M, ceil(K/128)).

# %%
def tile_scales(x):
    # YOUR CODE HERE
    return None


check("tile_scales", tile_scales)

# %% [markdown]
# ### Exercise 2: the FP8 round trip
# Write `fake_quant(x)`: quantize `x` (M, K) to E4M3 with your tile scales and return the dequantized float32 values,
# what the FP8 GEMM actually multiplies.

# %%
def fake_quant(x):
    # YOUR CODE HERE
    return None


check("fake_quant", fake_quant)

# %% [markdown]
# ## Summary
#
# - E4M3 (max 448, 3 mantissa bits) for every GEMM input; range comes from per-group scales $s = \max|x|/448$.
# - Fine-grained groups (1x128 activation tiles, 128x128 weight blocks) stop outliers from wiping out ordinary values.
# - FP8 tensor cores accumulate with about 14 bits; promoting partial sums to FP32 every 128 elements fixes it.
# - The embedding, output head, norms and attention core stay in BF16/FP32; master weights and gradients in FP32.
#
# **Next:** [06 · Speculative decoding](06_speculative_decoding.ipynb).

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
import torch.nn.functional as F


def tile_scales(x):
    M, K = x.shape
    n_tiles = -(-K // 128)                                           # ceil(K / 128)
    tiles = F.pad(x, (0, n_tiles * 128 - K)).view(M, n_tiles, 128)    # (M, n_tiles, 128)
    return tiles.abs().amax(dim=-1) / 448.0


check("tile_scales", tile_scales)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def fake_quant(x):
    s = tile_scales(x).repeat_interleave(128, dim=1)[:, :x.shape[1]]  # one scale per element
    return (x / s).to(torch.float8_e4m3fn).float() * s


check("fake_quant", fake_quant)
