# %% [markdown]
# # 09 · Beyond the chain: trees, hybrid drafts, adaptive size
#
# **You will learn**
# - why one candidate per position caps a chain of MTP drafts, and how a **tree** of candidates is verified in ONE
#   main-model forward (a tree attention mask and tree position ids), losslessly;
# - the sampling rule for sibling candidates (recursive rejection sampling; for deterministic candidates: draw once
#   from the target at each node, follow the matching child), built inline and checked against the package;
# - lookup as a tree (what followed every earlier match) and a **hybrid** drafter (MTP modules + that lookup tree in
#   one tree), and who proposes the tokens that get accepted;
# - the measured **verify cost** $v(n)$ of this CPU, the tree sizes it implies, and an **adaptive** drafter that sizes
#   each step's tree from it;
# - chain vs tree vs hybrid vs adaptive on the same held-out prompts, what the serving engines do, and why the gains
#   shrink at large batch (notebook 08's roofline).
#
# **Time:** about 40 minutes; the notebook runs in about 25 s on 2 CPU cores (the benchmark numbers are read from
# the stored `mtp-lab bench` run; the command that makes them is printed with them).

# %%
from mtp_lab.course import check, environment_report

device = environment_report()

# %% [markdown]
# ## Set-up
#
# The shipped course model (24 main blocks, 2 MTP modules) and a prompt from Python code, where copying is common.

# %% tags=["nbval-check-output"]
import torch

from mtp_lab import load_pretrained

model, tokenizer = load_pretrained(device=device)
torch.set_num_threads(1)   # batch-1 decoding of a small model: one CPU thread is fastest
prompt = tokenizer.encode("def parse_args(argv):\n    parser = argparse.ArgumentParser()\n"
                          "    parser.add_argument('--input')\n    parser.add_argument(").ids
print(len(prompt), "prompt tokens;", model.config.mtp_depth, "MTP modules")

# %% [markdown]
# ## From a chain to a tree
#
# A chain drafts one token per position: if $d_1$ is wrong, $d_2, d_3, \dots$ are wasted. The MTP module's
# distribution usually holds the right token among its top few, so a **tree** keeps several: the top-$b$ tokens at
# each node, the best nodes by *path score* (the product along the path of each node's estimated chance of
# acceptance, learned from the drafter's probabilities and what was accepted), within a node budget. The tree hangs
# under the last committed token $t_n$ (the *root*).
#
# One verify forward scores every node if each node sees exactly what it would see on its own path:
# - **tree mask**: a node attends to the committed prefix, its ancestors and itself, not to its siblings or cousins;
# - **tree position ids**: prefix length + depth (siblings share a position).
#
# `mtp_lab.tree.ancestor_mask` builds both from the parent of each entry. A small tree: the root (entry 0) with two
# children (1, 2), entry 3 under 1 and entry 4 under 3, after a prefix of 2 cached tokens:

# %% tags=["nbval-check-output"]
from mtp_lab.tree import ancestor_mask

mask, depth = ancestor_mask([-1, 0, 0, 1, 3], prefix=2)
print(mask.int())
print("position ids:", (2 + depth).tolist())

# %% [markdown]
# The test that matters: the logits at every node of one tree forward equal a separate, cache-free forward over the
# prefix and that node's path. Here on the course model, a tree of three branches after the prompt:

# %% tags=["nbval-check-output"]
tree_tokens = [prompt[-1]] + tokenizer.encode("'--output'").ids[:2] + tokenizer.encode("\"-").ids[:1]
parents = [-1, 0, 1, 0]                                   # root, a child, its child, a sibling of the first child
cache = model.new_cache()
with torch.no_grad():
    model.forward_main(torch.tensor([prompt[:-1]], device=device), cache)
    mask, depth = ancestor_mask(parents, len(prompt) - 1, device=device)
    logits, _ = model.forward_main(torch.tensor([tree_tokens], device=device), cache, mask, len(prompt) - 1 + depth)
    worst = 0.0
    for e in range(len(tree_tokens)):
        path, x = [], e
        while x >= 0:
            path.insert(0, tree_tokens[x])
            x = parents[x]
        alone, _ = model.forward_main(torch.tensor([prompt[:-1] + path], device=device))
        worst = max(worst, (logits[0, e] - alone[0, -1]).abs().max().item())
print("tree-forward logits equal path-alone logits (max difference < 1e-4):", worst < 1e-4)

