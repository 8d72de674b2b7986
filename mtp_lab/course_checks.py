"""The course's exercises: one check per exercise, each against an independent reference.

Every check raises `Wrong` with a message naming the mistake (and recognises the common ones:
off-by-one shifts, the report's [h; e] order, dividing by T-k instead of T, unbiased variance,
forgetting the bonus token ...), raises `NotAttempted` while the answer is the empty stub, or
returns a one-line success message. Registered by name; see `mtp_lab.course.check`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .exercises import Wrong, as_tensor, call, close, exercise, expect_shape
from .layers import Block
from .model import MTPModule
from .tree import TreeCost

E4M3_MAX = 448.0       # largest finite float8_e4m3fn value
E5M2_MAX = 57344.0     # largest finite float8_e5m2 value


def _number(value, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Wrong(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


# ---------------------------------------------------------------- 00 welcome

@exercise("target_index", "00", "start with the main model (k = 0): which token does it predict at position i? "
                                "Then read the table above for depths 1 and 2.")
def _target_index(fn) -> str:
    for i in range(5):
        for k in range(4):
            got = call(fn, i, k)
            if got == i + k:
                raise Wrong(f"target_index({i}, {k}) = {got}: off by one. That is the token depth {k} at position "
                            f"{i} already EMBEDS as its input, so predicting it would leak the label")
            if got != i + k + 1:
                raise Wrong(f"target_index({i}, {k}) = {got}, expected the index of the token depth {k} predicts "
                            f"from position {i}")
    return "Depth k at position i predicts t_{i+k+1} (0-based), the main model (k = 0) t_{i+1}."


@exercise("mtp_share", "00", "the released checkpoint holds 671B main-model and 14B MTP parameters: what share of "
                             "ALL its parameters is the MTP module? A fraction between 0 and 1.")
def _mtp_share(value) -> str:
    if value is None:
        call(None)
    share = _number(value, "the share")
    if 1 < share < 100:
        raise Wrong(f"{share} looks like a percentage; give a fraction (0.0204, not 2.04)")
    if math.isclose(share, 14 / 671, rel_tol=1e-3):
        raise Wrong(f"{share:.4f} = 14/671 divides by the main model only; the checkpoint's total is 671 + 14 = 685B")
    if not math.isclose(share, 14 / 685, rel_tol=5e-3):
        raise Wrong(f"{share:.4f} is not the MTP share of the checkpoint's parameters")
    return "About 2% of the checkpoint: the drafter costs little to store and to run."


# ---------------------------------------------------------------- 01 main model

@exercise("greedy_next", "01", "which position's logits score the token that comes AFTER the whole sequence? "
                               "Then pick the most likely id.")
def _greedy_next(fn) -> str:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g)
    got = as_tensor(call(fn, logits), "greedy_next(logits)")
    expect_shape(got, (3,), "greedy_next(logits) (one token id per sequence)")
    if got.dtype.is_floating_point:
        raise Wrong("greedy_next returned floats: return token ids (argmax), not probabilities or logits")
    if torch.equal(got, logits[:, 0].argmax(-1)):
        raise Wrong("you used the FIRST position: it has read one token only; which position has read the whole "
                    "sequence?")
    if torch.equal(got, logits[:, -2].argmax(-1)):
        raise Wrong("you used the second-to-last position: it predicts the last input token, which is already known")
    if not torch.equal(got, logits[:, -1].argmax(-1)):
        raise Wrong("wrong token ids: not the most likely id at the position that predicts the next token")
    return "logits[:, -1].argmax(-1): the last position's most likely next token."


@exercise("block_params", "01", "list every weight of a Block (attention, the SwiGLU feed-forward, the norms) with its "
                                "shape, and add them up; there are no biases.")
def _block_params(fn) -> str:
    for d, dff in ((32, 64), (256, 688), (96, 200)):
        cfg = ModelConfig(vocab_size=16, d_model=d, n_layers=1, n_heads=4, d_ff=dff, max_seq_len=8)
        want = sum(p.numel() for p in Block(cfg).parameters())
        got = int(_number(call(fn, d, dff), "block_params(d_model, d_ff)"))
        if got == want - 2 * d:
            raise Wrong(f"block_params({d}, {dff}) = {got}: you forgot the two RMSNorm gains (2 x {d})")
        if got == want - d * dff:
            raise Wrong(f"block_params({d}, {dff}) = {got}: SwiGLU has THREE matrices (w1, w3, w2), you counted two")
        if got != want:
            raise Wrong(f"block_params({d}, {dff}) = {got} is {'more' if got > want else 'fewer'} than the block "
                        f"holds: list every weight matrix and gain of a Block and count each once")
    return "4 d^2 (attention) + 3 d d_ff (SwiGLU) + 2 d (norm gains)."


# ---------------------------------------------------------------- 02 RMSNorm

@exercise("rmsnorm", "02", "one root-mean-square per token, over the channel dim, kept broadcastable; eps "
                           "belongs with the mean, before the root; the gain comes last.")
def _rmsnorm(fn) -> str:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 32, generator=g) * 3 + 1
    w = torch.rand(32, generator=g) + 0.5
    eps = 1e-2   # large on purpose, so that misplacing eps shows
    got = as_tensor(call(fn, x, w, eps), "rmsnorm(x, weight, eps)")
    expect_shape(got, x.shape, "rmsnorm(x, weight, eps)")
    want = F.rms_norm(x, (32,), w, eps)
    if close(got, want):
        return "matches torch.nn.functional.rms_norm."
    if close(got, F.layer_norm(x, (32,), w, None, eps)):
        raise Wrong("this is LayerNorm: RMSNorm does not subtract the mean")
    if close(got, want / w):
        raise Wrong("the values are right before the gain: multiply by weight")
    if close(got, x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w):
        raise Wrong("eps is outside the square root: use sqrt(mean(x^2) + eps)")
    if close(got, x / x.pow(2).mean(-1, keepdim=True).sqrt() * w, atol=1e-4):
        raise Wrong("eps is missing: use sqrt(mean(x^2) + eps)")
    raise Wrong(f"values differ from torch.nn.functional.rms_norm by up to {(got - want).abs().max():.3g}")


@exercise("layernorm", "02", "unlike RMSNorm it centres x first; the variance is the plain mean of squared deviations "
                             "over the last dim (the biased one, as torch.nn.LayerNorm uses), kept broadcastable.")
def _layernorm(fn) -> str:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=g) * 2 + 3
    eps = 1e-5
    got = as_tensor(call(fn, x, eps), "layernorm(x, eps)")
    expect_shape(got, x.shape, "layernorm(x, eps)")
    want = F.layer_norm(x, (8,), eps=eps)
    if close(got, want):
        return "matches torch.nn.functional.layer_norm."
    if close(got, (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + eps).sqrt()):
        raise Wrong("you used the unbiased variance (torch.var's default divides by n-1); LayerNorm divides by n")
    if close(got, F.rms_norm(x, (8,), eps=eps)):
        raise Wrong("this is RMSNorm: LayerNorm first subtracts the mean")
    raise Wrong(f"values differ from torch.nn.functional.layer_norm by up to {(got - want).abs().max():.3g}")


# ---------------------------------------------------------------- 03 the MTP module

@exercise("mtp_inputs", "03", "depth k pairs the state at position i with the token k places later; which "
                              "positions still have such a token inside the sequence?")
def _mtp_inputs(fn) -> str:
    B, T, C, k = 2, 9, 4, 2
    h = torch.arange(B * T * C, dtype=torch.float32).view(B, T, C)
    tokens = torch.arange(B * T).view(B, T) + 100
    got = call(fn, h, tokens, k)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise Wrong("return a pair (h_in, tokens_in)")
    h_in, tok_in = as_tensor(got[0], "h_in"), as_tensor(got[1], "tokens_in")

    def same(a, b):
        return a.shape == b.shape and torch.equal(a, b)

    if same(tok_in, tokens[:, k + 1:]) or same(tok_in[:, :T - k - 1], tokens[:, k + 1:]):
        raise Wrong("tokens shifted by k+1: module k would embed the very token it must predict (a label leak)")
    if same(tok_in, tokens[:, k - 1:]) or same(tok_in, tokens[:, k - 1:T - 1]):
        raise Wrong("tokens shifted by k-1: each depth embeds one token further than the depth before it")
    if same(h_in, h[:, k:]):
        raise Wrong("h_in drops the first states: position 0's state must pair with t_k, so the positions "
                    "without a partner are at the END")
    expect_shape(h_in, (B, T - k, C), "h_in (only T-k positions have a token t_{i+k})")
    expect_shape(tok_in, (B, T - k), "tokens_in")
    if not torch.equal(h_in, h[:, :T - k]):
        raise Wrong("h_in holds the wrong hidden states: which T-k positions have a token k places later?")
    if not torch.equal(tok_in, tokens[:, k:]):
        raise Wrong("tokens_in holds the wrong tokens: position i's partner is t_{i+k}")
    return "h[:, :T-k] pairs with tokens[:, k:], the one-token shift per depth."


@exercise("mtp_combine", "03", "normalise each input with its own norm, join them along the channel dim in the "
                               "checkpoint's order (not the report's), then project back to d.")
def _mtp_combine(fn) -> str:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=8, mtp_depth=1)
    module = MTPModule(cfg)
    with torch.no_grad():
        module.enorm.weight.uniform_(0.5, 1.5)
        module.hnorm.weight.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(2)
    emb, h_prev = torch.randn(2, 5, 8, generator=g) * 4, torch.randn(2, 5, 8, generator=g) * 4
    with torch.no_grad():
        got = as_tensor(call(fn, module, emb, h_prev), "mtp_combine(module, emb, h_prev)")
        expect_shape(got, (2, 5, 8), "h' (back to d_model: M_k maps 2d -> d)")
        W = module.eh_proj.weight                                                   # (d, 2d)
        e_n, h_n = F.rms_norm(emb, (8,), module.enorm.weight, cfg.norm_eps), \
            F.rms_norm(h_prev, (8,), module.hnorm.weight, cfg.norm_eps)
        want = torch.cat([e_n, h_n], -1) @ W.T
        if close(got, want, atol=1e-4):
            return "h' = M_k [enorm(e); hnorm(h)], the checkpoint's order."
        if close(got, torch.cat([h_n, e_n], -1) @ W.T, atol=1e-4):
            raise Wrong("you concatenated [h; e], the report's order; the checkpoint (and vLLM, SGLang) put the "
                        "embedding first, and with these trained weights the order matters")
        if close(got, torch.cat([emb, h_prev], -1) @ W.T, atol=1e-4):
            raise Wrong("the two RMSNorms are missing: normalise emb with enorm and h_prev with hnorm first")
        if close(got, module.block(want), atol=1e-4):
            raise Wrong("you also applied the transformer block: this exercise stops at h' (equation 21)")
    raise Wrong(f"values differ from eh_proj(cat[enorm(emb), hnorm(h)]) by up to {(got - want).abs().max():.3g}")


# ---------------------------------------------------------------- 04 training

@exercise("mtp_targets", "04",
          "which column of targets holds the token depth k predicts from position 0, and how many positions "
          "does depth k have?")
def _mtp_targets(fn) -> str:
    targets = torch.arange(20).view(2, 10)
    for k in (1, 2, 3):
        got = as_tensor(call(fn, targets, k), f"mtp_targets(targets, {k})")
        if torch.equal(got, targets[:, :-k]):
            raise Wrong(f"k={k}: these are the MAIN model's targets for those positions; depth k looks k tokens "
                        f"further ahead")
        if got.shape[1] == 11 - k and torch.equal(got, targets[:, k - 1:]):
            raise Wrong(f"k={k}: off by one: your slice has T-k+1 columns but depth k has only T-k logits")
        expect_shape(got, (2, 10 - k), f"mtp_targets(targets, {k}) (depth k has T-k logits)")
        if not torch.equal(got, targets[:, k:]):
            raise Wrong(f"k={k}: wrong targets: not the tokens depth {k} predicts at each position")
    return "targets[:, k:] lines up with mtp_logits[k-1]."


@exercise("depth_loss", "04", "the previous exercise gives depth k's targets; read equation (24) again: how many "
                              "terms does its sum have, and what does it divide by?")
def _depth_loss(fn) -> str:
    g = torch.Generator().manual_seed(3)
    B, T, V, k = 2, 8, 11, 2
    logits_k = torch.randn(B, T - k, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    got = _number(call(fn, logits_k, targets, k), "depth_loss(...)")
    nll = F.cross_entropy(logits_k.reshape(-1, V), targets[:, k:].reshape(-1), reduction="sum").item()
    if math.isclose(got, nll / (B * T), rel_tol=1e-4):
        return "L^k divides the summed loss by T (report eq. 24), not by the T-k positions."
    if math.isclose(got, nll / (B * (T - k)), rel_tol=1e-4):
        raise Wrong("you averaged over the T-k positions; equation (24) divides by T (mtp_loss(normalize='mean') "
                    "is that variant)")
    for wrong in (targets[:, :-k], targets[:, k - 1:-1]):
        bad = F.cross_entropy(logits_k.reshape(-1, V), wrong.reshape(-1), reduction="sum").item()
        if math.isclose(got, bad / (B * T), rel_tol=1e-4) or math.isclose(got, bad / (B * (T - k)), rel_tol=1e-4):
            raise Wrong("the targets are misaligned with depth k's logits (exercise 1 finds the right ones)")
    raise Wrong(f"got {got:.4f}, expected {nll / (B * T):.4f}")


# ---------------------------------------------------------------- 05 FP8

def _tile_reference(x: torch.Tensor) -> torch.Tensor:
    """amax over each 1x128 tile (zero-padded), divided by E4M3's max: one scale per tile."""
    M, K = x.shape
    n = -(-K // 128)
    padded = F.pad(x, (0, n * 128 - K))
    return padded.view(M, n, 128).abs().amax(-1) / E4M3_MAX                     # (M, ceil(K/128))


@exercise("tile_scales", "05", "one scale per 128 consecutive values of a row (the last tile may be short): the "
                               "scale maps the tile's largest magnitude onto E4M3's largest value.")
def _tile_scales(fn) -> str:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 300, generator=g) * torch.tensor([1.0, 10.0, 100.0])[:, None]
    want = _tile_reference(x)
    got = as_tensor(call(fn, x), "tile_scales(x)")
    if got.numel() == 1:
        raise Wrong("one scale for the whole tensor: DeepSeek-V3 scales activations per 1x128 tile")
    if tuple(got.shape) in ((3,), (3, 1)):
        raise Wrong("one scale per row: each row needs one scale per 128 channels (3 tiles for K = 300)")
    expect_shape(got, want.shape, "tile_scales(x) (one scale per row and per 128 columns, the last tile padded)")
    if close(got, 1 / want, rtol=1e-3):
        raise Wrong("you returned the reciprocal of the scale: the scale is what multiplies the FP8 values back "
                    "(x = q * s)")
    if close(got, want * E4M3_MAX / E5M2_MAX, rtol=1e-3):
        raise Wrong("you divided by 57344, E5M2's max; DeepSeek-V3 uses E4M3 (max 448) for every GEMM input")
    if not close(got, want, rtol=1e-3, atol=1e-8):
        raise Wrong(f"scales differ from amax/448 per tile by up to {(got - want).abs().max():.3g}")
    return "s = amax / 448 per 1x128 tile: an outlier only affects its own 128 values."


