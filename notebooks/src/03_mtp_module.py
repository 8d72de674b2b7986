# %% [markdown]
# # 03 · The MTP module, equation by equation
#
# **You will learn**
# - equations (21)-(23) of the DeepSeek-V3 report, computed by hand with every shape printed, and checked
#   against the package's model;
# - the one-token shift (why module $k$ sees $t_{i+k}$) and why equation (22) is sliced $1{:}T-k$;
# - why the checkpoint concatenates $[e; h]$ while the report writes $[h; e]$, and when it matters;
# - which hidden state feeds the module (after or before the final norm), and what "shared embedding and head" means;
# - that the MTP module cannot see the token it predicts (no label leak), tested, not assumed.
#
# **Time:** about 30 minutes; Run All took 9 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## The equations (report, section 2.2; tokens 1-indexed there)
#
# With $h^0_i$ the main model's representation of position $i$, module $k = 1..D$ computes
#
# $$h'^k_i = M_k\,[\mathrm{RMSNorm}(h^{k-1}_i)\,;\,\mathrm{RMSNorm}(\mathrm{Emb}(t_{i+k}))] \qquad (21)$$
# $$h^k_{1:T-k} = \mathrm{TRM}_k(h'^k_{1:T-k}) \qquad (22)$$
# $$P^k_{i+k+1} = \mathrm{OutHead}(h^k_i) \qquad (23)$$
#
# $M_k \in \mathbb{R}^{d \times 2d}$ is a projection (`eh_proj` in the checkpoint), $\mathrm{TRM}_k$ one transformer
# block, and $\mathrm{Emb}$, $\mathrm{OutHead}$ are the main model's own. The code counts tokens from 0: at
# position $i$, depth $k$ embeds $t_{i+k}$ and predicts $t_{i+k+1}$.
#
# We recompute everything by hand on the course-sized architecture (the `course` preset: its width $d$ and $D = 2$
# are printed with the shapes below; random weights are enough for shapes and equality).

# %% tags=["nbval-check-output"]
from mtp_lab import MTPModel, get_preset

torch.manual_seed(0)
model = MTPModel(get_preset("course")).eval()
T = 12
tokens = torch.randint(0, model.config.vocab_size, (1, T))      # (B, T)
with torch.no_grad():
    out = model(tokens)                                          # the package's full forward, for comparison
    logits, h0 = model.forward_main(tokens)                      # h0: the state that feeds module 1
print("tokens", tuple(tokens.shape), " main logits", tuple(logits.shape), " h0", tuple(h0.shape))

# %% [markdown]
# ### Step 1: the one-token shift and the slice $1{:}T-k$
#
# Module 1 pairs the state $h^0_i$ with the **next** token $t_{i+1}$. The last position has no next token, so only
# $T-1$ positions take part: that is the slice $1{:}T-k$ of equation (22). The module is given $t_{i+1}$, which the
# main model was asked to predict at position $i$; it can use it because at inference that token is already
# known (it was just sampled), and the module's job is the token after it.

# %% tags=["nbval-check-output"]
k = 1
mod = model.mtp[k - 1]
h_in = h0[:, :T - k]                       # (B, T-k, C): h^0_i for i = 0..T-k-1
tok_in = tokens[:, k:]                     # (B, T-k):    t_{i+k}
print("h_in", tuple(h_in.shape), " tokens_in", tuple(tok_in.shape))
print("position 0 pairs h_0 with token", tok_in[0, 0].item(), "= tokens[0, 1] =", tokens[0, 1].item())

# %% [markdown]
# ### Step 2: equation (21), in the checkpoint's order
#
# Both inputs get their own RMSNorm (`hnorm` for the state, `enorm` for the embedding): they live on different
# scales. They are concatenated to $2d$ channels and projected back to $d$ by `eh_proj`. The released checkpoint, and
# every engine that loads it (vLLM, SGLang, Megatron-Core), puts the **embedding first**: `eh_proj(cat[enorm(e),
# hnorm(h)])`.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    e = model.embed(tok_in)                                          # (B, T-k, C)  Emb(t_{i+k})
    both = torch.cat([mod.enorm(e), mod.hnorm(h_in)], dim=-1)        # (B, T-k, 2C) [e; h]
    h_prime = mod.eh_proj(both)                                      # (B, T-k, C)  M_k [e; h]
print("cat", tuple(both.shape), " eh_proj.weight", tuple(mod.eh_proj.weight.shape), " h'", tuple(h_prime.shape))