# %% [markdown]
# After verification the main model keeps the root and the accepted path; its KV cache (and each MTP module's) is
# cut back to **that path**, its entries moved to consecutive positions (`mtp_lab.tree.keep_path`), not to a prefix
# of the flattened node order. The tests compare every cache after every step with a fresh forward over the
# committed tokens (`tests/test_tree.py`).
#
# ## Watch the trees
#
# The hybrid drafter at work on the prompt above: press **step** to see the next verify forward's tree. Green is the
# accepted path, vermillion the branches the target's draw did not take, grey what was never reached; orange is the
# target's own token after a miss, sky blue the bonus after a leaf. Circles come from the MTP modules (hover: which
# module), squares from n-gram lookup, diamonds from both.

# %%
import mtp_lab.viz as viz

view = viz.tree_view(model, tokenizer, prompt=tokenizer.decode(prompt), drafter="hybrid", num_draft=8)
view

# %% [markdown]
# ## The rule for siblings
#
# A chain drafts $d \sim q$ and accepts it with $\min(1, p/q)$. A tree has several candidates at a node, and the exact
# rule tries them in turn: **recursive rejection sampling** (SpecInfer; without replacement, Jeon et al. 2024):
#
# > stand on a node, with $p'$ = the target's distribution there. For each child $x$ in turn, drawn from its proposal
# > $r_x$: accept it with probability $\min(1, p'(x)/r_x(x))$ and move to it; on rejection replace $p'$ by
# > $\mathrm{norm}(\max(0, p' - r_x))$ and try the next child. If every child is rejected, emit $y \sim p'$. At a
# > leaf, $y \sim p$ is the bonus.
#
# Each sibling is one round of the chain's rule, and each round leaves the emitted token distributed as $p'$, so the
# output is distributed exactly as plain sampling, whatever the tree. Children come in two kinds:
# - **sampled**: at temperature > 0 the MTP modules' children are draws from $q$ without replacement (a later draw's
#   $r_x$ is $q$ without the tokens drawn before it, renormalised). They are tried in the order drawn, and whether a
#   drawn node is verified must not depend on the token it drew (the package scores it by its rank and the drafter's
#   confidence, never by its own token), or the walk would be biased.
# - **deterministic**: a lookup continuation, or a greedy top-$b$ token: $r_x$ is one-hot, so it passes with
#   $p'(x)$ and a rejection removes $x$ from $p'$. With only such children the rule comes to: draw $y \sim p$, follow
#   the child holding $y$, else emit $y$ (SGLang's MTP topk tree); at temperature 0, follow the argmax.
#
# Built inline, and run against the package's `tree_accept`: a root with a lookup candidate (token 2, with a
# lookup child of its own) and two draws from the drafter's $q$, fixed target rows:

# %% tags=["nbval-check-output"]
from mtp_lab.sampling import SamplingParams
from mtp_lab.tree import tree_accept

V = 6
g = torch.Generator().manual_seed(0)
p = torch.softmax(torch.randn(5, V, generator=g, dtype=torch.float64), -1)   # rows: root, nodes 0..3
q = torch.softmax(torch.randn(V, generator=g, dtype=torch.float64), -1)      # the drafter's q at the root
onehot = torch.eye(V, dtype=torch.float64)


def draft(gen):
    """Node 0: lookup token 2 (one-hot), node 3 under it: token 0; nodes 1, 2: draws from q without token 2."""
    r1 = q.clone()
    r1[2] = 0
    r1 /= r1.sum()
    x1 = int(torch.multinomial(r1, 1, generator=gen))
    r2 = r1.clone()
    r2[x1] = 0
    r2 /= r2.sum()                                                          # without replacement
    x2 = int(torch.multinomial(r2, 1, generator=gen))
    return [2, x1, x2, 0], [-1, -1, -1, 0], torch.stack([onehot[2], r1, r2, onehot[0]])


def rrs_walk(tokens, parents, p, r, gen):
    path, node = [], -1
    while True:
        target = p[node + 1]
        for c in [i for i, par in enumerate(parents) if par == node]:          # the children, in order
            x = tokens[c]
            if torch.rand((), generator=gen, dtype=torch.float64) < target[x] / r[c, x]:
                break                                                           # accepted: move to c
            target = (target - r[c]).clamp_min(0)
            target = target / target.sum()                                      # rejected: the residual
        else:
            return path, int(torch.multinomial(target, 1, generator=gen))       # all rejected, or a leaf
        path.append(c)
        node = c