@exercise("fake_quant", "05", "per tile: scale into E4M3's range with the tile's scale, cast to the float8 dtype, "
                              "then undo the scale in float32 (the previous exercise gives the scales).")
def _fake_quant(fn) -> str:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 256, generator=g)
    x[0, 3] = 900.0                                           # an outlier above E4M3's max
    s = _tile_reference(x).repeat_interleave(128, dim=1)       # (M, K)
    want = (x / s).to(torch.float8_e4m3fn).float() * s
    got = as_tensor(call(fn, x), "fake_quant(x)")
    expect_shape(got, x.shape, "fake_quant(x)")
    if close(got, x.to(torch.float8_e4m3fn).float(), atol=0, rtol=0):
        raise Wrong("a plain cast without scaling: 900 saturates to 448 and small values lose precision; "
                    "divide by the tile's scale first")
    if close(got, x, atol=0, rtol=0):
        raise Wrong("the output equals the input: nothing was quantised")
    if close(got, x.round(), atol=0, rtol=0):
        raise Wrong("rounding to integers is not FP8: cast x / s to torch.float8_e4m3fn")
    if not close(got, want, atol=1e-6, rtol=1e-5):
        raise Wrong(f"values differ from the per-tile E4M3 round trip by up to {(got - want).abs().max():.3g}")
    return "the per-tile E4M3 round trip: the outlier of 900 only coarsens its own tile."


