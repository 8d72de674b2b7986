# %% [markdown]
# # 00 · Welcome to mtp-lab: Multi-Token Prediction, DeepSeek-V3 style
#
# **You will learn**
# - what Multi-Token Prediction (MTP) is, in one picture: which module predicts which token;
# - the two reasons it matters: a denser training signal, and a built-in drafter for speculative decoding;
# - how this course is organised, and how its exercises and checks work.
#
# **Time:** about 10 minutes of reading; Run All took 3 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.
#
# **You need:** to know what a decoder-only transformer is (embedding, blocks, output head, next-token loss).
#
# **The model you will study** is small on purpose: 5.8M parameters, trained in under an hour on 2 CPU cores, on
# the Python standard library only. It writes text with the right *shape* (indentation, keywords, docstring
# phrases, plausible names) but little meaning (a generated docstring may say the same thing twice), and greedy
# text soon repeats itself. That is not a bug: what the course measures (which token each MTP module predicts, how
# often the main model agrees with the drafts, how fast decoding gets) is this model's own behaviour, sense or not.

# %% [markdown]
# ## Check your environment
#
# Every notebook starts with this cell. It prints the versions and the device: the whole course runs on a CPU;
# when a CUDA GPU is present, the notebooks that train or time something use it.
#
# On **Colab** (or a kernel without the package) its first lines stop with the exact install steps: upload the
# mtp-lab folder, install it, restart. Locally, `make course` has installed everything already.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## What MTP is
#
# An ordinary language model reads tokens $t_1 \dots t_i$ and predicts **one** token, $t_{i+1}$.
# DeepSeek-V3 (technical report, section 2.2) adds $D$ small **MTP modules** after the main model. Module $k$
# takes the previous stage's hidden state at position $i$, combines it with the embedding of the token
# $t_{i+k}$ (which it is allowed to see), runs one transformer block, and predicts the token after it:
#
# | stage | input at position $i$ | predicts |
# |---|---|---|
# | main model | $t_1 \dots t_i$ | $t_{i+1}$ |
# | MTP module 1 | main state $h^0_i$ + embedding of $t_{i+1}$ | $t_{i+2}$ |
# | MTP module 2 | $h^1_i$ + embedding of $t_{i+2}$ | $t_{i+3}$ |
#
# The modules are **sequential** (module 2 builds on module 1's state), unlike the independent extra heads of
# earlier work, and they **share** the main model's embedding and output head. DeepSeek-V3 uses $D = 1$.
#
# **Why it matters.**
# 1. *Training:* every position gets extra targets further ahead, a denser signal that pushes the main model to
#    plan. In DeepSeek's ablation (MTP dropped at evaluation) HumanEval rose from 20.7 to 26.8 (15.7B model) and
#    from 44.5 to 53.7 (228.7B model).
# 2. *Inference:* the MTP module is a ready-made **drafter**. It proposes the next token cheaply, the main model
#    verifies it; DeepSeek reports 85-90% acceptance of the second token and 1.8x tokens per second.
#
# The package's model follows this exactly. Let's build a tiny untrained one and look at the shapes.

# %% tags=["nbval-check-output"]
from mtp_lab import MTPModel, get_preset

torch.manual_seed(0)
config = get_preset("tiny")                                  # vocab 64, d_model 32, 2 blocks, D = 2 MTP modules
model = MTPModel(config)
tokens = torch.randint(0, config.vocab_size, (1, 16))        # (B, T) = (1, 16)
out = model(tokens)
print("main logits      ", tuple(out.logits.shape))          # every position predicts its next token
for k, logits_k in enumerate(out.mtp_logits, start=1):
    print(f"MTP depth {k} logits", tuple(logits_k.shape))   # depth k: only T-k positions have a target
print("parameters       ", model.parameter_counts())

# %% [markdown]
# The main model has a prediction at each of the 16 positions; depth 1 has 15 and depth 2 has 14, because at the
# end of the sequence the token $t_{i+k}$ the module would embed does not exist. The parameter split separates
# the **shared** embedding and head, the **main** blocks, and the **MTP** modules, as DeepSeek reports it.
#
# Here is the same picture on real words: which token each stage predicts at each position.