n = 20_000
params = SamplingParams(temperature=1.0)
mine, pkg = torch.zeros(V, V + 1), torch.zeros(V, V + 1)   # (first token, second token or "stopped")
g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
for counts, gen, walk in ((mine, g1, rrs_walk), (pkg, g2, lambda *a: tree_accept(*a[:3], a[3], params, a[4]))):
    for _ in range(n):
        tokens, parents, r = draft(gen)
        path, y = walk(tokens, parents, p, r, gen)
        out = [tokens[i] for i in path] + [y]
        counts[out[0], out[1] if len(out) > 1 else V] += 1
print(f"first token, inline walk vs the target p at the root: TV {0.5 * (mine.sum(1) / n - p[0]).abs().sum():.3f}")
print(f"first token, the drafter's q vs p at the root:         TV {0.5 * (q - p[0]).abs().sum():.3f}")
print(f"joint of the first two tokens, inline walk vs tree_accept: TV {0.5 * (mine / n - pkg / n).abs().sum():.3f}")
print(f"moved on at the root: inline {1 - mine[:, V].sum() / n:.3f}, tree_accept {1 - pkg[:, V].sum() / n:.3f}")

# %% [markdown]
# The inline walk's first token lies {{TV 0.004}} from $p$, though the drafter's $q$ is {{TV 0.635}} away from it. The
# inline walk and `tree_accept` agree on the joint of the first two tokens to {{TV 0.026}}, what sampling noise alone
# gives for two samples of 20 000 draws over 42 outcomes (about 0.026), and move on at the root alike ({{0.715}} and
# {{0.720}}).
# The package's exactness tests go further: the probability of moving on at such a node, enumerated over every draw,
# is matched, and that enumeration returns $p$ exactly (`tests/test_tree.py`); on a model whose target is a known
# Markov chain, the emitted tokens of the tree, hybrid, adaptive and suffix drafters pass chi-square tests on single
# tokens and on pairs (`tests/test_speculative_sampling.py`); greedy trees reproduce plain decoding token for token.

# ### Exercise 1: the walk over deterministic candidates
#
# Write the walk for deterministic candidates (the rule's one-hot case) with a given sampler: `sample(row)` returns one token drawn from a row of target probabilities.
# `p` has one row per entry: the root first, then the nodes in the order of `tokens`. Return `(path, next_token)`:
# the accepted nodes (indices into `tokens`, root side first) and the token the step adds.

# %%
def tree_walk(tokens, parents, p, sample):
    # YOUR CODE HERE
    return None


check("tree_walk", tree_walk)

# %% [markdown]
# ## Hybrid: MTP and n-gram in one tree
#
# Code repeats itself: argument lists, attribute names, whole lines. Prompt lookup (an n-gram drafter, `ngram`) finds
# the context's last few tokens earlier in the text and proposes what followed their latest occurrence, for free (no
# weights), and sometimes far ahead. When the same tokens occurred several times and went on differently, one guess
# wastes the others: `suffix` puts what followed *every* earlier match into one tree, the continuations most matches
# share first (SuffixDecoding's frequency tree). The hybrid drafter puts that lookup tree into the same tree as the
# MTP candidates: from the root, and again from the best MTP leaf (so the lookup continues where the modules stop),
# merging nodes that both propose. Every accepted token records who proposed it. All drafters give plain decoding's
# output on the prompt above:

# %% tags=["nbval-check-output"]
from mtp_lab import DRAFTERS, generate, speculative_generate

ref = generate(model, prompt, 48)
for name in ("mtp", "ngram", "suffix", "mtp-tree", "hybrid"):
    out = speculative_generate(model, prompt, 48, num_draft=8 if name != "mtp" else 4, drafter=name)
    s = out.stats
    print(f"{name:9s} identical to plain: {out.tokens == ref.tokens}  tau {s.mean_acceptance_length:.2f}  "
          f"accepted from {dict(sorted(s.accepted_by_source.items()))}")
print("every drafter by name:", DRAFTERS)

# %% [markdown]
# ## What a verify forward costs: $v(n)$
#
# A tree of $N$ nodes is verified by one forward over $N + 1$ tokens. How much more does that cost than the one-token
# forward of plain decoding? `mtp-lab bench --verify-cost 64` times it for $n = 1..64$ (process CPU time, one thread,
# each $n$ in turn per repeat, medians; a non-decreasing fit smooths the noise). The stored run of this VM:

# %% tags=["nbval-check-output"]
import json
from pathlib import Path

import plotly.graph_objects as go

import mtp_lab

