# %% [markdown]
# # 04 · Training with MTP: the loss, its targets, the lambda schedule
#
# **You will learn**
# - which target each MTP logit is trained on, with nanoGPT's `(x, y)` pairs, and the off-by-one to avoid;
# - the MTP loss, equations (24) and (25), computed by hand and checked against `mtp_loss`, including the report's
#   division by $T$ (not $T-k$);
# - DeepSeek-V3's $\lambda$ schedule (0.3, then 0.1);
# - a short live training run with the training monitor, and the same run without MTP.
#
# **Time:** about 30 minutes; Run All took 16 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ. The runs are tiny; the shipped
# model was trained with the same `Trainer` for much longer: `mtp-lab train --preset course`.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## Targets: who is trained on what
#
# A training window of $T+1$ tokens gives the input `x = window[:-1]` and the targets `y = window[1:]`, so
# `y[:, i]` $= t_{i+1}$, the main model's target at position $i$. Depth $k$ at position $i$ predicts $t_{i+k+1}$
# = `y[:, i+k]`, and it has only $T-k$ positions, so its targets are **`y[:, k:]`**. Here with token ids that equal
# their positions, so every alignment is visible:

# %% tags=["nbval-check-output"]
from mtp_lab import MTPModel, get_preset

torch.manual_seed(0)
window = torch.arange(11)[None]                  # tokens t_0 .. t_10 with ids 0..10
x, y = window[:, :-1], window[:, 1:]             # (1, T=10) each
model = MTPModel(get_preset("tiny"))             # D = 2
out = model(x)
print("x             ", x[0].tolist())
print("main  targets ", y[0].tolist(), " logits", tuple(out.logits.shape))
for k, logits_k in enumerate(out.mtp_logits, start=1):
    print(f"depth {k} targets", y[0, k:].tolist(), " " * 3 * k, "logits", tuple(logits_k.shape))

# %% [markdown]
# At position 0 the main model (having read $t_0$) is trained on $t_1$, depth 1 (having also embedded $t_1$) on
# $t_2$, depth 2 (having embedded $t_2$) on $t_3$. Each depth sees exactly one token more than the previous stage
# and predicts the token after it; training it on the token it embeds would be a label leak.
#
# ## Equations (24) and (25)
#
# The report, with tokens 1-indexed: $\mathcal{L}^k = -\frac{1}{T}\sum_{i=2+k}^{T+1} \log P^k_i[t_i]$, a sum over the
# $T-k$ predicted positions **divided by $T$**; and $\mathcal{L}_{\mathrm{MTP}} = \frac{\lambda}{D}\sum_k
# \mathcal{L}^k$, added to the main loss. By hand, on random logits:

# %% tags=["nbval-check-output"]
import torch.nn.functional as F

from mtp_lab import mtp_loss

torch.manual_seed(0)
x = torch.randint(0, 64, (2, 10))                               # (B, T)
y = torch.randint(0, 64, (2, 10))
out = model(x)
B, T = y.shape
lam, D = 0.3, len(out.mtp_logits)
depth = [F.cross_entropy(lg.flatten(0, 1), y[:, k:].flatten(), reduction="sum") / (B * T)    # (24)
         for k, lg in enumerate(out.mtp_logits, start=1)]
main = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
total = main + lam / D * sum(depth)                                                        # (25)
parts = mtp_loss(out, y, lam)
print(f"by hand : main {main.item():.4f}  L^1 {depth[0].item():.4f}  L^2 {depth[1].item():.4f}  "
      f"total {total.item():.4f}")
print(f"mtp_loss: main {parts.main.item():.4f}  L^1 {parts.depth[0].item():.4f}  L^2 {parts.depth[1].item():.4f}  "
      f"total {parts.total.item():.4f}")

# %% [markdown]
# Dividing by $T$ rather than $T-k$ weights depth $k$ by $(T-k)/T$: negligible for long windows, visible for short
# ones. `mtp_loss(..., normalize="mean")` gives the plain average over the $T-k$ positions if you prefer it:

# %% tags=["nbval-check-output"]
mean_parts = mtp_loss(out, y, lam, normalize="mean")
for k in (1, 2):
    ratio = parts.depth[k - 1] / mean_parts.depth[k - 1]
    print(f"depth {k}: report / mean = {ratio.item():.4f} = (T-k)/T = {(T - k) / T:.4f}")

# %% [markdown]
# ## The $\lambda$ schedule
#
# DeepSeek-V3 trained 14.8T tokens with $\lambda = 0.3$ for the first 10T and $0.1$ for the rest: a strong MTP signal
# early, then mostly the main objective. `mtp_lambda(progress)` implements it; the `Trainer` uses it unless you fix
# $\lambda$.

# %% tags=["nbval-check-output"]
from mtp_lab import mtp_lambda

for progress in (0.0, 0.5, 0.675, 0.676, 1.0):
    print(f"progress {progress:5.3f} -> lambda {mtp_lambda(progress)}")

# %% [markdown]
# ## A live training run
#
# The `Trainer` (AdamW, warmup then cosine decay, gradient clipping, the $\lambda$ schedule, periodic evaluation)
# trains on the Python standard library. Here a small model on a slice of the corpus, for a few dozen steps, with
# the shipped tokenizer. The monitor shows the total, main and depth-1 losses as they come, validation points,
# and the $\lambda$ and learning-rate schedules. One thing to expect: the **total** loss
# $\mathcal{L}_\text{main} + \frac{\lambda}{D}\sum_k \mathcal{L}^k$ drops by a step where $\lambda$ switches from 0.3 to
# 0.1 (at 10/14.8 of the run: progress {{0.676}} in the schedule above). That is the objective's weight changing, not learning: the main and depth-1 curves
# do not jump there.