# ---------------------------------------------------------------- 06 speculative decoding

@exercise("accept_prob", "06", "compare how likely the target finds x with how likely the drafter made it: when "
                               "the drafter proposes x too often, how often should x pass? And never more than always.")
def _accept_prob(fn) -> str:
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.6, 0.2])
    for x in range(3):
        want = min(1.0, (p[x] / q[x]).item())
        got = _number(call(fn, p, q, x), f"accept_prob(p, q, {x})")
        if not math.isclose(got, want, rel_tol=1e-5):
            if math.isclose(got, min(1.0, (q[x] / p[x]).item()), rel_tol=1e-5):
                raise Wrong(f"x={x}: the ratio is upside down: a token the drafter over-proposes must pass LESS often")
            if math.isclose(got, (p[x] / q[x]).item(), rel_tol=1e-5):
                raise Wrong(f"x={x}: {got:.3f} > 1 is not a probability")
            raise Wrong(f"accept_prob(p, q, {x}) = {got:.4f} is not the probability that keeps the target's "
                        f"distribution")
    return "min(1, p/q): a token the drafter over-proposes is accepted only in proportion."


@exercise("residual", "06", "after a rejection, the new token must make up for what the drafter under-proposed: "
                            "look where the target has more mass than the drafter, and return a distribution.")