RESULTS = Path(mtp_lab.__file__).resolve().parents[1] / "docs" / "results"
vc = json.loads((RESULTS / "verify_cost_threads1.json").read_text())
print(f"AR step {vc['ar_ms']:.2f} ms CPU; v(2) = {vc['v_fit'][1]:.2f}, v(8) = {vc['v_fit'][7]:.2f}, "
      f"v(16) = {vc['v_fit'][15]:.2f}, v(32) = {vc['v_fit'][31]:.2f}, v(64) = {vc['v_fit'][63]:.2f}; "
      f"one MTP module call c = {vc['c']:.2f}")
for x, n_tokens in vc["largest_n_within"].items():
    print(f"v(n) <= {x}: a tree of up to {n_tokens - 1} nodes (n = nodes + root = {n_tokens})")

# %% [markdown]
# The curve, with its fit:

# %%
fig = viz.theme.apply(go.Figure())
fig.add_scatter(x=vc["n"], y=vc["v"], mode="markers", name="measured (median)", marker=viz.theme.marker("main", 7))
fig.add_scatter(x=vc["n"], y=vc["v_fit"], mode="lines", name="non-decreasing fit", line=viz.theme.line("reference"))
fig.update_layout(title="verify cost on this CPU: one forward over n tokens, in AR steps", height=viz.theme.height(320),
                  xaxis_title="tokens in the verify forward (tree nodes + root)", yaxis_title="v(n)")
fig

# %% [markdown]
# On this CPU the forward is not free: {{v(8) = 1.40}}, {{v(16) = 1.57}}, {{v(64) = 2.77}} AR steps. A tree of
# {{up to 9 nodes}} fits in 1.5 AR steps, {{up to 27 nodes}} in 2. So the fixed trees here hold at most 16 nodes,
# and the adaptive drafter decides per step, from this curve and the measured draft cost, how many of its best nodes
# (up to 32) to verify: it takes them best first, and the $n$-th goes in while
#
# $$s_n \;>\; r\,\big(v(n+1) - v(n)\big)$$
#
# with $s_i$ the acceptance estimates of the best nodes and $r$ the rate the generation already reaches, in tokens per
# AR-token time, measured as it runs. A node's estimate is its path score: the product, along its path, of how often
# nodes of its kind were accepted once their parent was (MTP module and probability bin, or n-gram match length and
# share of the matches), learned online from every drafted node, verified or not. A node earns its place when it
# brings more than $r$ times what it adds to the verify forward (the root rides in every forward, so $n$ nodes cost
# $v(n+1)$).
#
# Why not maximise this step's own rate, $(1 + \sum s_i) / (\text{calls}\cdot c + v(N+1))$? Because then a confident
# step's own high rate sets the bar and stops its tree early, while a doubtful step grows a big tree of poor nodes:
# the opposite of what pays. What counts is the rate of the whole generation (the renewal-reward argument), so each
# node is weighed against $r$. The drafter also stops drafting another MTP level when that level's expected children
# cannot pay $r\,c$ for the call.
#
# Why node by node, and not the best $N$ overall, $\arg\max_N \sum_{i \le N} s_i - r\,v(N+1)$? On a convex $v$ the
# two agree. On this CPU's steppy curve the argmax looks past a jump at the nodes behind it, so whether a node is
# verified can hang on its own children. Under sampling that breaks exactness: a drawn node would be verified more
# often when it is a token whose children the drafter is sure of, and the walk over siblings assumes every drawn
# node is tried whatever token it drew. The node-by-node rule decides each node from the ones ranked before it.
#
# On a GPU the picture changes: notebook 08's roofline puts the ridge of a 7B model on an H100-class GPU at about
# 206 positions. Below it a forward reads the same weights whatever $n$, so $v(n) \approx 1$ for trees of tens of
# nodes, and trees pay far more than here. At batch $B$ the forward carries $B(N+1)$ positions and reaches the ridge
# much sooner:

# %% tags=["nbval-check-output"]
ridge = 989e12 / 4.8e12              # notebook 08: FLOPs per byte of an H100-class GPU = positions at the ridge
for nodes in (1, 4, 16, 64):
    print(f"tree of {nodes:2d} nodes: verify stays memory-bound up to batch {ridge / (nodes + 1):5.1f}")

# %% [markdown]
# Try it on this machine. `make_drafter(model, "adaptive")` times $v(n)$ and the module call $c$ where it runs (a
# second or two), then sizes every step from them and from the rate it reaches. Build it once and reuse it: each
# build measures again, and its acceptance estimates and its rate keep learning from one generation to the next.
# Your numbers below are your machine's, so they differ from the stored run; the output never does.

# %%
from mtp_lab.decoding import make_drafter