# %% tags=["nbval-check-output"]
words = ["def", "add", "(", "a", ",", "b", ")", ":", "return", "a", "+", "b"]
print(f"{'i':>2} {'reads up to':>12} {'main ->':>8} {'depth 1 ->':>11} {'depth 2 ->':>11}")
for i in range(len(words) - 3):
    print(f"{i:>2} {words[i]:>12} {words[i + 1]:>8} {words[i + 2]:>11} {words[i + 3]:>11}")

# %% [markdown]
# ## The roadmap
#
# | notebook | you learn |
# |---|---|
# | 00 Welcome | what MTP is, the course's tools |
# | 01 The main model | tokens, embedding, blocks, head; next-token prediction with the shipped model |
# | 02 RMSNorm | the formula, vs torch and LayerNorm, its statistics |
# | 03 The MTP module | equations (21)-(23) with shapes, the one-token shift, [e; h] vs [h; e] |
# | 04 Training with MTP | loss (24)-(25), target alignment, the lambda schedule, a live run |
# | 05 FP8 mixed precision | E4M3, tile/block scaling, accumulation, FP8Linear |
# | 06 Speculative decoding | draft, verify, accept; exactness checked empirically |
# | 07 The acceptance lab | what moves acceptance: k, temperature, depth, FP8, domain |
# | 08 MTP in the real world | DeepSeek-V3's checkpoint, vLLM/SGLang, the peers, a FAQ |
#
# Each notebook lists its own goals and time at the top: reading and the exercises take 20-50 minutes per notebook;
# "Run All" takes seconds (07, about two minutes). The root README's course table gives each notebook's Run All
# time, measured in JupyterLab in a browser on 2 CPU cores (all nine in about 3 minutes). The first cell sets
# torch's CPU threads for your machine and prints how many: on a laptop one thread is fastest for this small model
# and leaves the browser a core. With a CUDA
# GPU the same cells run on it (the model goes to `device`); GPU times were not measured for this release: expect
# the training cells of 04 and 05 to gain most, since batch-1 decoding of a 5.8M-parameter model is dominated by
# Python overhead on any device.

# %% [markdown]
# ## How the exercises work
#
# Each notebook has at least two exercises. You complete a function (or a value) in the exercise cell, then run
# the `check` cell below it. The check compares your answer with an independent reference and tells you
# **what** is wrong (a shape, an off-by-one shift, a wrong normalisation), or gives a hint if you have not
# started. Solutions are at the very end of each notebook, collapsed.
#
# ### Exercise 1: who predicts what?
# With 0-based tokens $t_0, t_1, \dots$: the stage at depth $k$ ($k = 0$ is the main model) sits at position $i$.
# Return the index of the token it predicts.

# %%
def target_index(i, k):
    # YOUR CODE HERE: return the index of the token predicted by depth k at position i
    return None


check("target_index", target_index)

# %% [markdown]
# ### Exercise 2: how big is the drafter?
# DeepSeek-V3's released checkpoint holds 671B main-model parameters and 14B MTP parameters. What fraction of
# the checkpoint is the MTP module? (A fraction between 0 and 1.)

# %%
mtp_share = None   # YOUR ANSWER HERE

check("mtp_share", mtp_share)

# %% [markdown]
# ## Summary
#
# - MTP adds $D$ sequential modules; module $k$ at position $i$ combines the previous state with the embedding
#   of $t_{i+k}$ and predicts $t_{i+k+1}$. They share the embedding and the output head.
# - Depth $k$ has only $T-k$ positions with a target; that is where the slicing in the equations comes from.
# - MTP helps training (denser signal) and inference (a cheap drafter for speculative decoding).
#
# **Next:** [01 · The main model](01_main_model.ipynb).

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def target_index(i, k):
    return i + k + 1


check("target_index", target_index)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
mtp_share = 14 / (671 + 14)

check("mtp_share", mtp_share)
