# %% [markdown]
# # 08 · MTP in the real world
#
# **You will learn**
# - DeepSeek-V3's MTP numbers (what was reported, and what was not) and its parameter split;
# - where the MTP weights sit in the released checkpoint, and how vLLM and SGLang run them;
# - how MTP compares with its peers: independent heads, Medusa, EAGLE;
# - why speculative decoding helps a lot at batch 1 and less at large batch;
# - answers to the ten questions learners ask most (the FAQ at the end).
#
# **Time:** about 30 minutes of reading; Run All took 2 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.

# %%
from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## DeepSeek-V3's numbers
#
# | | DeepSeek-V3 |
# |---|---|
# | MTP depth $D$ | 1 |
# | loss weight $\lambda$ | 0.3 for the first 10T tokens, 0.1 for the last 4.8T |
# | parameters | 671B main model + 14B MTP module in the checkpoint |
# | acceptance of the second token | 85-90% "across various generation topics" |
# | decoding speed | 1.8x tokens per second |
# | ablation (MTP dropped at evaluation) | HumanEval 20.7 -> 26.8 (15.7B model), 44.5 -> 53.7 (228.7B model) |
#
# **Not stated:** batch size, temperature, hardware or serving engine behind the 1.8x. Keep that in mind when you
# compare your own measurements (notebook 07) with it.
#
# The weights documentation (`README_WEIGHTS.md`) splits the MTP module further: 11.5B unique parameters, plus the
# 0.9B embedding and 0.9B output head that it shares with the main model but that the checkpoint stores again in
# the MTP layer. With $k = 1$, 85-90% acceptance means $\tau = 1.85$-$1.9$ tokens per target forward. If the only
# cost of speculation were the draft forward, 1.8x would imply a draft costing about 3-6% of a target forward:

# %% tags=["nbval-check-output"]
for accept in (0.85, 0.90):
    tau = 1 + accept                      # k = 1: the draft is accepted with probability a, plus one target token
    c = tau / 1.8 - 1                     # speedup = tau / (1 + c)  =>  c = tau / speedup - 1
    print(f"acceptance {accept:.2f}: tau = {tau:.2f}, implied draft cost c = {c:.3f} of a target forward")
print(f"one MTP layer out of 61 + 1 transformer layers: {1 / 62:.3f} (before the shared output head's cost)")

# %% [markdown]
# ## The checkpoint's layout
#
# DeepSeek-V3's `config.json` has `num_hidden_layers = 61` and `num_nextn_predict_layers = 1`. The main layers are
# `model.layers.0` ... `model.layers.60`; the MTP module is stored as **`model.layers.61`**, with the names this course
# uses: `enorm`, `hnorm`, `eh_proj`, `shared_head.norm`, plus `shared_head.head` and `embed_tokens` (copies of the
# shared head and embedding), and an ordinary decoder layer (attention, MoE, its two norms). Loaders that only know
# the main model (Hugging Face `transformers`, for example) **skip layer 61**: the MTP weights are there, just unused.
#
# Our package names the modules `mtp.0`, `mtp.1`, ... A few lines map them onto DeepSeek's numbering:

# %% tags=["nbval-check-output"]
from mtp_lab import MTPModel, get_preset

model = MTPModel(get_preset("course"))
L = model.config.n_layers


def deepseek_name(name, n_layers):
    """mtp.{j}.<rest> -> model.layers.{n_layers + j}.<rest>; the main model keeps model.layers.{i}."""
    head, _, rest = name.partition(".")
    if head == "mtp":
        j, _, rest = rest.partition(".")
        return f"model.layers.{n_layers + int(j)}.{rest}"
    return f"model.{name}"


for name in model.state_dict():
    if name.startswith("mtp.") and "block" not in name:
        print(f"{name:28s} -> {deepseek_name(name, L)}")

