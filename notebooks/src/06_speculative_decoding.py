# %% [markdown]
# # 06 · Speculative decoding with the MTP module: draft, verify, accept
#
# **You will learn**
# - the speculative loop: the MTP module drafts $k$ tokens, the main model checks them all in **one** forward, a
#   prefix is accepted and the main model adds one token of its own;
# - greedy verification, and why its output is token for token the main model's greedy output;
# - speculative **sampling** (accept with $\min(1, p/q)$, else sample the residual $\max(0, p-q)$), and an empirical
#   check that the output distribution is exactly the main model's;
# - the live visualizer: every draft, its probability, and the verdict.
#
# **Time:** about 40 minutes; Run All took 20 s
# in JupyterLab in a browser on 2 CPU cores, on a shared machine: yours may differ.

# %%
import torch

from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## The loop
#
# With tokens $t_0 \dots t_n$ committed ($t_n$ just sampled), one step of speculative decoding:
#
# 1. **draft:** the MTP module at position $n-1$ combines the main model's state $h_{n-1}$ with $t_n$ and proposes
#    $d_1$; chaining the modules gives $d_2, \dots, d_k$. Each draft costs one small module forward.
# 2. **verify:** the main model runs **one** forward over $[t_n, d_1, \dots, d_k]$ (with its KV cache) and returns
#    its own distributions $p_1 \dots p_{k+1}$ for those $k+1$ positions.
# 3. **accept:** drafts are checked left to right; the first rejected one is replaced by a token from the main
#    model, and if all $k$ pass, the main model's $p_{k+1}$ gives a **bonus** token. Rejected positions are cut from
#    every KV cache.
#
# Each step therefore emits between 1 and $k+1$ tokens for **one** main-model forward. We use the shipped course
# model (trained in notebook 04's recipe on the Python standard library).

# %% tags=["nbval-check-output"]
from mtp_lab import load_pretrained

model, tokenizer = load_pretrained(device=device)
torch.set_num_threads(1)   # batch-1 decoding of a small model: one CPU thread is fastest (no thread sync)
print(model.config.mtp_depth, "MTP modules,", model.parameter_counts()["total"], "parameters")
prompt = tokenizer.encode("def read_file(path):\n    with open(path) as f:\n").ids
print(len(prompt), "prompt tokens")

# %% [markdown]
# ## Greedy: the same output, fewer main-model forwards
#
# At temperature 0 a draft is kept exactly when it equals the main model's argmax at that position. Every emitted
# token is therefore the main model's own greedy choice: the output is **identical** to plain greedy decoding.

# %% tags=["nbval-check-output"]
from mtp_lab.decoding import generate, speculative_generate

plain = generate(model, prompt, max_new_tokens=48)
spec = speculative_generate(model, prompt, max_new_tokens=48, num_draft=1)
s = spec.stats
print("identical output:", spec.tokens == plain.tokens)
print(f"main-model forwards: plain {plain.stats.main_forwards}, speculative {s.main_forwards}")
print(f"drafted {s.drafted}, accepted {s.accepted}: acceptance rate {s.acceptance_rate:.3f}, "
      f"tau {s.mean_acceptance_length:.3f} tokens per verify forward")

# %% [markdown]
# The text both produce:

# %%
print(tokenizer.decode(prompt + spec.tokens))

# %% [markdown]
# ## One step under the microscope
#
# `speculative_steps` runs the same engine but yields one event per main-model forward: what was drafted, what the
# main model wanted, what was kept. Step 0 is the prefill (no drafts). Here with $k = 2$ drafts per step:

# %% tags=["nbval-check-output"]
from mtp_lab.decoding import speculative_steps


def show(ids):
    return [tokenizer.decode([i]) for i in ids]