def _residual(fn) -> str:
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.2, 0.6, 0.1, 0.1])
    want = (p - q).clamp(min=0)
    want = want / want.sum()
    got = as_tensor(call(fn, p, q), "residual(p, q)").float()
    expect_shape(got, p.shape, "residual(p, q)")
    if close(got, want):
        return "norm(max(0, p - q)): the rejected mass is redistributed exactly where p exceeds q."
    if close(got, (q - p).clamp(min=0) / (q - p).clamp(min=0).sum()):
        raise Wrong("the difference is the wrong way round: the residual lives where the TARGET exceeds the "
                    "drafter")
    if close(got, (p - q).clamp(min=0)):
        raise Wrong("not normalised: a distribution sums to 1")
    if (got < 0).any():
        raise Wrong("negative probabilities: where the drafter already over-proposed, the residual is 0")
    raise Wrong(f"got {[round(v, 4) for v in got.tolist()]}, which is not the residual distribution")


@exercise("greedy_accepted", "06", "a draft that comes after a mismatch was built on a wrong token: can it still "
                                   "count?")
def _greedy_accepted(fn) -> str:
    cases = [([5, 6, 7], [5, 6, 7], 3), ([5, 6, 7], [5, 9, 7], 1), ([5, 6, 7], [1, 6, 7], 0), ([4], [4], 1)]
    for draft, target, want in cases:
        got = int(_number(call(fn, list(draft), list(target)), "greedy_accepted(draft, target)"))
        if got != want:
            matches = sum(a == b for a, b in zip(draft, target, strict=False))
            if got == matches:
                raise Wrong(f"draft {draft} vs target argmax {target}: you counted all matches ({got}); after the "
                            f"first mismatch every later draft was built on a wrong token, so stop there ({want})")
            raise Wrong(f"draft {draft} vs target argmax {target}: got {got}, expected {want}")
    return "the accepted prefix; the target's token at the mismatch comes for free."