# %% [markdown]
# ## How the engines run it
#
# Both major engines load layer 61 as a drafter and verify its drafts with the main model:
#
# - **vLLM:** `--speculative-config '{"method": "deepseek_mtp", "num_speculative_tokens": 1}'` (recent versions
#   also accept `"method": "mtp"`). With more speculative tokens than MTP layers, vLLM runs an MTP layer again: with DeepSeek-V3's single
#   layer that is layer 61 each time; with several layers `deepseek_mtp.py` cycles back to the first
#   (`step % num_mtp_layers`), and vLLM V1's proposer uses the first layer for every draft.
# - **SGLang:** speculative decoding with the EAGLE machinery, e.g. `--speculative-algorithm EAGLE
#   --speculative-num-steps 1 --speculative-eagle-topk 1 --speculative-num-draft-tokens 2` (early versions used a
#   separate `DeepSeek-V3-NextN` weight file).
#
# What they do, which the report does not spell out (notebooks 03 and 06 implement the same):
# the hidden state passed to the MTP layer is the main model's output **after** its final norm; the concatenation
# is `[enorm(e); hnorm(h)]`, embedding first; the MTP layer sees the target's token ids shifted left by one with
# the newly sampled token appended, while positions are not shifted; vLLM zeroes the embedding at position 0.
#
# ## The peers
#
# | method | drafter | chain between drafts | reported speed-up | lossless? |
# |---|---|---|---|---|
# | Gloeckle et al. 2024 | $n = 4$ independent output heads on a shared trunk | none | up to 3.0x (code), 2.7x (text) | yes (self-speculative) |
# | Medusa | extra heads on the last hidden state, tree attention | none | Medusa-1 ~2.2x, Medusa-2 2.3-2.8x | not with "typical acceptance" |
# | EAGLE, -2, -3 | `fc(cat[emb, feature])` + one decoder layer | autoregressive on features | 2.7-3.5x, 3.05-4.26x, up to 6.5x | yes |
# | DeepSeek-V3 MTP | `eh_proj(cat[enorm(e), hnorm(h)])` + one block, shared embedding and head | sequential modules | 1.8x | yes |
#
# The EAGLE drafter is nearly the MTP module; the difference is that MTP is **trained with the model** as part of
# its objective (and improves the main model), while EAGLE is trained afterwards on a frozen model. MiMo-7B ships one
# MTP layer with about 90% acceptance; Qwen3-Next and GLM-4.5 ship native MTP layers too. Speed-ups are measured on
# different models, hardware and batch sizes: compare them with care.

# %% [markdown]
# ## Why the gain shrinks at large batch
#
# At batch 1 a decoder forward is **memory-bound**: the GPU reads every weight once to produce one token, and most of
# its arithmetic units idle. Verifying $k + 1$ positions reads the same weights, so it costs about the same as one
# position: the extra tokens are nearly free. At large batch the forward becomes **compute-bound**: $B(k+1)$ positions
# cost about $(k+1)$ times $B$ positions, and every rejected draft is wasted compute. Long contexts push the same
# way once the batch is large: attention over the KV cache adds work for every verified position.
#
# A back-of-the-envelope **roofline model** (not a measurement): a 7B-parameter dense model in BF16 on a GPU with
# 4.8 TB/s memory bandwidth and 989 TFLOP/s, one forward costs $\max(\text{bytes}/\text{bandwidth},\;
# \text{tokens} \cdot \text{FLOPs per token}/\text{peak})$.

# %% tags=["nbval-check-output"]
def forward_time(tokens, params=7e9, bandwidth=4.8e12, peak=989e12):
    """Seconds for one forward over `tokens` positions: weight reads vs matmul FLOPs (2 per parameter)."""
    return max(2 * params / bandwidth, tokens * 2 * params / peak)


def spec_speedup(batch, tau=1.85, k=1, c=0.05):
    plain = forward_time(batch) / batch                                    # seconds per token, no drafting
    spec = (c * forward_time(batch) + forward_time(batch * (k + 1))) / (batch * tau)
    return plain / spec


weights_gb, ridge = 2 * 7e9 / 1e9, (2 * 7e9 / 4.8e12) / (2 * 7e9 / 989e12)   # bytes/bandwidth = FLOPs/peak there
print(f"reading {weights_gb:.0f} GB of weights takes as long as the FLOPs of {ridge:.0f} positions")
for batch in (1, 16, 64, 128, 256, 512):
    print(f"batch {batch:4d}: speed-up {spec_speedup(batch):.2f}x")