for step in speculative_steps(model, prompt, max_new_tokens=12, num_draft=2):
    if step.index == 0:
        continue
    wanted = step.target_probs.argmax(-1).tolist()          # the main model's argmax at each of the k+1 positions
    print(f"step {step.index}: drafts {show(step.draft_tokens)}  main wants {show(wanted)}  "
          f"accepted {step.n_accepted}  emitted {show(step.emitted)}{'  (bonus)' if step.is_bonus else ''}")

# %% [markdown]
# ## Sampling: accept with $\min(1, p/q)$
#
# With temperature $> 0$ the drafter samples $x \sim q$ and the main model's distribution is $p$. Accepting $x$ with
# probability $\min(1, p(x)/q(x))$ and, on rejection, sampling from the residual $\mathrm{norm}(\max(0, p - q))$
# makes the emitted token distributed **exactly** as $p$ (Leviathan et al. 2023):
#
# $$P(\text{emit } x) = \underbrace{q(x)\min\left(1, \tfrac{p(x)}{q(x)}\right)}_{\text{drafted and accepted}}
# + \underbrace{\Big(1 - \sum_y \min(p(y), q(y))\Big)}_{\text{some draft rejected}}
# \cdot \frac{\max(0, p(x) - q(x))}{\sum_y \max(0, p(y) - q(y))} = p(x).$$
#
# The probability that a draft is accepted is $\sum_x \min(p(x), q(x)) = 1 - \mathrm{TV}(p, q)$: the closer the
# drafter is to the main model, the more it is accepted. The identity holds for **any** $q$, provided $q$ is the
# distribution the draft was really drawn from; the engine shapes $q$ with the same temperature, top-k and top-p as
# $p$ only because a $q$ closer to $p$ is accepted more often. Here are $p$ and $q$ at one real position,
# temperature 1:

# %% tags=["nbval-check-output"]
from mtp_lab.sampling import SamplingParams

params = SamplingParams(temperature=1.0)
with torch.no_grad():
    out = model(torch.tensor([prompt], device=device))
p = params.probs(out.logits[0, -1])          # main model at the last position: the token after the prompt
q = params.probs(out.mtp_logits[0][0, -1])   # MTP module 1 one position earlier (it embeds the last prompt
                                             # token): its guess for the same token
for tok in p.topk(5).indices.tolist():
    print(f"{tokenizer.decode([tok])!r:>12}  p = {p[tok].item():.3f}  q = {q[tok].item():.3f}")
print(f"P(draft accepted) = sum min(p, q) = {torch.minimum(p, q).sum().item():.3f}")

# %% [markdown]
# ### Empirical check: is the output distribution really $p$?
#
# We run the package's accept/reject rule (`speculative_accept`, the function the engine calls) 20 000 times on
# these $p$ and $q$ and compare the histogram of emitted tokens with $p$. As a yardstick, the distance between two
# independent sets of 20 000 samples from $p$ itself shows the sampling noise.

# %% tags=["nbval-check-output"]
from mtp_lab.decoding import speculative_accept

p, q = p.cpu(), q.cpu()     # draws on the CPU's generator: the same numbers on a laptop and on a GPU machine
gen = torch.Generator().manual_seed(0)
N = 20_000
drafts = torch.multinomial(q, N, replacement=True, generator=gen).tolist()       # x ~ q
emitted = []
for x in drafts:
    n_accepted, replacement, _ = speculative_accept([x], q[None], torch.stack([p, p]), params, gen)
    emitted.append(x if n_accepted else replacement)   # accepted: x stands; rejected: a residual sample
emitted = torch.tensor(emitted)
empirical = torch.bincount(emitted, minlength=p.numel()).float() / N
fresh = torch.multinomial(p, N, replacement=True, generator=torch.Generator().manual_seed(1))
noise = torch.bincount(fresh, minlength=p.numel()).float() / N       # its own generator: independent of the loop


def tv(a, b):
    return 0.5 * (a - b).abs().sum().item()