# %% tags=["nbval-check-output"]
from mtp_lab.data import DEFAULT_TOKENIZER, build_corpus, list_files, split_files

groups = split_files(list_files())
corpus = build_corpus(DEFAULT_TOKENIZER, files=groups["train"][:24] + groups["val"][:6])
print({split: len(stream) for split, stream in corpus.splits.items()}, "tokens per split")

# %%
from IPython.display import display

from mtp_lab.train import History, TrainConfig, Trainer
from mtp_lab.viz import training_monitor

small = get_preset("course", d_model=128, n_layers=2, n_heads=4, d_ff=344, max_seq_len=64, mtp_depth=1)
train_cfg = TrainConfig(steps=40, batch_size=8, seq_len=64, lr=3e-3, warmup=4, eval_interval=10, eval_batches=4,
                        precision="fp32", seed=0)
with_mtp, monitor = History(), training_monitor()
display(monitor)                      # shown before fit(), so it updates live while the model trains
trainer = Trainer(small, train_cfg, corpus, callbacks=[with_mtp, monitor], device=device)
evals = trainer.fit()                 # (step, validation result) pairs; the monitor above already shows them

# %% [markdown]
# And the same run without MTP ($D = 0$): the same seed, the same batches, only the objective differs.

# %%
without_mtp = History()
evals_d0 = Trainer(small.replace(mtp_depth=0), train_cfg, corpus, callbacks=[without_mtp], device=device).fit()

# %% tags=["nbval-check-output"]
for name, hist in (("with MTP   ", with_mtp), ("without MTP", without_mtp)):
    step, result = hist.evals[-1]
    depth = f", depth-1 val loss {result['depth'][0]:.2f}" if result["depth"] else ""
    print(f"{name}: step {step}, main val loss {result['main']:.2f}{depth}")

# %% [markdown]
# The loss curves of both runs, step by step (main loss, and the depth-1 loss $\mathcal{L}^1$ of the MTP run):

# %%
from mtp_lab.viz import loss_curves

loss_curves({"with MTP": with_mtp, "without MTP": without_mtp})

# %% [markdown]
# After 40 tiny steps the two main losses are about the same: a run this short mostly learns token frequencies.
# The depth-1 loss sits *below* the main loss ({{6.48}} against {{6.59}} above), which looks backwards (depth 1
# predicts a token further ahead) until you count what it sees: at position $i$ module 1 has read the same
# $t_{\le i}$ as the main model **and** the embedding of the true $t_{i+1}$, the token the main model has to guess,
# and it runs one block more on top of the main model's state. Predicting $t_{i+2}$ from $t_{\le i+1}$ is the
# main model's own task shifted by one, with a deeper network: no harder. The gap is small and this run is short;
# do not read more into it.
#
# MTP's benefit to the main model is a large-scale effect: DeepSeek's ablations train 15.7B and 228.7B models on
# hundreds of billions of tokens. No such ablation was run for the shipped 24-block model; the model card
# (`assets/MODEL_CARD.md`) has one for the *previous* course shape (4 blocks, now preset `shallow`), at 500 and 1500
# steps, where the main loss with $D = 2$ and with $D = 0$ differed by less than a different seed could. At small
# scale, MTP is worth training for its **drafter**, which costs little and comes with the model (notebooks 06 and 07).

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: the targets of depth $k$
# Given `targets` (B, T) (`targets[:, i]` $= t_{i+1}$) and a depth `k`, return the targets that line up with
# `mtp_logits[k-1]`.

# %%
def mtp_targets(targets, k):
    # YOUR CODE HERE
    return None


check("mtp_targets", mtp_targets)

# %% [markdown]
# ### Exercise 2: equation (24)
# Given depth-$k$ logits (B, T-k, V), the targets (B, T) and `k`, return $\mathcal{L}^k$ as the report defines it.

# %%
def depth_loss(logits_k, targets, k):
    # YOUR CODE HERE
    return None


check("depth_loss", depth_loss)

# %% [markdown]
# ## Summary
#
# - With `y = window[1:]`, depth $k$'s logits line up with `y[:, k:]`; it embeds $t_{i+k}$ and predicts
#   $t_{i+k+1}$, never the token it embeds.
# - $\mathcal{L}^k$ sums $T-k$ cross-entropies and divides by $T$; $\mathcal{L}_{\mathrm{MTP}} = \frac{\lambda}{D}
#   \sum_k \mathcal{L}^k$ is added to the main loss, with $\lambda = 0.3$ then $0.1$.
# - The `Trainer` runs it all; the course model was trained the same way, longer.
#
# **Next:** [05 · FP8 mixed precision](05_fp8.ipynb).

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def mtp_targets(targets, k):
    return targets[:, k:]


check("mtp_targets", mtp_targets)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def depth_loss(logits_k, targets, k):
    B, T = targets.shape
    V = logits_k.shape[-1]
    nll = F.cross_entropy(logits_k.reshape(-1, V), targets[:, k:].reshape(-1), reduction="sum")
    return nll / (B * T)


check("depth_loss", depth_loss)