adaptive = make_drafter(model, "adaptive")
cost = adaptive.cost
print(f"this machine: an AR step {cost.ar_ms:.2f} ms of CPU, v(16) = {cost.verify(16):.2f}, module call c = {cost.c:.3f}")
for run in (1, 2):
    out = speculative_generate(model, prompt, 48, num_draft=8, drafter=adaptive)
    s = out.stats
    print(f"run {run}: identical to plain: {out.tokens == ref.tokens}, tau {s.mean_acceptance_length:.2f}, "
          f"{s.drafted / s.steps:.1f} nodes and {s.draft_forwards / s.steps:.1f} module calls per drafting step")

# %% [markdown]
# ### Exercise 2: how big a tree?
#
# `scores` are the acceptance estimates of the best candidate nodes (descending), `v[n-1]` the verify cost of $n$
# tokens and `r` the rate the generation reaches. Return the number of nodes $N$ (0 to `len(scores)`) to verify:
# take the nodes best first while the $n$-th brings more than it costs, $s_n > r\,(v(n+1) - v(n))$.

# %%
def tree_size(scores, v, r):
    # YOUR CODE HERE
    return None


check("tree_size", tree_size)

# %% [markdown]
# ## Chain vs tree vs hybrid vs adaptive
#
# The stored benchmark: `mtp-lab bench` on the command's default 16 held-out prompts of the test split, 128 new
# tokens each, greedy, batch 1, one thread, 3 repeats, every configuration interleaved prompt by prompt, on a quiet
# machine. For each drafter the row of its best depth $k$ (by the median wall-clock speed-up), with the range over
# the repeats, the speed-up in process CPU time, $\tau$, tokens per verify forward, nodes per step, and who proposed
# the accepted drafts. Every output was checked identical to plain decoding.

# %% tags=["nbval-check-output"]
def best_rows(rows):
    best = {}
    for r in rows[1:]:
        if r["drafter"] not in best or r["speedup"] > best[r["drafter"]]["speedup"]:
            best[r["drafter"]] = r
    return best


bench = json.loads((RESULTS / "bench_beyond_chain_threads1.json").read_text())
rows = bench["rows"]
print(f"{bench['source']}; {bench['prompts']} prompts x {bench['new_tokens']} tokens, {bench['repeats']} repeats, "
      f"{bench['threads']} thread; plain decoding {rows[0]['ms_per_main_forward']['ar_token']:.2f} ms per token; "
      f"identical to plain decoding: {all(r['identical_to_ar'] == r['prompts'] for r in rows)}")
best = best_rows(rows)
print(f"{'drafter':9s} {'k':>2s} {'tau':>5s} {'tok/F':>5s} {'nodes':>5s} {'speed-up':>8s} {'range':>11s} {'CPU':>6s}"
      f"  accepted from")
for name, r in best.items():
    src = r["accepted_by_source"]
    total = sum(src.values())
    print(f"{name:9s} {r['k']:2d} {r['tau']:5.2f} {r['tokens_per_main_forward']:5.2f} {r['nodes_per_step'] or 0:5.1f} "
          f"{r['speedup']:7.2f}x {r['speedup_range'][0]:5.2f}-{r['speedup_range'][1]:4.2f} "
          f"{r['cpu_speedup_median']:5.2f}x  " + ", ".join(f"{k} {v / total:.0%}" for k, v in src.items()))
mtp_based = max((r for n, r in best.items() if n not in ("ngram", "suffix")), key=lambda r: r["speedup"])
print(f"best MTP-based: {mtp_based['drafter']} k={mtp_based['k']}, {mtp_based['speedup']:.2f}x over plain decoding, "
      f"{mtp_based['speedup'] / best['ngram']['speedup']:.2f}x the n-gram drafter's best, "
      f"{mtp_based['speedup'] / best['suffix']['speedup']:.2f}x the lookup tree's")
for r in (best["hybrid"], best["adaptive"]):
    ms = r["ms_per_main_forward"]
    a = ms["ar_token"]
    print(f"{r['drafter']:8s} per verify forward in AR steps: draft {ms['draft'] / a:.2f}, verify {ms['verify'] / a:.2f}, "
          f"overhead {ms['overhead'] / a:.2f}, for {r['tokens_per_main_forward']:.2f} tokens; module calls "
          f"{r['draft_forwards'] / r['main_forwards']:.1f}")
ms = mtp_based["ms_per_main_forward"]
d, o = ms["draft"] / ms["ar_token"], ms["overhead"] / ms["ar_token"]
print(f"{mtp_based['drafter']}'s drafts with a verify as cheap as one token (v = 1): "
      f"{mtp_based['tokens_per_main_forward'] / (d + 1 + o):.2f}x")