# ---------------------------------------------------------------- 07 acceptance lab

@exercise("expected_tokens", "07",
          "draft j is kept only if drafts 1..j all pass; add up the chances, and do not forget "
          "the token the target always contributes. Check alpha = 1 too.")
def _expected_tokens(fn) -> str:
    for a, k in ((0.8, 1), (0.8, 3), (0.5, 4), (0.0, 2)):
        want = (1 - a ** (k + 1)) / (1 - a)
        got = _number(call(fn, a, k), f"expected_tokens({a}, {k})")
        if not math.isclose(got, want, rel_tol=1e-6):
            if math.isclose(got, want - 1, rel_tol=1e-6, abs_tol=1e-9):
                raise Wrong(f"expected_tokens({a}, {k}) = {got:.4f}: you forgot the bonus/correction token the "
                            f"target always contributes (+1)")
            raise Wrong(f"expected_tokens({a}, {k}) = {got:.4f}, expected {want:.4f}")
    got = _number(call(fn, 1.0, 3), "expected_tokens(1.0, 3)")
    if got != 4:
        raise Wrong(f"expected_tokens(1.0, 3) = {got}: with alpha = 1 every draft is accepted, k + 1 = 4 tokens "
                    f"(avoid dividing by 1 - alpha = 0)")
    return "(1 - a^(k+1)) / (1 - a) tokens per target forward."


