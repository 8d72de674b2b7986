# %% [markdown]
# # 02 · RMSNorm: the normalisation inside every block and every MTP module
#
# **You will learn**
# - the RMSNorm formula, built inline in three lines, and checked against `mtp_lab.RMSNorm` and `torch.nn.RMSNorm`;
# - its properties: unit RMS, scale invariance, what `eps` does near zero, why it is computed in fp32;
# - how it differs from LayerNorm, and where the MTP module uses it (`enorm`, `hnorm`, `shared_head.norm`);
# - what the norms of the trained course model actually see, in the statistics dashboard.
#
# **Time:** about 20 minutes; Run All took 9 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## The formula
#
# For a vector $x \in \mathbb{R}^d$ (one token's hidden state) and a learned gain $g \in \mathbb{R}^d$:
#
# $$\mathrm{RMSNorm}(x) = g \odot \frac{x}{\sqrt{\frac{1}{d}\sum_j x_j^2 + \epsilon}}$$
#
# No mean is subtracted and there is no bias: it only rescales each token's vector to unit root-mean-square, then
# lets the model choose a per-channel gain. Written inline, with the shapes:

# %%
def rms_norm_inline(x, g, eps=1e-6):
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)   # (B, T, 1): one RMS per token
    return g * x / rms                                             # (B, T, C)


torch.manual_seed(0)
x = torch.randn(2, 5, 16) * 3 + 0.5     # (B, T, C): 2 sequences, 5 tokens, d = 16
g = torch.rand(16) + 0.5                # the gain, one per channel

# %% [markdown]
# Now the package's version (the one every block and MTP module uses) and PyTorch's own `torch.nn.RMSNorm`, loaded
# with the same gain. All three must agree.

# %% tags=["nbval-check-output"]
from mtp_lab import RMSNorm

ours = RMSNorm(16, eps=1e-6)
theirs = torch.nn.RMSNorm(16, eps=1e-6)
with torch.no_grad():
    ours.weight.copy_(g)
    theirs.weight.copy_(g)
    y_inline, y_pkg, y_torch = rms_norm_inline(x, g), ours(x), theirs(x)
print("output shape:", tuple(y_inline.shape))
print("inline == mtp_lab.RMSNorm :", torch.allclose(y_inline, y_pkg, atol=1e-6))
print("inline == torch.nn.RMSNorm:", torch.allclose(y_inline, y_torch, atol=1e-6))

# %% [markdown]
# ## What it does to a vector
#
# Three properties worth seeing with numbers:
# 1. With $g = 1$, every token comes out with RMS 1. ($\epsilon$ pulls it below 1 only for inputs whose RMS is near
#    $\sqrt{\epsilon} = 10^{-3}$: invisible here, at 4 decimals, for these inputs of RMS about 3; the next table shows it.)
# 2. **Scale invariance:** $\mathrm{RMSNorm}(c\,x) = \mathrm{RMSNorm}(x)$ for any $c > 0$. The residual stream can
#    grow through the layers without the next block's input growing with it.
# 3. **No shift invariance:** adding a constant to every channel changes the output (LayerNorm would remove it).

# %% tags=["nbval-check-output"]
unit = torch.ones(16)
y = rms_norm_inline(x, unit)
print("RMS per token after RMSNorm:", y.pow(2).mean(-1).sqrt()[0].numpy().round(4))
print("RMSNorm(7 x) == RMSNorm(x):", torch.allclose(rms_norm_inline(7 * x, unit), y, atol=1e-5))
print("RMSNorm(x + 3) == RMSNorm(x):", torch.allclose(rms_norm_inline(x + 3, unit), y, atol=1e-5))

# %% [markdown]
# ### What $\epsilon$ does
#
# For an input of RMS $r$, the output RMS (before the gain) is $r / \sqrt{r^2 + \epsilon}$: about 1 when
# $r \gg \sqrt{\epsilon}$, and about $r/\sqrt{\epsilon}$ when $r \ll \sqrt{\epsilon}$. So $\epsilon$ does more than
# avoid a division by zero: it stops a near-zero vector (noise) from being blown up to unit size. The course
# model uses $\epsilon = 10^{-6}$, so the knee sits at $r = 10^{-3}$, where the output RMS is $1/\sqrt{2}$ (the table
# below: {{0.7071}}).

# %% tags=["nbval-check-output"]
for r in (1.0, 1e-2, 1e-3, 1e-4, 1e-6):
    v = torch.full((1, 16), r)
    out_rms = rms_norm_inline(v, unit, eps=1e-6).pow(2).mean().sqrt().item()
    print(f"input RMS {r:7.0e} -> output RMS {out_rms:.4f}")

# %% [markdown]
# ### Why the package computes in fp32
#
# Squaring and averaging in bfloat16 (8 significant bits) loses precision exactly where the model is trained in
# mixed precision. `mtp_lab.RMSNorm` casts to fp32 inside and back at the end, as DeepSeek-V3 keeps its
# normalisations in higher precision (notebook 05). Compare both against an fp32 reference:

# %% tags=["nbval-check-output"]
xb = (torch.randn(4, 64, 256) * 20).to(torch.bfloat16)
reference = rms_norm_inline(xb.float(), torch.ones(256))
err_bf16 = (rms_norm_inline(xb, torch.ones(256, dtype=torch.bfloat16)).float() - reference).abs().mean().item()
err_pkg = (RMSNorm(256)(xb).float() - reference).abs().mean().item()
print("package output dtype:", RMSNorm(256)(xb).dtype)
print("package (fp32 inside) closer to the fp32 reference than all-bf16:", err_pkg < err_bf16)

# %% [markdown]
# ## RMSNorm vs LayerNorm
#
# LayerNorm subtracts the mean and divides by the standard deviation, then applies a gain **and a bias**:
# $\mathrm{LN}(x) = g \odot (x - \mu) / \sqrt{\sigma^2 + \epsilon} + b$. RMSNorm drops the mean (one reduction
# less, no bias), which works as well in practice for LLMs and is what DeepSeek-V3 (and LLaMA, Qwen, ...) use.
# The two agree exactly when the vector already has zero mean:

# %% tags=["nbval-check-output"]
import torch.nn.functional as F

centred = x - x.mean(-1, keepdim=True)
print("equal on x         :", torch.allclose(F.layer_norm(x, (16,)), rms_norm_inline(x, unit, eps=1e-5), atol=1e-5))
print("equal on x - mean(x):", torch.allclose(F.layer_norm(centred, (16,)), rms_norm_inline(centred, unit, eps=1e-5),
                                              atol=1e-5))

# %% [markdown]
# ## Where the norms sit in the MTP model
#
# Every block has two (`attn_norm`, `ffn_norm`), the main model has a final `norm`, and each MTP module has
# **five**: `enorm` (on the embedding of $t_{i+k}$), `hnorm` (on the previous hidden state), its block's two, and
# `shared_head.norm` before the shared output head. The names are the ones in DeepSeek-V3's checkpoint.

# %% tags=["nbval-check-output"]
from mtp_lab import MTPModel, get_preset

model = MTPModel(get_preset("course"))
names = [name for name, module in model.named_modules() if isinstance(module, RMSNorm)]
print(len(names), "RMSNorms;", "MTP module 1 has:", [n for n in names if n.startswith("mtp.0.")])

# %% [markdown]
# ## What the trained model's norms see
#
# The dashboard runs the shipped course model on a prompt and records what enters and leaves every RMSNorm: the main
# blocks, the final norm, and in each MTP module `enorm`, `hnorm`, the block's norms and `shared_head.norm`. Look
# for: the RMS entering the blocks grows with depth (the residual stream accumulates), while what leaves a norm has
# RMS 1 before the gain and then whatever the learned gains $g$ make it (the status line's "out" is after the gain,
# so it can be well above 1); `enorm` and `hnorm` receive inputs of very different scale (an embedding vs a deep
# hidden state), which is why each gets its own norm; the learned gains differ per channel. Type a prompt, pick a
# norm, move `eps`.

# %%
from mtp_lab import load_pretrained
from mtp_lab.viz import rmsnorm_dashboard

trained, tokenizer = load_pretrained(device=device)
rmsnorm_dashboard(trained, tokenizer)

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: RMSNorm from scratch
# Write `my_rmsnorm(x, weight, eps)` without looking at the cell above. The check compares it with
# `torch.nn.functional.rms_norm` with a large `eps`, so a misplaced `eps` shows.

# %%
def my_rmsnorm(x, weight, eps):
    # YOUR CODE HERE: x (..., C), weight (C,) -> same shape as x
    return None


check("rmsnorm", my_rmsnorm)

# %% [markdown]
# ### Exercise 2: LayerNorm without affine parameters
# Write `my_layernorm(x, eps)` = $(x - \mu)/\sqrt{\sigma^2 + \epsilon}$ over the last dimension. Careful with the
# variance: there is a classic trap in `torch.var`.

# %%
def my_layernorm(x, eps):
    # YOUR CODE HERE
    return None


check("layernorm", my_layernorm)

# %% [markdown]
# ## Summary
#
# - $\mathrm{RMSNorm}(x) = g \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}$: unit RMS per token, scale invariant, no
#   mean, no bias; computed in fp32 even in a low-precision model.
# - $\epsilon$ sets a knee at $\sqrt{\epsilon}$ below which vectors are not blown up.
# - LayerNorm = RMSNorm on the centred vector (+ a bias).
# - Each MTP module normalises its two inputs separately (`enorm`, `hnorm`) before concatenating them: the
#   embedding and the hidden state live on very different scales. That is the next notebook.
#
# **Next:** [03 · The MTP module](03_mtp_module.ipynb).

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def my_rmsnorm(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


check("rmsnorm", my_rmsnorm)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def my_layernorm(x, eps):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)    # LayerNorm divides by n, not n - 1
    return (x - mu) / torch.sqrt(var + eps)


check("layernorm", my_layernorm)