for file, what in (("bench_beyond_chain_threads1_8prompts.json", "on 8 other prompts"),
                   ("bench_beyond_chain_threads1_rerun.json", "the same command again"),
                   ("bench_beyond_chain_threads1_rerun2.json", "and a third time")):
    other = json.loads((RESULTS / file).read_text())
    b = best_rows(other["rows"])
    print(f"{what} (plain decoding {other['rows'][0]['ms_per_main_forward']['ar_token']:.2f} ms per token): " +
          ", ".join(f"{n} {b[n]['speedup']:.2f}x ({b[n]['speedup_range'][0]:.2f}-{b[n]['speedup_range'][1]:.2f})"
                    for n in ("adaptive", "hybrid", "suffix", "ngram")))

# %% [markdown]
# What it shows:
#
# - **A tree raises $\tau$, not by itself the speed.** The MTP tree accepts {{5.49}} tokens per step against the
#   chain's {{3.78}}, but 16 nodes cost a verify forward of about 1.9 AR steps on this CPU, plus a module call per
#   level: it ends up slower than the chain ({{1.80x}} against {{2.02x}}).
# - **Lookup pays, and more as a tree**: prompt lookup alone reaches {{2.35x}}; what followed every earlier match, as
#   one tree, {{2.59x}} ({{4.17}} tokens per verify forward against {{3.38}}), with no weights and no module call.
# - **MTP and lookup in one tree, sized per step, is the fastest**: the adaptive tree (up to 32 deep) reaches
#   {{3.00x}} over plain decoding, {{1.28x}} the n-gram drafter's best and {{1.16x}} the lookup tree's, ahead of the
#   fixed hybrid tree ({{2.77x}}) with {{12.6}} nodes and {{1.5}} module calls per verify forward against its
#   {{15.5}} and {{3.7}}. Run again, it led each time: {{2.95x}} against {{2.76x}} (n-gram {{2.33x}}), then
#   {{3.01x}} against {{2.84x}} (n-gram {{2.36x}}); on 8 other prompts, with less copying, {{2.51x}} against
#   {{2.40x}} (n-gram {{1.89x}}). Almost a quarter of its accepted drafts were proposed by the MTP modules, alone or
#   with the lookup.
# - **What bounds it**: every verify forward of the hybrid tree yields about 7 tokens but costs about 2.5 AR steps,
#   1.9 of them the verify forward itself. With a verify as cheap as one token, as on a GPU at batch 1, the adaptive
#   tree's drafts would give {{4.35x}}.
#
# These numbers move with the machine: these runs found plain decoding at 5.3-5.6 ms per token. Earlier runs in a
# faster state (4.4-5.1 ms), with the trees capped at 16 deep, gave the adaptive tree 1.16x-1.22x over lookup: the
# cheaper each token's overhead, the more a big verify forward's arithmetic shows (`docs/speculative.md` keeps the
# earlier runs). Compare drafters within one run.
#
# **At temperature 1** the same command with `--temperature 1` (sampled, so outputs are compared by the exactness
# tests, not token for token). The target is flatter, every drafter's acceptance falls, and the MTP children are
# draws from $q$ tried by the rule above:

# %% tags=["nbval-check-output"]
sampled = json.loads((RESULTS / "bench_beyond_chain_t1.json").read_text())
print(f"temperature {sampled['temperature']}; plain decoding "
      f"{sampled['rows'][0]['ms_per_main_forward']['ar_token']:.2f} ms per token")
for name, r in best_rows(sampled["rows"]).items():
    print(f"{name:9s} k={r['k']:2d}  {r['nodes_per_step'] or 0:4.1f} nodes, {r['tokens_per_main_forward']:4.2f} tokens "
          f"per verify forward  {r['speedup']:4.2f}x ({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f})")