@exercise("spec_metrics", "07", "the rate is per drafted token; tau counts the tokens one target forward yields, "
                                "and every step yields one token the target produces itself.")
def _spec_metrics(fn) -> str:
    accepted, drafted, steps = 170, 200, 100
    got = call(fn, accepted, drafted, steps)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise Wrong("return a pair (acceptance_rate, tau)")
    rate, tau = _number(got[0], "acceptance_rate"), _number(got[1], "tau")
    if math.isclose(rate, accepted / steps):
        raise Wrong("the acceptance rate is per DRAFTED token, not per step")
    if not math.isclose(rate, 0.85):
        raise Wrong(f"acceptance rate {rate} is not the share of drafted tokens that were accepted")
    if math.isclose(tau, accepted / steps):
        raise Wrong("tau forgets the token the target produces itself at every step")
    if not math.isclose(tau, 2.7):
        raise Wrong(f"tau {tau} is not the mean number of tokens a step yields")
    return "rate 0.85 with k = 2 gives tau 2.7 tokens per target forward."


@exercise("speedup", "07", "tokens a step yields over the time a step costs, both in units of one plain-decoding "
                           "token: what does a step spend on drafting, and what on verifying?")
def _speedup(fn) -> str:
    for a, k, c, v in ((0.8, 2, 0.1, 1.0), (0.6, 4, 0.2, 1.3), (0.9, 1, 0.0, 1.0), (1.0, 3, 0.05, 1.2)):
        tokens = sum(a ** j for j in range(k + 1))
        want = tokens / (k * c + v)
        got = _number(call(fn, a, k, c, v), f"speedup({a}, {k}, {c}, {v})")
        if not math.isclose(got, want, rel_tol=1e-6):
            if math.isclose(got, tokens, rel_tol=1e-6):
                raise Wrong(f"speedup({a}, {k}, {c}, {v}): the draft and verify forwards are not free; divide by "
                            f"the step's cost")
            if math.isclose(got, tokens / (k * c + 1), rel_tol=1e-6):
                raise Wrong(f"speedup({a}, {k}, {c}, {v}) = {got:.4f}: the verify forward over k+1 tokens costs v "
                            f"AR-token times, not 1")
            raise Wrong(f"speedup({a}, {k}, {c}, {v}) = {got:.4f}, expected {want:.4f}")
    return "tokens per step / (k c + v): cheap drafts and a cheap verify matter as much as acceptance."


@exercise("break_even", "07", "the speed-up grows with alpha: find where it crosses 1. For k = 1 it has a closed "
                              "form; for any k, halving an interval that brackets the crossing works.")