# %% [markdown]
# Below about 200 positions per forward (reading the {{14 GB}} of weights takes as long as the FLOPs of {{206 positions}})
# the model is memory-bound and speculation gives $\tau/(1+c) \approx$ {{1.76x}}; once $B(k+1)$ positions
# make it compute-bound, the gain falls to $\tau/(k+1+c) \approx$ {{0.90x}}: speculation costs more than it saves.
# Real engines sit between these regimes (MoE models read only active experts, attention has its own costs), which
# is why they tune the number of drafts per batch size or turn speculation off under heavy load.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: where are the MTP layers?
# A checkpoint has `num_hidden_layers = L` main layers and `num_nextn_predict_layers = n` MTP modules, numbered like
# DeepSeek-V3's. Return the list of `model.layers.{i}` indices that hold the MTP modules.

# %%
def mtp_layer_indices(num_hidden_layers, num_nextn_predict_layers):
    # YOUR CODE HERE
    return None


check("mtp_layer_indices", mtp_layer_indices)

# %% [markdown]
# ### Exercise 2: lossless or not?
# For each scheme, `True` if its output distribution equals the target model's exactly, `False` if not. The check
# says how many answers are wrong, not which: reason each one out (FAQ question 9 below helps).

# %%
answers = {
    "rejection sampling with min(1, p/q) and the residual": None,
    "rejection sampling, but after a rejection the token is sampled from p": None,
    "greedy verification at temperature 0": None,
    "greedy verification, keeping a draft that is in the target's top 2": None,
    "accept the draft when p(x) > 0.3": None,
    "Medusa typical acceptance": None,
    "MTP drafter chained to depth 3 with rejection sampling": None,
    "an n-gram drafter with rejection sampling": None,
}

check("lossless", answers)