# %% [markdown]
# Sampling turns the ranking around. Lookup barely helps: a sampled continuation rarely copies what came before, so
# `ngram` makes {{1.09}} tokens per verify forward and runs slower than plain decoding ({{0.96x}}). The sampled MTP tree
# makes more tokens per verify forward than the chain ({{2.98}} against {{2.51}}), but it verifies {{13.8 nodes}}
# where the chain verifies 4, and on this CPU that costs more than the extra tokens bring: the chain is fastest
# ({{1.38x}}), the trees reach {{1.26x}} (MTP tree) and {{1.18x}} (hybrid). The adaptive tree shrinks to
# {{3.4 nodes}} and beats both fixed trees ({{1.30x}}), but not the chain: a tree's module call costs more than the
# chain's, and for about the same nodes the chain's depth makes more tokens. Where a verify forward of many tokens
# costs about one (a GPU at batch 1), the tree's extra tokens would count in full.
#
# **Could a smarter stopping rule win at temperature 1?** An adaptive length stops drafting where the drafter's
# confidence says the next draft will likely fail. `mtp-lab bench --stopping K` measures what that can be worth: the
# chain drafts $K$ tokens per step and records, per step, the drafter's confidence at each position ($\max q$) and
# how many drafts passed. Drafting only $k$ keeps the first $k$ of the same coins, so fixed $k = 1..K$ and the
# adaptive drafter's cost rule (each draft weighed against the rate, as in the tree) are scored on the same steps with
# the measured $c$ and $v(n)$. The rule is fitted on half the prompts and scored on the other half. The *oracle* is
# the same rule told each draft's true chance to pass, $1 - \mathrm{TV}(p_j, q_j)$, which only the verify forward
# knows: no predictor of a draft's acceptance made before the draft is drawn can know more. The stored runs, greedy
# and sampled, with the acceptance of the first draft by the drafter's confidence:

# %% tags=["nbval-check-output"]
for file in ("stopping_t0.json", "stopping_t1.json"):
    st = json.loads((RESULTS / file).read_text())
    best_k = st["best_fixed_k"]
    first = st["acceptance"][0]
    edges = [0.0] + st["bins"]
    print(f"temperature {st['temperature']}: {st['steps']} steps, {st['prompts']} prompts x {st['seeds']} seed(s); "
          f"best fixed k = {best_k} at {st['fixed'][str(best_k)]:.3f} tokens per AR-token time; cost rule "
          f"{st['cross_fit']['rate']:.3f} on new prompts (gain {st['cross_fit']['gain']:.3f}x; in-sample "
          f"{st['in_sample']['gain']:.3f}x); oracle {st['oracle']['gain']:.3f}x")
    print("  first draft passes, by max q:  " + "  ".join(
        f">={e:g}: {c[0] / c[1]:.2f}" for e, c in zip(edges, first, strict=True) if c[1] >= 20))

# %% [markdown]
# Greedy, a draft passes iff it is the target's argmax, and a confident drafter is usually right: the first draft
# passes {{0.28}} of the time where $\max q$ is between 0.02 and 0.05 and {{1.00}} where it is above 0.9, and
# choosing $k$ per step gains {{1.068x}} over the best fixed $k$ (the oracle, which knows which drafts pass,
# {{1.337x}}). Sampled, a draft passes with chance $1 - \mathrm{TV}(p, q)$, which the drafter's confidence barely
# predicts (between {{0.59}} and {{0.71}} for $\max q$ from 0.02 to 0.6): the gain shrinks to {{1.016x}}, and even the
# oracle gains only {{1.031x}}: that chance varies too little from one draft to the next for any length rule to be
# worth much. So at temperature 1 on this CPU, the chain at its best fixed $k$ is the drafter to use, and the adaptive
# tree's gap to it is the cost of its machinery, not a stopping rule that could do better.
#
# **What does help at temperature 1: a drafter distilled for it.** The shipped modules were distilled on the main
# model's *greedy* text. `mtp-lab distill --temperature 1` re-distils them on text the main model *samples*, with
# cross-entropy or (`--loss tv`) toward $1 - \mathrm{TV}(p, q)$ directly. The stored benches of the chain at $k = 4$
# (`docs/training.md` has the commands and the whole table):

# %% tags=["nbval-check-output"]
for name, label in (("shipped", "shipped: greedy text"), ("kl1", "sampled text, cross-entropy"),
                    ("tv", "sampled text, total variation")):
    rows = {t: json.loads((RESULTS / "distill_sampled" / f"bench_{t}_{name}.json").read_text())["rows"]
            for t in ("t1", "t0")}
    chain = {t: next(r for r in rows[t] if r["drafter"] == "mtp" and r["k"] == 4) for t in rows}
    print(f"{label:30s} temperature 1: {chain['t1']['tokens_per_main_forward']:.2f} tokens per verify forward "
          f"({chain['t1']['speedup']:.2f}x); greedy: {chain['t0']['tokens_per_main_forward']:.2f}")