def _break_even(fn) -> str:
    from .proportion import break_even_alpha
    for k, c, v in ((1, 0.1, 1.0), (1, 0.42, 1.1), (3, 0.1, 1.2), (4, 0.3, 1.5), (2, 0.05, 1.0)):
        want = break_even_alpha(k, c, v)
        got = _number(call(fn, k, c, v), f"break_even({k}, {c}, {v})")
        if not math.isclose(got, want, abs_tol=1e-3):
            speed = sum(got ** j for j in range(k + 1)) / (k * c + v) if 0 <= got <= 1 else float("nan")
            raise Wrong(f"break_even({k}, {c}, {v}) = {got:.4f}, expected {want:.4f} (at your alpha the speed-up "
                        f"is {speed:.3f}, not 1)")
    got = _number(call(fn, 4, 0.9, 1.5), "break_even(4, 0.9, 1.5)")
    if not math.isnan(got):
        raise Wrong(f"break_even(4, 0.9, 1.5) = {got:.4f}: even with every draft accepted a step gives k + 1 = 5 "
                    f"tokens for 4 * 0.9 + 1.5 = 5.1 AR-token times, so no alpha pays; return float('nan')")
    return "below this acceptance, drafting costs more time than it saves."


# ---------------------------------------------------------------- 08 real world

@exercise("mtp_layer_indices", "08", "how are the main layers numbered in the checkpoint, and where do layers "
                                     "stored after them go?")
def _mtp_layer_indices(fn) -> str:
    for L, n in ((61, 1), (4, 2)):
        got = call(fn, L, n)
        if not isinstance(got, (list, tuple, range)):
            raise Wrong("return a list of layer indices")
        got = list(got)
        if got == list(range(L - 1, L - 1 + n)):
            raise Wrong(f"L={L}: the main model already uses 0..{L - 1}; the MTP layers start at index L = {L}")
        if got != list(range(L, L + n)):
            raise Wrong(f"mtp_layer_indices({L}, {n}) = {got}: not the indices that follow the {L} main layers")
    return "DeepSeek-V3 (61 layers) stores its MTP module as model.layers.61."


LOSSLESS = {
    "rejection sampling with min(1, p/q) and the residual": True,
    "rejection sampling, but after a rejection the token is sampled from p": False,
    "greedy verification at temperature 0": True,
    "greedy verification, keeping a draft that is in the target's top 2": False,
    "accept the draft when p(x) > 0.3": False,
    "Medusa typical acceptance": False,
    "MTP drafter chained to depth 3 with rejection sampling": True,
    "an n-gram drafter with rejection sampling": True,
}


@exercise("lossless", "08", "a scheme is lossless when its output distribution equals the target's for ANY drafter: "
                            "ask of each rule what it does with a token the target would rarely choose.")
def _lossless(answers) -> str:
    if answers is None:
        call(None)
    if not isinstance(answers, dict) or set(answers) != set(LOSSLESS):
        raise Wrong(f"give a dict with exactly these keys: {sorted(LOSSLESS)}")
    if any(v is None for v in answers.values()):
        call(None)
    if any(not isinstance(v, bool) for v in answers.values()):
        raise Wrong("give True or False for every scheme")
    wrong = [key for key, value in LOSSLESS.items() if answers[key] != value]
    if wrong:   # the count only: naming the keys would let a learner flip them without thinking
        raise Wrong(f"{len(wrong)} of {len(LOSSLESS)} answers wrong; for each scheme, work out whether its "
                    f"accepted tokens and its corrections together reproduce p exactly")
    return "exact verification keeps the target's distribution whatever the drafter; thresholds do not."


# ---------------------------------------------------------------- 09 beyond the chain

def _walk_rows(*argmaxes, V: int = 8) -> torch.Tensor:
    """Target rows (root first, then nodes 0, 1, 2) peaked at the given tokens."""
    p = torch.full((len(argmaxes), V), 0.02)
    for e, t in enumerate(argmaxes):
        p[e, t] = 1 - 0.02 * (V - 1)
    return p


@exercise("tree_walk", "09", "start at the root and its row; draw ONE token from the row of the node you stand on; "
                             "move to the child holding that token, or stop and return the very token you drew. "
                             "Rows come root first, then the nodes in their order. A leaf still yields a token.")