print(f"TV(q, p)                   = {tv(q, p):.3f}   (the drafter alone)")
print(f"TV(speculative output, p)  = {tv(empirical, p):.3f}")
print(f"TV(fresh samples of p, p)  = {tv(noise, p):.3f}   (sampling noise at N = {N})")

# %% [markdown]
# The speculative output is as close to $p$ (TV {{0.034}}) as fresh samples of $p$ are ({{0.032}}), while the drafter
# alone is much further away ({{0.531}}). (The package's tests run the same check end to end through the generation engine with exact
# distributions.) Note that this is **only** true with the residual: a "speculative" loop that accepts drafts by a
# threshold, or keeps rejected drafts, changes what the model says.

# %% [markdown]
# ## The live visualizer
#
# Press **play** (or **step**) to watch the engine: each token is marked as an accepted draft, a rejected draft, a
# correction or a bonus; the table shows the current step's drafts with $q$, $p$, the ratio $p/q$, the uniform draw
# $u$ and the verdict; the charts track $\tau$ and the per-position acceptance. Change $k$, the temperature, the
# drafter (MTP or n-gram) or switch on the FP8 drafter, and the run restarts.

# %%
from mtp_lab.viz import speculative_dashboard

speculative_dashboard(model, tokenizer, prompt="def read_file(path):\n    with open(path) as f:\n")

# %% [markdown]
# And the race: plain decoding against speculative decoding on the wall clock. Press **race**: both runs are measured
# one after the other on this machine, then replayed side by side, *slowed down* so that the room can follow (the
# status line says by how much; the "replay" menu picks real time instead). The chart's time axis is the measured
# time. The speed-up it prints is this machine's, at this moment: one MTP draft costs a small fraction of the
# 24-block main model's forward, so speculative decoding usually wins clearly here, but a busy machine (other
# programs, a second kernel, the browser itself) moves the ratio by tens of percent from press to press; press
# again to see the spread, and notebook 07 for what the number depends on.

# %%
from mtp_lab.viz import speculative_race

speculative_race(model, tokenizer, prompt="def read_file(path):\n    with open(path) as f:\n")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: the acceptance probability
# `p` and `q` are (V,) tensors, `x` a drafted token id. Return the probability of accepting `x`, as a float.

# %%
def accept_prob(p, q, x):
    # YOUR CODE HERE
    return None


check("accept_prob", accept_prob)

# %% [markdown]
# ### Exercise 2: the residual distribution
# Return the distribution to sample from after a rejection, as a (V,) tensor.

# %%
def residual(p, q):
    # YOUR CODE HERE
    return None


check("residual", residual)

# %% [markdown]
# ### Exercise 3: greedy verification
# `draft` is the list of drafted tokens, `target` the main model's argmax at the same positions. Return how many
# drafts are accepted.

# %%
def greedy_accepted(draft, target):
    # YOUR CODE HERE
    return None


check("greedy_accepted", greedy_accepted)

# %% [markdown]
# ## Summary
#
# - One step: $k$ cheap drafts, **one** main-model forward over $k+1$ positions, 1 to $k+1$ tokens out.
# - Greedy verification reproduces greedy decoding exactly; speculative sampling (accept $\min(1,p/q)$, else the
#   residual) reproduces the main model's sampling distribution exactly. It is **lossless**.
# - A draft is accepted with probability $1 - \mathrm{TV}(p, q)$: the better the MTP module imitates the main model,
#   the more tokens per forward.
#
# **Next:** [07 · The acceptance lab](07_acceptance_lab.ipynb): what makes acceptance go up or down.

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def accept_prob(p, q, x):
    return min(1.0, (p[x] / q[x]).item())


check("accept_prob", accept_prob)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def residual(p, q):
    r = (p - q).clamp(min=0)
    return r / r.sum()


check("residual", residual)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def greedy_accepted(draft, target):
    n = 0
    for d, t in zip(draft, target, strict=False):
        if d != t:
            break
        n += 1
    return n


check("greedy_accepted", greedy_accepted)
