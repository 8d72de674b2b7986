# %% [markdown]
# # 01 · The main model: tokens in, next-token probabilities out
#
# **You will learn**
# - how text becomes token ids (a byte-level BPE tokenizer trained on the Python standard library);
# - the path through the main model: embedding, pre-norm transformer blocks, final RMSNorm, output head;
# - to load the shipped course model and watch it predict the next token, position by position;
# - how far ahead its MTP modules see: accuracy for the next token, the one after, and the one after that.
#
# **Time:** about 20 minutes; Run All took 4 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## The shipped model and its tokenizer
#
# `load_pretrained()` returns the course model, trained on the Python standard library (code and docstrings), and
# its tokenizer. The model is DeepSeek-V3's architecture at toy scale: dense SwiGLU blocks instead of MoE, ordinary
# multi-head attention instead of MLA, and $D = 2$ MTP modules.

# %% tags=["nbval-check-output"]
from mtp_lab import load_pretrained

model, tokenizer = load_pretrained(device=device)
print(model.config)
print(model.parameter_counts())

# %% [markdown]
# ## Tokens
#
# The tokenizer is a byte-level BPE with 2048 entries: 256 single bytes, an end-of-text marker, and merges learned
# from the training files. Any string round-trips exactly; frequent Python fragments (`self`, `return`, runs of
# indentation) become few tokens: the list below shows how this line is split, spaces included.

# %% tags=["nbval-check-output"]
text = "    def __init__(self, name):\n        self.name = name\n"
ids = tokenizer.encode(text).ids
print(len(text), "characters ->", len(ids), "tokens")
print([tokenizer.decode([i]) for i in ids])
print("round trip exact:", tokenizer.decode(ids) == text)

# %% [markdown]
# ## Through the model, one stage at a time
#
# - **Embedding:** row $t_i$ of a $V \times d$ table, $x_i = W_E[t_i]$.
# - **Blocks:** each is pre-norm, $h = x + \mathrm{Attn}(\mathrm{RMSNorm}(x))$, then
#   $\mathrm{out} = h + \mathrm{FFN}(\mathrm{RMSNorm}(h))$, with causal attention (position $i$ sees $0..i$), rotary
#   positions and a SwiGLU feed-forward.
# - **Final RMSNorm and output head:** a $d \to V$ linear map gives logits; `logits[:, i]` scores every candidate
#   for $t_{i+1}$.
#
# We run the stages by hand and compare with the model's own forward.

# %% tags=["nbval-check-output"]
tokens = torch.tensor([ids], device=device)                 # (B, T)
with torch.no_grad():
    x = model.embed(tokens)                                  # (B, T, C)
    print("embedding", tuple(x.shape))
    for block in model.layers:
        x = block(x)                                         # (B, T, C), same shape through every block
    h = model.norm(x)                                        # final RMSNorm
    logits = model.head(h)                                   # (B, T, V)
    print("logits   ", tuple(logits.shape))
    print("by hand == model.forward_main:", torch.allclose(logits, model.forward_main(tokens)[0], atol=1e-4))

# %% [markdown]
# ## Watch next-token prediction
#
# At every position the model assigns a probability to each of the 2048 tokens. Here is what it expects after the
# whole snippet, and its top guess at each position against what actually came next.

# %% tags=["nbval-check-output"]
probs = logits[0, -1].softmax(-1)
top5 = probs.topk(5).indices.tolist()
print("after the snippet:", [(tokenizer.decode([t]), round(probs[t].item(), 3)) for t in top5])
guess = logits[0, :-1].argmax(-1)                            # prediction for t_{i+1} at position i
for i in range(len(ids) - 1):
    mark = "ok" if guess[i] == ids[i + 1] else "  "
    print(f"{i:2d} {tokenizer.decode([ids[i]])!r:>12} -> guess {tokenizer.decode([guess[i].item()])!r:>12}  "
          f"actual {tokenizer.decode([ids[i + 1]])!r:>12} {mark}")

# %% [markdown]
# The cross-entropy of the snippet is the average of $-\log p(t_{i+1})$ over positions, the quantity training
# minimises:

# %% tags=["nbval-check-output"]
import torch.nn.functional as F

loss = F.cross_entropy(logits[0, :-1], tokens[0, 1:])
print(f"cross-entropy {loss.item():.3f} nats per token, perplexity {loss.exp().item():.1f}")

# %% [markdown]
# ## Looking further ahead: the MTP modules
#
# The full forward also returns the MTP modules' logits: depth 1 at position $i$ predicts $t_{i+2}$, depth 2 predicts
# $t_{i+3}$. They are not guessing blind: depth 1 also embeds the true $t_{i+1}$ (depth 2 the true $t_{i+2}$), so
# its task is the main model's task one position later, done with one extra block on top of the main model's state
# instead of the whole model. How often is each right on a longer piece of code? (How close the modules come to the
# main model decides how useful they are as drafters, notebook 06.)

# %% tags=["nbval-check-output"]
code = '''def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    if not values:
        raise ValueError("mean() of an empty list")
    return sum(values) / len(values)


class Counter:
    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1
        return self.count
'''
seq = torch.tensor([tokenizer.encode(code).ids], device=device)
with torch.no_grad():
    out = model(seq)
print(f"{seq.shape[1]} tokens")
print(f"main    (t+1) top-1 accuracy {(out.logits[0, :-1].argmax(-1) == seq[0, 1:]).float().mean().item():.3f}")
for k, lg in enumerate(out.mtp_logits, start=1):
    acc = (lg[0, :-1].argmax(-1) == seq[0, k + 1:]).float().mean().item()   # [:, i] predicts t_{i+k+1}
    print(f"depth {k} (t+{k + 1}) top-1 accuracy {acc:.3f}")

# %% [markdown]
# ## Generating text
#
# Greedy decoding repeats "predict, append the argmax, predict again", one main-model forward per token (with a KV
# cache, so each forward only processes the new token).
#
# What to expect: a 5.8M-parameter model trained for under an hour on one library writes text with the right
# *shape* (indentation, keywords, docstring phrases, plausible names) but little meaning, and greedy text soon
# repeats itself. That is enough for this course: everything it studies (what the MTP modules predict, how often
# the main model agrees with them, how fast decoding gets) is measured on this model's own behaviour, sense or not.

# %%
from mtp_lab.decoding import generate

result = generate(model, tokenizer.encode("def is_even(n):\n").ids, max_new_tokens=40)
print(tokenizer.decode(result.sequence))

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: the next token
# Given logits of shape (B, T, V), return the greedy next token of each sequence, shape (B,).

# %%
def greedy_next(logits):
    # YOUR CODE HERE
    return None


check("greedy_next", greedy_next)

# %% [markdown]
# ### Exercise 2: parameters of one block
# Return the number of parameters of one transformer block of this model as a function of `d_model` and `d_ff`
# (attention without biases, a SwiGLU feed-forward, two RMSNorm gains).

# %%
def block_params(d_model, d_ff):
    # YOUR CODE HERE
    return None


check("block_params", block_params)

# %% [markdown]
# ## Summary
#
# - Text -> byte-level BPE ids -> embedding $(B, T, d)$ -> $L$ pre-norm blocks -> final RMSNorm -> head $(B, T, V)$.
# - `logits[:, i]` scores $t_{i+1}$; the loss is the cross-entropy against the next tokens.
# - The MTP modules reuse this machinery (and the true tokens up to $t_{i+k}$) to predict $t_{i+2}$, $t_{i+3}$, with
#   one block each. How they are built is the topic of notebooks 02 and 03.
#
# **Next:** [02 · RMSNorm](02_rmsnorm.ipynb).

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def greedy_next(logits):
    return logits[:, -1].argmax(-1)


check("greedy_next", greedy_next)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def block_params(d_model, d_ff):
    attention = 4 * d_model * d_model          # wq, wk, wv, wo
    swiglu = 3 * d_model * d_ff                # w1, w3, w2
    norms = 2 * d_model                        # attn_norm and ffn_norm gains
    return attention + swiglu + norms


check("block_params", block_params)