def _tree_walk(fn) -> str:
    tokens, parents = [5, 7, 2], [-1, -1, 0]          # root -> 5 (node 0), 7 (node 1); node 0 -> 2 (node 2)

    def greedy(row):
        return int(torch.as_tensor(row).argmax())

    cases = [(_walk_rows(5, 2, 3, 4), ([0, 2], 4)), (_walk_rows(6, 2, 3, 4), ([], 6)),
             (_walk_rows(7, 2, 1, 4), ([1], 1)), (_walk_rows(5, 6, 3, 4), ([0], 6))]
    for p, want in cases:
        got = call(fn, tokens, parents, p, greedy)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Wrong("return a pair (path, next_token): the accepted nodes, then the token the step adds")
        path, nxt = list(got[0]), got[1]
        if path == [tokens[i] for i in want[0]] and path != want[0]:
            raise Wrong("the path lists tokens; give the accepted NODES (indices into tokens), root side first")
        if path == want[0] and nxt is None:
            raise Wrong("the walk ended without a token: at a leaf (or after a miss) the draw itself is emitted")
        if (path, nxt) != want:
            if want == ([0, 2], 4) and (path, nxt) == ([0], 5):
                raise Wrong("at node 0 you read the root's row: the row of node i comes one after the root's")
            raise Wrong(f"with target rows peaked at {p.argmax(-1).tolist()} (root first) the walk should give "
                        f"{want}, got {(path, nxt)}")
    draws = iter([5, 3, 6, 1])
    used = []

    def scripted(row):
        used.append(1)
        return next(draws)

    got = call(fn, tokens, parents, _walk_rows(5, 2, 3, 4), scripted)
    if len(used) != 2 or tuple(got) != ([0], 3):
        raise Wrong(f"draws 5 then 3 must give ([0], 3) after exactly 2 draws, got {tuple(got)} after {len(used)}: "
                    f"draw once per node, and the token that matched no child is the one you return")
    return ("y ~ p at each node, follow the matching child, else emit y: every token is a draw from the target "
            "given the tokens before it, so the tree is lossless whatever its shape.")


@exercise("tree_size", "09", "take the nodes best first; the n-th (1-based) goes in while it brings more than r "
                             "times what it adds to the verify forward, which also carries the root: v(n + 1) - v(n) "
                             "= v[n] - v[n - 1]. Stop at the first that does not pay.")
def _tree_size(fn) -> str:
    flat = [1.0, 1.02, 1.05, 1.1, 1.3, 1.45, 1.6, 1.8, 2.0]          # v(1), v(2), ...: flat, then rising
    steady = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]
    jump = [1.0, 1.05, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9]
    for scores, v, r in (([0.9, 0.8, 0.6, 0.3, 0.2, 0.1, 0.05], flat, 2.5),
                         ([0.9, 0.9, 0.9, 0.25, 0.25, 0.25, 0.25], steady, 2.0),
                         ([0.3, 0.15, 0.15, 0.15, 0.15, 0.15, 0.15], steady, 2.0),
                         ([0.9, 0.3, 0.3, 0.3], jump, 2.0)):
        want = TreeCost(c=0.0, v=tuple(v)).best_size(scores, r)          # the package's rule
        got = call(fn, scores, v, r)
        if isinstance(got, float) and not float(got).is_integer():
            raise Wrong("return the number of nodes to verify (an int), not the value it reaches")
        if got != want:
            value = [sum(scores[:n]) - r * v[n] for n in range(len(scores) + 1)]
            ratio = [(1 + sum(scores[:n])) / v[n] for n in range(len(scores) + 1)]
            if got == TreeCost(c=0.0, v=(v[0], *v)).best_size(scores, r) != want:     # v without the root
                raise Wrong(f"tree_size(..., r={r}) = {got}: the verify forward of n nodes also carries the root, "
                            f"so the n-th node adds v[n] - v[n - 1], not v[n - 1] - v[n - 2]")
            if got == max(range(len(value)), key=value.__getitem__) != want:
                raise Wrong(f"tree_size(..., r={r}) = {got}: that is the best N overall, which looks past the jump "
                            f"in v at the nodes behind it; decide node by node, each from the nodes before it")
            if got == max(range(len(value)), key=ratio.__getitem__) != want:
                raise Wrong(f"tree_size(..., r={r}) = {got}: that is the best rate of this step alone; weigh each "
                            f"node against r, the rate the whole generation already reaches")
            raise Wrong(f"tree_size({scores}, v, r={r}) = {got}, expected {want}")
    return ("a node is worth its place when it brings more than r times what it adds: TreeCost.best_size does "
            "this every step, with r measured as the generation runs.")