# %% [markdown]
# On sampled text the chain makes {{2.72}} (cross-entropy) and {{2.65}} (total variation) tokens per verify forward at
# temperature 1 against the shipped {{2.51}}, and fewer greedy ({{3.51}} against {{3.67}}): distil the drafter for the
# temperature you serve. The total-variation loss is no better than cross-entropy at this scale, and with it the
# drafter's confidence still barely predicts acceptance, so the stopping bound stays where it was.
#
# ## What the engines do
#
# | engine | tree | drafts per step | n-gram |
# |---|---|---|---|
# | SGLang (DeepSeek MTP via EAGLE) | top-$k$ tree (`--speculative-eagle-topk`): $\tau$ 2.5-3 vs about 1.9 for a chain | fixed steps; adaptive tiers in recent versions | separate drafter |
# | TensorRT-LLM | MTP tree, greedy only | fixed | a suffix automaton overrides MTP when a match of length $\geq 4$ exists |
# | vLLM | chains (trees for EAGLE) | `adaptive_k` from running acceptance and a cost model | separate `ngram` and `suffix` methods (SuffixDecoding: frequency trees over this request and over past outputs; `suffix` here builds the first) |
# | llama.cpp | chains | stops drafting below a probability `p_min` | separate; alternating with MTP brought no gain |
# | FastDeploy | MTP | fixed | MTP `with_ngram` |
#
# EAGLE-2 grows its tree where the drafter is confident (3.05-4.26x on GPU); Sequoia chooses the tree's shape for
# the hardware; staged speculative decoding (a tree plus an n-gram model drafting for the drafter) reached 3.16x on
# GPT-2-L. This notebook's drafters put the three together, lossless under sampling too.
#
# **Why the gains shrink at large batch.** A tree multiplies the verified positions by $N + 1$. At batch 1 on a GPU
# that is free up to the ridge; at batch $B$ the forward already carries $B$ positions, and $B(N+1)$ crosses the
# ridge at the batch sizes printed above: beyond it every rejected node costs real compute. Engines therefore shrink
# the tree, and then $k$, as the batch grows, and turn speculation off under heavy load; a CPU, whose $v(n)$ rises
# from the start, behaves like a GPU at large batch.

# %% [markdown]
# ## Summary
#
# - A tree drafts several candidates per position and is verified in one forward: each node attends to the prefix
#   and its ancestors, at position prefix + depth; the caches keep the accepted path only.
# - The exact rule over siblings is recursive rejection sampling: try each child with $\min(1, p'/r)$, replace $p'$ by
#   the residual after each rejection. Sampled MTP children are draws from $q$ without replacement, tried in the order
#   drawn; a deterministic child (lookup, greedy top-$b$) passes with $p'(x)$. Greedy trees reproduce plain decoding;
#   sampled trees reproduce its distribution.
# - Lookup is free and, as a tree of what followed every earlier match, strong where code repeats itself; a hybrid
#   tree adds those branches to the MTP candidates, and the accepted tokens' sources show how much each contributes.
# - The verify cost $v(n)$ decides how big a tree pays: measured here it grows from the first token, so trees stay
#   small on a CPU; the adaptive drafter sizes each step from $v(n)$ and the draft cost, weighing every node
#   against the rate the generation already reaches.
# - Choosing the draft length per step pays where acceptance varies from draft to draft and the drafter's confidence
#   predicts it: greedy, about 7 % over the best fixed $k$ for the chain; sampled, about 2 %, and even an oracle that
#   knows each draft's $1 - \mathrm{TV}(p, q)$ gains only about 3 %. What helps sampling is a drafter distilled on
#   sampled text.
# - On a GPU at batch 1 $v(n)$ is flat for tens of nodes and trees pay more; at large batch the roofline takes the
#   gain away.

# %% [markdown]
# ---
# ## Solutions
# Try the exercises first. The cells below are collapsed: click the bar to read one. Run All skips them (each
# starts with `%%solution`, which prints "solution not run"): to run one, delete that first line and run the cell.

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def tree_walk(tokens, parents, p, sample):
    children = {}                                   # node (-1: the root) -> {token: child}
    for i, (t, par) in enumerate(zip(tokens, parents, strict=True)):
        children.setdefault(par, {})[t] = i
    path, node = [], -1
    while True:
        y = sample(p[node + 1])                     # the row of the node we stand on: the root's is row 0
        child = children.get(node, {}).get(y)
        if child is None:
            return path, y                          # a miss, or a leaf: the draw itself is the step's token
        path.append(child)
        node = child


check("tree_walk", tree_walk)

# %% tags=["solution"] jupyter={"source_hidden": true}
# %%solution
def tree_size(scores, v, r):
    n = 0
    while n < len(scores) and scores[n] > r * (v[n + 1] - v[n]):   # node n + 1 adds v(n + 2) - v(n + 1)
        n += 1
    return n


check("tree_size", tree_size)
