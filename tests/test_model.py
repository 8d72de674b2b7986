"""Foundation tests: components against torch's own ops, caching, MTP recomputation, causality, loss, sharing."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mtp_lab import ModelConfig, MTPModel, RMSNorm, get_preset, mtp_lambda, mtp_loss
from mtp_lab.layers import CausalSelfAttention, causal_mask


def make_model(seed=0, device="cpu", **overrides):
    torch.manual_seed(seed)
    model = MTPModel(get_preset("tiny", **overrides)).to(device).eval()
    # random gains so that a norm applied at the wrong place changes the numbers
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def tokens(B=2, T=20, V=64, seed=1, device="cpu"):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed)).to(device)


# ---------------------------------------------------------------- components

def test_rmsnorm_equals_torch():
    torch.manual_seed(0)
    ours, ref = RMSNorm(48, eps=1e-5), torch.nn.RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.2, 2.0)
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 7, 48) * 5
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    # bf16 input: computed in fp32, returned in bf16
    xb = x.bfloat16()
    assert ours(xb).dtype == torch.bfloat16
    torch.testing.assert_close(ours(xb).float(), ref(xb.float()), rtol=1e-2, atol=1e-2)


def test_attention_equals_sdpa_and_explicit_softmax():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    attn = CausalSelfAttention(cfg)
    x = torch.randn(2, 11, cfg.d_model)
    B, T, C, H, hd = 2, 11, cfg.d_model, cfg.n_heads, cfg.head_dim
    q = attn.rope(attn.wq(x).view(B, T, H, hd).transpose(1, 2), 0)
    k = attn.rope(attn.wk(x).view(B, T, H, hd).transpose(1, 2), 0)
    v = attn.wv(x).view(B, T, H, hd).transpose(1, 2)
    # independent reference 1: torch's fused attention
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # independent reference 2: softmax(QK^T / sqrt(hd) + causal mask) V written out
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    explicit = scores.softmax(-1) @ v
    torch.testing.assert_close(sdpa, explicit, rtol=1e-5, atol=1e-6)
    expected = attn.wo(explicit.transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_rope_rotation_preserves_norm_and_is_relative():
    cfg = get_preset("tiny")
    rope = CausalSelfAttention(cfg).rope
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)
    torch.testing.assert_close(rope(q, 5).norm(), q.norm())
    # <R_m q, R_n k> depends only on m - n
    d1 = (rope(q, 7) * rope(k, 3)).sum()
    d2 = (rope(q, 14) * rope(k, 10)).sum()
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-5)


def test_causal_mask_is_lower_right():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


# ---------------------------------------------------------------- KV cache

def test_one_token_cached_steps_equal_full_forward(device):
    model = make_model(device=device)
    x = tokens(B=2, T=17, device=device)
    full, _ = model.forward_main(x)
    cache = model.new_cache(batch=2)
    steps = [model.forward_main(x[:, t:t + 1], cache)[0] for t in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 17


@pytest.mark.parametrize("chunks", [[5, 3, 1, 4, 4], [1, 7, 9], [10, 2, 5]])
def test_multi_token_cached_steps_equal_full_forward(chunks, device):
    model = make_model(device=device)
    x = tokens(B=1, T=sum(chunks), device=device)
    full, hidden = model.forward_main(x)
    cache, start, outs, hs = model.new_cache(), 0, [], []
    for n in chunks:
        logits, h = model.forward_main(x[:, start:start + n], cache)
        outs.append(logits)
        hs.append(h)
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(hs, 1), hidden, rtol=1e-5, atol=1e-5)


def test_cache_truncate_then_recompute(device):
    model = make_model(device=device)
    x, y = tokens(B=1, T=12, seed=3, device=device), tokens(B=1, T=4, seed=4, device=device)
    cache = model.new_cache()
    model.forward_main(x, cache)
    model.forward_main(y, cache)                # 4 tokens that are then "rejected"
    for c in cache.main:
        c.truncate(12)
    step, _ = model.forward_main(x[:, :3] * 0 + 5, cache)
    ref, _ = model.forward_main(torch.cat([x, x[:, :3] * 0 + 5], 1))
    torch.testing.assert_close(step, ref[:, 12:], rtol=1e-5, atol=1e-5)


def test_mtp_module_cached_steps_equal_full_forward(device):
    model = make_model(device=device)
    x = tokens(B=1, T=15, device=device)
    out = model(x)
    cache = model.new_cache()
    _, hidden = model.forward_main(x)
    # depth 1 fed in two chunks with its own KV cache equals the full-sequence depth-1 logits
    a, _ = model.forward_mtp(1, hidden[:, :6], x[:, 1:7], cache)
    b, _ = model.forward_mtp(1, hidden[:, 6:14], x[:, 7:15], cache)
    torch.testing.assert_close(torch.cat([a, b], 1), out.mtp_logits[0], rtol=1e-5, atol=1e-5)


def test_cache_overflow_raises_clear_error():
    model = make_model()
    cache = model.new_cache(max_len=8)
    with pytest.raises(ValueError, match="KV cache full"):
        model.forward_main(tokens(B=1, T=9), cache)


# ---------------------------------------------------------------- MTP modules

@pytest.mark.parametrize("mtp_input_norm", [True, False])
def test_each_depth_equals_hand_recomputation(mtp_input_norm, device):
    model = make_model(device=device, mtp_input_norm=mtp_input_norm, mtp_depth=3)
    x = tokens(B=2, T=10, device=device)
    out = model(x)
    T = x.shape[1]
    # main model by hand
    h = model.embed(x)
    for layer in model.layers:
        h = layer(h)
    torch.testing.assert_close(out.logits, model.head(model.norm(h)))
    prev = model.norm(h) if mtp_input_norm else h                     # h^0
    torch.testing.assert_close(out.hidden, prev)
    for k in range(1, 4):
        m = model.mtp[k - 1]
        emb = model.embed.weight[x[:, k:]]                             # Emb(t_{i+k}), i = 0..T-1-k
        h_in = prev[:, :T - k]                                         # h^{k-1}_i
        # embedding first, as in the released checkpoint: [enorm(e) ; hnorm(h)]
        proj = torch.cat([m.enorm(emb), m.hnorm(h_in)], -1) @ m.eh_proj.weight.T
        hk = m.block(proj)
        logits = model.head.weight @ m.shared_head.norm(hk).unsqueeze(-1)
        torch.testing.assert_close(out.mtp_logits[k - 1], logits.squeeze(-1), rtol=1e-5, atol=1e-5)
        assert out.mtp_logits[k - 1].shape == (2, T - k, 64)
        prev = m.shared_head.norm(hk) if mtp_input_norm else hk


def test_zero_depth_model_has_no_mtp():
    model = make_model(mtp_depth=0)
    out = model(tokens())
    assert out.mtp_logits == [] and len(model.mtp) == 0
    parts = mtp_loss(out, tokens(seed=2), lam=0.3)
    torch.testing.assert_close(parts.total, parts.main)


@pytest.mark.parametrize("j", [0, 4, 9, 15])
def test_causality_by_perturbation(j, device):
    model = make_model(device=device, mtp_depth=3)
    x = tokens(B=1, T=16, device=device)
    x2 = x.clone()
    x2[0, j] = (x2[0, j] + 1) % 64
    a, b = model(x), model(x2)
    # main logits at positions < j do not see token j; position j does
    torch.testing.assert_close(a.logits[:, :j], b.logits[:, :j])
    assert not torch.allclose(a.logits[:, j], b.logits[:, j])
    for k in range(1, 4):
        # depth k at position i reads t_0..t_{i+k}: positions i < j - k are blind to t_j ...
        n_blind = max(j - k, 0)
        torch.testing.assert_close(a.mtp_logits[k - 1][:, :n_blind], b.mtp_logits[k - 1][:, :n_blind])
        # ... and position j - k (which embeds t_j itself) sees it: no gap, no leak of its target
        if j - k >= 0:
            assert not torch.allclose(a.mtp_logits[k - 1][:, j - k], b.mtp_logits[k - 1][:, j - k])


def test_no_label_leak_target_token_invisible(device):
    """Depth k at position i predicts t_{i+k+1}: changing that token must not change its own logits."""
    model = make_model(device=device, mtp_depth=2)
    x = tokens(B=1, T=12, device=device)
    for k in (1, 2):
        i = 4
        x2 = x.clone()
        x2[0, i + k + 1] = (x2[0, i + k + 1] + 7) % 64
        torch.testing.assert_close(model(x).mtp_logits[k - 1][:, i], model(x2).mtp_logits[k - 1][:, i])


# ---------------------------------------------------------------- loss

def reference_loss(out, targets, lam):
    """Equations (24)-(25) written with explicit loops, report normalisation 1/T."""
    B, T = targets.shape
    logp = out.logits.log_softmax(-1)
    main = -sum(logp[b, i, targets[b, i]] for b in range(B) for i in range(T)) / (B * T)
    D = len(out.mtp_logits)
    depth = []
    for k in range(1, D + 1):
        lp = out.mtp_logits[k - 1].log_softmax(-1)
        # position i of depth k predicts t_{i+k+1} = targets[i+k]; i = 0..T-1-k
        s = -sum(lp[b, i, targets[b, i + k]] for b in range(B) for i in range(T - k))
        depth.append(s / (B * T))
    return main + lam / D * sum(depth), main, depth


def test_loss_equals_hand_reference(device):
    model = make_model(device=device, mtp_depth=2)
    seq = tokens(B=2, T=9, device=device)
    x, y = seq[:, :-1], seq[:, 1:]
    out = model(x)
    parts = mtp_loss(out, y, lam=0.3)
    total, main, depth = reference_loss(out, y, 0.3)
    torch.testing.assert_close(parts.total, total)
    torch.testing.assert_close(parts.main, main)
    for a, b in zip(parts.depth, depth, strict=True):
        torch.testing.assert_close(a, b)
    mean = mtp_loss(out, y, lam=0.3, normalize="mean")
    T = y.shape[1]
    for k, (a, b) in enumerate(zip(mean.depth, depth, strict=True), start=1):
        torch.testing.assert_close(a, b * T / (T - k))


def test_loss_bad_input():
    model = make_model()
    out = model(tokens(T=8))
    with pytest.raises(ValueError, match="targets shape"):
        mtp_loss(out, tokens(T=7), lam=0.3)
    with pytest.raises(ValueError, match="normalize"):
        mtp_loss(out, tokens(T=8), lam=0.3, normalize="sum")
    with pytest.raises(ValueError, match="must exceed mtp_depth"):
        mtp_loss(model(tokens(T=2)), tokens(T=2), lam=0.3)


@pytest.mark.parametrize("change, match", [
    (dict(pad=-100), r"no ignore_index \(-100 is not skipped\)"),   # torch would silently skip it
    (dict(pad_all=-100), r"got range \[-100, -100\]"),              # torch would return NaN
    (dict(pad=64), r"token ids in \[0, 64\)"),                       # torch would fail inside cross_entropy
    (dict(pad=-1), r"token ids in \[0, 64\)"),
    (dict(dtype=torch.float32), "integer token ids"),
    (dict(lam=float("nan")), "lambda must be a finite number >= 0"),
    (dict(lam=float("inf")), "lambda must be a finite number >= 0"),
    (dict(lam=-0.1), "lambda must be a finite number >= 0"),
    (dict(lam="0.3"), "lambda must be a finite number >= 0"),
    (dict(lam=True), "lambda must be a finite number >= 0"),
])
def test_loss_refuses_unusable_targets_and_lambda(change, match, device):
    model = make_model(device=device)
    out = model(tokens(T=8, device=device))
    y = tokens(T=8, seed=3, device=device)
    if "pad" in change:
        y[1, 5] = change["pad"]
    if "pad_all" in change:
        y[:] = change["pad_all"]
    if "dtype" in change:
        y = y.to(change["dtype"])
    with pytest.raises(ValueError, match=match):
        mtp_loss(out, y, lam=change.get("lam", 0.3))


def test_lambda_schedule():
    assert mtp_lambda(0.0) == 0.3 and mtp_lambda(0.6) == 0.3
    assert mtp_lambda(0.7) == 0.1 and mtp_lambda(1.0) == 0.1
    with pytest.raises(ValueError):
        mtp_lambda(1.5)


# ---------------------------------------------------------------- sharing, config, counts

def test_embedding_and_head_are_shared_not_copied():
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("mtp.") and ("embed" in n or n.endswith("head.weight")) for n in names)
    # the MTP logits move when the one head tensor moves
    x = tokens()
    before = model(x).mtp_logits[0].clone()
    with torch.no_grad():
        model.head.weight.mul_(2)
        model.embed.weight.add_(0.1)
    assert not torch.allclose(model(x).mtp_logits[0], before)
    # gradients from the MTP loss alone reach the shared embedding and head
    model.zero_grad()
    out = model(x)
    mtp_loss(out, tokens(seed=5), lam=1.0).depth[0].backward()
    assert model.head.weight.grad.abs().sum() > 0 and model.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=30, n_heads=4), "divisible by n_heads"),
    (dict(mtp_depth=-1), "mtp_depth"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_layers=-2), "n_layers"),
    (dict(d_ff=1.5), "d_ff"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(d_model=36, n_heads=4), "even"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)


def test_config_roundtrip_and_presets():
    cfg = get_preset("course")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**cfg.to_dict(), "dmodel": 3})


@pytest.mark.parametrize("bad, match", [
    (dict(norm_eps=float("inf")), "norm_eps must be a finite number > 0"),     # all-zero logits otherwise
    (dict(norm_eps=float("nan")), "norm_eps must be a finite number > 0"),
    (dict(norm_eps="1e-6"), "norm_eps must be a finite number > 0"),           # a str from a hand-edited json
    (dict(norm_eps=True), "norm_eps must be a finite number > 0"),
    (dict(init_std=float("inf")), "init_std must be a finite number > 0"),
    (dict(init_std="0.02"), "init_std must be a finite number > 0"),
    (dict(rope_theta=float("inf")), "rope_theta must be a finite number > 0"),
    (dict(rope_theta="10000"), "rope_theta must be a finite number > 0"),
    (dict(rope_theta=None), "rope_theta must be a finite number > 0"),
    (dict(mtp_input_norm="no"), "mtp_input_norm must be True or False"),       # "no" is truthy
    (dict(mtp_input_norm=0), "mtp_input_norm must be True or False"),
    (dict(mtp_input_norm=None), "mtp_input_norm must be True or False"),
    (dict(fp8=None), "fp8 must be one of"),
    (dict(fp8=["all"]), "fp8 must be one of"),
    (dict(vocab_size=True), "vocab_size must be a positive integer"),
    (dict(vocab_size="64"), "vocab_size must be a positive integer"),
    (dict(n_heads=4.0), "n_heads must be a positive integer"),
    (dict(mtp_depth=False), "mtp_depth must be an integer >= 0"),
    (dict(max_seq_len=None), "max_seq_len must be a positive integer"),
])
def test_config_checks_every_field_from_the_api_and_from_json(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)
    # config.json goes through the same checks (json writes inf as Infinity and reads it back as inf)
    text = json.dumps({**get_preset("tiny").to_dict(), **bad})
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict(json.loads(text))


def test_config_accepts_integral_floats():
    cfg = ModelConfig(rope_theta=500000, norm_eps=1, init_std=0.01)     # json may store 500000.0 as 500000
    assert cfg.rope_theta == 500000 and ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_bad_tokens_rejected():
    model = make_model()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        model(torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens\\[None\\]"):
        model(torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("preset", ["tiny", "course"])
def test_parameter_counts_closed_form(preset):
    cfg = get_preset(preset)
    V, d, L, f, D = cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.d_ff, cfg.mtp_depth
    block = 4 * d * d + 3 * d * f + 2 * d            # wq wk wv wo, w1 w2 w3, two norm gains
    module = 2 * d + 2 * d * d + block + d            # enorm, hnorm, eh_proj, TRM_k, shared_head.norm
    counts = MTPModel(cfg).parameter_counts()
    assert counts["shared"] == 2 * V * d
    assert counts["main"] == L * block + d
    assert counts["mtp_per_module"] == [module] * D
    assert counts["total"] == 2 * V * d + L * block + d + D * module
    assert counts["total"] == sum(p.numel() for p in MTPModel(cfg).parameters())