# %% [markdown]
# ## FAQ: the questions learners ask
#
# **1. One MTP layer: can I draft more than one token? Why does acceptance fall with depth?**
# Yes: with DeepSeek-V3's single module, engines run it again, feeding it its own output state and the token it just
# drafted. It was never trained for that position, so each extra step drafts worse: one report measured 76% / 62% /
# 51% / 42% per position with 8 chained steps, against 83% with one. With several modules engines differ (vLLM's
# `deepseek_mtp.py` cycles back to module 1, vLLM V1 uses module 1 for every draft, SGLang takes one module); this
# package reuses the last one. Measure the fall yourself in notebook 07 (Experiment 1, $k = 1..4$ with $D = 2$).
#
# **2. Is the MTP input the hidden state before or after the final norm? Which state is recycled?**
# DeepSeek never said. vLLM and SGLang pass the state **after** the main model's final norm; an early vLLM change
# reported slightly better drafts with the un-normalised one. When chaining, which state is recycled (the module's
# output before `shared_head.norm`, as vLLM feeds back, or after it, as SGLang's NextN returns) also changes
# acceptance. Because `hnorm` re-normalises, the two choices
# differ only through the learned gain of the final norm (notebook 03). The package exposes both
# (`ModelConfig.mtp_input_norm`).
#
# **3. The paper writes [h; e], the code [e; h]. Which is right?**
# Both describe the same model up to a permutation of $M_k$'s columns; for a model trained from scratch the order
# does not matter. To load DeepSeek-V3's weights you must use the checkpoint's **[e; h]**, as vLLM, SGLang and
# Megatron-Core do (notebook 03 shows the permutation).
#
# **4. Why does the MTP module see the "same" prompt tokens as the main model (the one-token shift)?**
# It does not: at position $i$, module $k$ embeds $t_{i+k}$, one token further than the previous stage, so its input
# ids are the main model's shifted left by $k$. At inference the newest token was just sampled, so the module can
# embed it and predict the one after. Giving it $t_{i+k+1}$ instead would leak the label (notebook 03 tests this).
#
# **5. Why is equation 22 sliced 1:T-k?**
# Only $T-k$ positions have a token $t_{i+k}$ to embed; at the last $k$ positions it lies beyond the sequence. So
# depth $k$ has $T-k$ predictions, and its loss (24) sums $T-k$ terms (still divided by $T$ in the report).
#
# **6. Why is my acceptance below 85-90%?**
# Check the definition first (acceptance rate per drafted token vs $\tau$ per step, notebook 07), then the
# temperature (sampling lowers acceptance against greedy), the text domain (code and prose differ, in a direction
# that depends on the model: notebook 07 measures it for the course model),
# the number of drafts (later positions accept less), and model size: a 671B model's next-next token is easier to
# guess than a small model's. The course model is tiny; its acceptance is lower than DeepSeek's.
#
# **7. What do acceptance length, acceptance rate and per-position rate each mean?**
# In vLLM's terms: acceptance rate = accepted / drafted; mean acceptance length $\tau$ = 1 + accepted / steps (tokens
# per target forward, counting the target's own token); per-position rate at $j$ = drafts accepted at position $j$ /
# steps. With $k = 1$ the rate and the per-position rate coincide and $\tau$ = 1 + rate.
#
# **8. Why does MTP speed up batch-1 decoding but help less at large batch or long context?**
# Batch-1 decoding is memory-bound, so verifying $k+1$ positions costs about as much as one. At large batch the
# forward is compute-bound and the extra positions cost real FLOPs, and drafts that are rejected waste them (the
# roofline model above). The draft's own cost $c$ divides the gain too: speed-up $= \tau / (kc + 1)$.
#
# **9. Is MTP speculative decoding lossless?**
# With exact verification, yes: greedy verification reproduces the target's greedy output, and rejection sampling
# (accept with $\min(1, p/q)$, else sample the residual $\max(0, p - q)$) reproduces its sampling distribution
# (notebook 06 checks it empirically). Threshold tricks (accept if $p(x) > \epsilon$) and Medusa's typical acceptance
# are faster but change the distribution.
#
# **10. Where are the MTP weights in a real checkpoint?**
# In the layer after the last main layer: `model.layers.61` for DeepSeek-V3 (`num_hidden_layers = 61`), with
# `enorm`, `hnorm`, `eh_proj`, `shared_head` and a decoder layer. Many loaders drop it; engines with MTP support load it
# as the drafter.

# %% [markdown]
# ## Summary
#
# - DeepSeek-V3: one MTP module (about 2% of the checkpoint), 85-90% second-token acceptance, 1.8x tokens per second
#   under unstated conditions.
# - The module is `model.layers.61`: `enorm`, `hnorm`, `eh_proj` ([e; h]), one layer, `shared_head`; vLLM and SGLang
#   run it as a drafter.
# - Independent heads, Medusa and EAGLE draft differently; MTP is trained with the model and improves it.
# - Speculation pays when decoding is memory-bound (small batch); at large batch it can cost more than it saves.
#
# This is the end of the course. Go back to [07 · The acceptance lab](07_acceptance_lab.ipynb) and run your own
# experiments, or train your own model with `mtp-lab train`.

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def mtp_layer_indices(num_hidden_layers, num_nextn_predict_layers):
    return list(range(num_hidden_layers, num_hidden_layers + num_nextn_predict_layers))


check("mtp_layer_indices", mtp_layer_indices)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
answers = {
    "rejection sampling with min(1, p/q) and the residual": True,
    # P(x) = min(p, q)(x) + (1 - beta) p(x) != p(x): the drafted tokens get counted twice
    "rejection sampling, but after a rejection the token is sampled from p": False,
    "greedy verification at temperature 0": True,
    "greedy verification, keeping a draft that is in the target's top 2": False,   # not the argmax any more
    "accept the draft when p(x) > 0.3": False,          # changes the distribution (lossy)
    "Medusa typical acceptance": False,                  # not distribution-preserving
    "MTP drafter chained to depth 3 with rejection sampling": True,   # slower drafts, same distribution
    "an n-gram drafter with rejection sampling": True,   # q is one-hot: accept with p(x), else the residual
}

check("lossless", answers)