# %% [markdown]
# ### Steps 3 and 4: equations (22) and (23)
#
# One transformer block (causal over the $T-k$ positions), then the module's own final norm (`shared_head.norm`)
# and the **main model's** output head. We compare with the logits the package computed in its full forward.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    h1 = mod.block(h_prime)                                          # (22) (B, T-k, C)
    h1_norm = mod.shared_head.norm(h1)
    logits1 = model.head(h1_norm)                                    # (23) (B, T-k, V): [:, i] predicts t_{i+2}
print("depth-1 logits", tuple(logits1.shape))
print("by hand == model(tokens).mtp_logits[0]:", torch.allclose(logits1, out.mtp_logits[0], atol=1e-5))

# %% [markdown]
# ### Depth 2 chains on depth 1
#
# Module 2 takes module 1's state (after its `shared_head.norm`, see below), drops one more position, and embeds
# $t_{i+2}$. The chain is **causal**: depth 2 builds on what depth 1 computed, unlike independent extra heads.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    logits2, _ = model.forward_mtp(2, h1_norm[:, :-1], tokens[:, 2:])
print("depth-2 logits", tuple(logits2.shape), " == model(tokens).mtp_logits[1]:",
      torch.allclose(logits2, out.mtp_logits[1], atol=1e-5))

# %% [markdown]
# ## No label leak: test it
#
# A classic bug in MTP re-implementations gives module $k$ the token it must predict. If the module is correct,
# changing token $t_j$ can only change depth-1 predictions at positions $i$ with $i + 1 \ge j$ (those that see
# $t_j$ through attention or the embedded token), never earlier ones. We change token 6 and list which depth-1
# positions move.

# %% tags=["nbval-check-output"]
changed = tokens.clone()
changed[0, 6] = (changed[0, 6] + 1) % model.config.vocab_size
with torch.no_grad():
    moved = (model(changed).mtp_logits[0] - out.mtp_logits[0]).abs().amax(-1)[0] > 1e-6
print("depth-1 positions whose prediction changed:", moved.nonzero().flatten().tolist())
print("position 5 embeds t_6 and predicts t_7; positions 0..4 cannot see t_6")

# %% [markdown]
# ## $[e; h]$ or $[h; e]$?
#
# The report writes the hidden state first; the checkpoint's code puts the embedding first. Which is right? Both,
# for a model trained from scratch: swapping the halves of the input only permutes the columns of $M_k$, so a
# model trained with one order is the same function as one trained with the other and its $M_k$'s halves swapped.
# To **load DeepSeek-V3's weights** (or vLLM/SGLang's layout) you must use $[e; h]$.

# %% tags=["nbval-check-output"]
W = mod.eh_proj.weight                                     # (C, 2C): columns 0..C-1 act on enorm(e)
C = W.shape[0]
W_report = torch.cat([W[:, C:], W[:, :C]], dim=1)          # the same matrix for the report's [h; e] order
with torch.no_grad():
    report_order = torch.cat([mod.hnorm(h_in), mod.enorm(e)], dim=-1) @ W_report.T
    wrong_order = torch.cat([mod.hnorm(h_in), mod.enorm(e)], dim=-1) @ W.T
print("[h; e] with permuted M_k == [e; h]:", torch.allclose(report_order, h_prime, atol=1e-5))
print("[h; e] with the checkpoint's M_k == [e; h]:", torch.allclose(wrong_order, h_prime, atol=1e-5))

# %% [markdown]
# ## Which hidden state feeds the module?
#
# $h^0_i$ could be the main model's output **after** its final RMSNorm (what vLLM and SGLang pass) or the residual
# stream **before** it. DeepSeek never said; an early vLLM change reported slightly better drafts with the
# un-normalised state. The package follows the engines by default and lets you switch:
# `ModelConfig.mtp_input_norm` (True = after the norm). The same choice applies to the state passed from depth $k$
# to depth $k+1$.
#
# A subtlety: `hnorm` normalises its input again, and RMSNorm is scale invariant, so the two wirings differ **only
# through the final norm's learned gain** $g$ (a per-channel reweighting) and the tiny $\epsilon$ inside each norm.
# With $g = 1$, as at initialisation, they agree up to that $\epsilon$ (logit differences around $10^{-4}$, because
# the residual stream's RMS is small at initialisation, so $\epsilon = 10^{-6}$ is not negligible next to its square):
# equal at a tolerance of $10^{-3}$, not bit for bit. With a trained $g$ they are different functions.

# %% tags=["nbval-check-output"]
pre_norm_model = MTPModel(get_preset("course", mtp_input_norm=False)).eval()
pre_norm_model.load_state_dict(model.state_dict())         # same weights, only the wiring differs
with torch.no_grad():
    _, h_pre = pre_norm_model.forward_main(tokens)
    print("h0 is model.norm(residual stream):", torch.allclose(model.norm(h_pre), h0, atol=1e-5))
    print("same depth-1 logits while g = 1 (tolerance 1e-3):",
          torch.allclose(pre_norm_model(tokens).mtp_logits[0], out.mtp_logits[0], atol=1e-3))
    g = torch.rand(model.config.d_model) + 0.5              # pretend training moved the final norm's gain
    pre_norm_model.norm.weight.copy_(g)
    model_g = MTPModel(get_preset("course")).eval()         # post-norm wiring, same weights and g
    model_g.load_state_dict(pre_norm_model.state_dict())
    print("same depth-1 logits with a trained g (tolerance 1e-3):",
          torch.allclose(pre_norm_model(tokens).mtp_logits[0], model_g(tokens).mtp_logits[0], atol=1e-3))

# %% [markdown]
# ## Shared embedding and output head
#
# An MTP module owns no embedding and no output head: it **uses the main model's**, the same tensors. So the module
# is small (DeepSeek-V3: 14B of 685B parameters) and every MTP gradient also trains the shared embedding and head.
# The MTP loss also reaches the main model's blocks, through $h^0$: that is how MTP improves the main model even
# when the modules are thrown away after training.

# %% tags=["nbval-check-output"]
print("parameters of MTP module 1:", sorted({n.split(".")[0] for n, _ in model.mtp[0].named_parameters()}))
print("split:", model.parameter_counts())
model.zero_grad()
model(tokens).mtp_logits[0].logsumexp(-1).mean().backward()     # any loss on depth 1 only
grads = {name: model.get_submodule(name).weight.grad is not None for name in ("embed", "head", "layers.0.attn.wq")}
print("depth-1 loss sends gradients to:", grads)

# %% [markdown]
# ## The architecture, interactively
#
# Boxes for the main model and both MTP modules with their tensor shapes; hover a box for its equation and
# parameter count, and move the sliders to change the batch size and sequence length. The main model's 24 blocks
# all have the same shape, so the view draws the first and the last and one box for the 22 between (its hover
# gives their parameters together): the main model, the MTP modules and the sliders fit one screen.

# %%
from mtp_lab.viz import architecture_view

architecture_view(model, seq_len=T)

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: the inputs of module $k$
# Given the previous states `h` (B, T, C), the tokens (B, T) and the depth `k`, return the pair `(h_in, tokens_in)`
# that module $k$ combines.

# %%
def mtp_inputs(h, tokens, k):
    # YOUR CODE HERE: return (h_in, tokens_in)
    return None


check("mtp_inputs", mtp_inputs)

# %% [markdown]
# ### Exercise 2: equation (21) with a real module
# Given an `MTPModule`, the embeddings `emb` of the tokens $t_{i+k}$ and the states `h_prev`, return $h'$ as the
# checkpoint computes it (stop before the transformer block).

# %%
def mtp_combine(module, emb, h_prev):
    # YOUR CODE HERE: use module.enorm, module.hnorm, module.eh_proj
    return None


check("mtp_combine", mtp_combine)

# %% [markdown]
# ## Summary
#
# - Module $k$ at position $i$: $h'^k_i = M_k[\mathrm{enorm}(\mathrm{Emb}(t_{i+k})); \mathrm{hnorm}(h^{k-1}_i)]$, one
#   block, its own norm, the shared head; it predicts $t_{i+k+1}$ and has $T-k$ positions.
# - $[e; h]$ (checkpoint, engines) vs $[h; e]$ (report): equivalent up to permuting $M_k$; use $[e; h]$ to load
#   real weights.
# - The state fed in is the main model's output after its final norm in vLLM/SGLang; before the norm is a variant
#   worth measuring (`mtp_input_norm=False`).
# - The MTP loss trains the shared embedding, the shared head and the main blocks too.
#
# **Next:** [04 · Training with MTP](04_training.ipynb).

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def mtp_inputs(h, tokens, k):
    T = tokens.shape[1]
    return h[:, :T - k], tokens[:, k:]


check("mtp_inputs", mtp_inputs)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def mtp_combine(module, emb, h_prev):
    return module.eh_proj(torch.cat([module.enorm(emb), module.hnorm(h_prev)], dim=-1))


check("mtp_combine", mtp_combine)
