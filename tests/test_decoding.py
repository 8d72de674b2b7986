"""Speculative decoding: greedy output equals AR, caches after rollback equal a fresh forward, metrics, errors."""

import pytest
import torch

from mtp_lab import (
    GenerationResult,
    ModelConfig,
    MTPDrafter,
    MTPModel,
    NGramDrafter,
    SamplingParams,
    generate,
    get_preset,
    mtp_loss,
    speculative_generate,
    speculative_steps,
)

pytestmark = pytest.mark.usefixtures("one_thread")      # tiny models: one thread is fastest


def stride_batch(B, T, V, g, noise):
    """Arithmetic sequences t_{i+1} = t_i + s (mod V), s in 1..3, with a fraction `noise` of random tokens."""
    start = torch.randint(0, V, (B, 1), generator=g)
    stride = torch.randint(1, 4, (B, 1), generator=g)
    x = (start + stride * torch.arange(T)) % V
    return torch.where(torch.rand(B, T, generator=g) < noise, torch.randint(0, V, (B, T), generator=g), x)


@pytest.fixture(scope="module")
def trained(device):
    """A tiny MTP model trained for a few seconds, so drafts are often (not always) accepted. float64, so that
    the batched verify forward and the one-token AR forward cannot disagree on an argmax by rounding. Trained
    on the CPU (the same weights everywhere), then moved to the tests' device."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, mtp_depth=2)
    model = MTPModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        x = stride_batch(16, 33, cfg.vocab_size, g, noise=0.1)
        loss = mtp_loss(model(x[:, :-1]), x[:, 1:], lam=0.3).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(n)
    return model.double().to(device).eval()


def prompts(n, V=32, seed=100):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(1, 12, (1,), generator=g))
        out.append(stride_batch(1, length, V, g, noise=0.3 if i % 2 else 1.0)[0].tolist())
    return out


# ---------------------------------------------------------------- lossless greedy

@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_greedy_speculative_equals_greedy_ar(trained, k):
    accepted, drafted = {"mtp": 0, "ngram": 0}, {"mtp": 0, "ngram": 0}
    for i, prompt in enumerate(prompts(16)):
        max_new = 17 + i % 7                 # the last block ends at varied offsets
        eos = prompt[-1] if i % 4 == 0 else None  # a stride sequence returns to its tokens: EOS mid-block
        ref = generate(trained, prompt, max_new, eos_id=eos)
        for drafter in ("mtp", "ngram"):
            out = speculative_generate(trained, prompt, max_new, num_draft=k, drafter=drafter, eos_id=eos)
            assert out.tokens == ref.tokens, (i, drafter)
            assert out.stats.stop_reason == ref.stats.stop_reason
            assert out.stats.new_tokens == len(out.tokens)
            accepted[drafter] += out.stats.accepted
            drafted[drafter] += out.stats.drafted
    # the check is meaningful: drafts were both accepted and rejected
    assert 0 < accepted["ngram"] < drafted["ngram"]
    assert 0.5 < accepted["mtp"] / drafted["mtp"] < 1.0


def test_eos_mid_block_stops_there(trained):
    prompt = [3, 5, 7, 9]               # stride 2: the model continues 11, 13, 15, ...
    full = generate(trained, prompt, 12)
    eos = full.tokens[4]
    assert eos not in full.tokens[:4]
    ref = generate(trained, prompt, 12, eos_id=eos)
    assert ref.tokens == full.tokens[:5] and ref.stats.stop_reason == "eos"
    for k in (2, 3, 5):
        out = speculative_generate(trained, prompt, 12, num_draft=k, eos_id=eos)
        assert out.tokens == ref.tokens and out.stats.stop_reason == "eos"


def test_max_seq_len_stops_cleanly(trained):
    L = trained.config.max_seq_len
    prompt = prompts(1)[0]
    prompt = (prompt * L)[:L - 5]
    ref = generate(trained, prompt, 50)
    out = speculative_generate(trained, prompt, 50, num_draft=4)
    assert len(ref.tokens) == 5 and ref.stats.stop_reason == "max_seq_len"
    assert out.tokens == ref.tokens and out.stats.stop_reason == "max_seq_len"
    full = speculative_generate(trained, (prompt * L)[:L], 10, num_draft=2)
    assert full.tokens == [] and full.stats.stop_reason == "max_seq_len"
    none = speculative_generate(trained, prompt, 0, num_draft=2)
    assert none.tokens == [] and none.stats.stop_reason == "max_new_tokens"


def test_pre_norm_recycling_is_still_lossless(trained):
    drafter = MTPDrafter(trained, recycle="pre_norm")
    for prompt in prompts(4):
        ref = generate(trained, prompt, 20)
        assert speculative_generate(trained, prompt, 20, num_draft=4, drafter=drafter).tokens == ref.tokens


def test_fp8_drafter_is_lossless_and_drafts_almost_as_well(trained):
    rates = {True: [], False: []}
    for prompt in prompts(6):
        ref = generate(trained, prompt, 20)
        for fp8 in (True, False):
            out = speculative_generate(trained, prompt, 20, num_draft=2, fp8_drafter=fp8)
            assert out.tokens == ref.tokens
            rates[fp8].append(out.stats.acceptance_rate)
    assert abs(sum(rates[True]) - sum(rates[False])) / len(rates[True]) < 0.15
    with pytest.raises(ValueError, match="drafter='mtp'"):
        speculative_generate(trained, [1, 2], 5, drafter="ngram", fp8_drafter=True)


# ---------------------------------------------------------------- caches after rollback

def fresh_caches(model, tokens, lengths):
    """Caches from scratch: the main model over tokens[:-1], module j over its first lengths[j-1] positions.

    Module j at position i takes (h^{j-1}_i, t_{i+j}); h^0 is the main model's state.
    """
    cache, device = model.new_cache(), model.head.weight.device
    x = torch.tensor(tokens[:-1], device=device)[None]
    _, h = model.forward_main(x, cache)                                        # (1, n, C)
    for j, m in enumerate(lengths, start=1):
        _, h = model.forward_mtp(j, h[:, :m], torch.tensor(tokens[j:j + m], dtype=torch.long, device=device)[None],
                                 cache)
    return cache


@pytest.mark.parametrize("k,temperature", [(4, 0.0), (3, 1.0), (1, 1.0)])
def test_caches_after_rollback_equal_fresh_forward(trained, k, temperature):
    drafter = MTPDrafter(trained)
    prompt = [4, 7, 10, 21, 3, 9, 30]
    steps = speculative_steps(trained, prompt, 40, num_draft=k, temperature=temperature, seed=3,
                              drafter=drafter)
    tokens = list(prompt)
    rejected = partial = 0
    for ev in steps:
        tokens += ev.emitted
        cache = drafter.cache
        assert cache.length == len(tokens) - 1
        lengths = [c.length for c in cache.mtp]
        for j, m in enumerate(lengths, start=1):
            assert m <= len(tokens) - 1 - j      # module j only holds positions whose t_{i+j} is committed
        ref = fresh_caches(trained, tokens, lengths)
        for got, want in zip(cache.main + cache.mtp, ref.main + ref.mtp, strict=True):
            assert got.length == want.length
            torch.testing.assert_close(got.k[:, :, :got.length], want.k[:, :, :want.length])
            torch.testing.assert_close(got.v[:, :, :got.length], want.v[:, :, :want.length])
        rejected += ev.n_accepted < len(ev.draft_tokens)
        partial += 0 < ev.n_accepted < len(ev.draft_tokens)
    assert rejected > 0 and (partial > 0 or k == 1)   # some steps rolled back (a part of) the block


def test_mtp_draft_distributions_equal_a_full_forward(trained):
    """q_j (j <= D) equals the full-sequence forward over the committed tokens and the earlier drafts: module j
    at position n-1 predicts t_{n+j}. Checked at every step, after every kind of rollback."""
    params = SamplingParams(temperature=1.0)
    tokens = [6, 9, 12, 2]
    checked = 0
    for ev in speculative_steps(trained, tokens, 40, num_draft=3, temperature=1.0, seed=5):
        if ev.draft_tokens:
            n = len(tokens) - 1
            out = trained(torch.tensor(tokens + ev.draft_tokens, device=trained.head.weight.device)[None])
            for j in range(1, min(len(ev.draft_tokens), trained.config.mtp_depth) + 1):
                ref = out.mtp_logits[j - 1][0, n - 1]
                torch.testing.assert_close(ev.draft_logits[j - 1], ref)
                torch.testing.assert_close(ev.draft_probs[j - 1], params.probs(ref))
                checked += 1
        tokens += ev.emitted
    assert checked > 20


def drafts_beyond_depth_reference(model, tokens, drafts):
    """Each draft's logits recomputed by hand, full sequence, no KV cache (t_0..t_n committed).

    j <= D: module j over positions 0..n-1, reading t_{i+j} (the drafts past t_n), as in training.
    j > D:  module D over positions 0..n-1+(j-D): its hidden input at positions 0..n-1 is h^{D-1}, at each
            later position the state module D output one position earlier (forward_mtp's post-norm state),
            its token input at position i is still t_{i+D}, so d_{j-1} at the last position.
    """
    D, n = len(model.mtp), len(tokens) - 1
    seq = torch.tensor(tokens + drafts, device=model.head.weight.device)[None]
    _, h = model.forward_main(seq[:, :n])                                      # h_0..h_{n-1}
    logits_out = []
    for j in range(1, D + 1):
        h_in = h
        logits, h = model.forward_mtp(j, h_in, seq[:, j:n + j])
        logits_out.append(logits[0, -1])
    for j in range(D + 1, len(drafts) + 1):
        h_in = torch.cat([h_in, h[:, -1:]], dim=1)                             # append the recycled state
        logits, h = model.forward_mtp(D, h_in, seq[:, D:n + j])
        logits_out.append(logits[0, -1])
    return torch.stack(logits_out)                                             # (k, V)


def test_mtp_drafts_beyond_depth_equal_a_cache_free_reference(device):
    """k = D + 2 on the tiny preset, random weights and gains: drafts and logits of every position, module D's
    two reuses included, equal the hand-built full-sequence reference at every step of a greedy generation."""
    torch.manual_seed(4)
    model = MTPModel(get_preset("tiny")).double().to(device).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)                     # a norm in the wrong place changes the numbers
    k = model.config.mtp_depth + 2                     # D = 2: module 2 drafts positions 2, 3 and 4
    tokens = [5, 17, 40, 2, 33, 9]
    checked = 0
    for ev in speculative_steps(model, tokens, 30, num_draft=k, drafter=MTPDrafter(model)):
        if len(ev.draft_tokens) == k:
            ref = drafts_beyond_depth_reference(model, tokens, ev.draft_tokens)
            torch.testing.assert_close(ev.draft_logits, ref)
            assert ev.draft_tokens == ref.argmax(-1).tolist()                  # greedy drafts: the argmaxes
            checked += 1
        tokens += ev.emitted
    assert checked >= 5


# ---------------------------------------------------------------- events and metrics

def test_events_rebuild_the_output_and_the_stats(trained):
    k = 3
    prompt = [1, 4, 7]
    steps = speculative_steps(trained, prompt, 30, num_draft=k, temperature=0.8, seed=0)
    events = []
    while True:
        try:
            events.append(next(steps))
        except StopIteration as done:
            result = done.value
            break
    assert isinstance(result, GenerationResult)
    assert [t for ev in events for t in ev.emitted] == result.tokens
    assert events[0].draft_tokens == [] and events[0].position == len(prompt)  # the prefill
    assert events[-1].stop_reason == result.stats.stop_reason == "max_new_tokens"
    V = trained.config.vocab_size
    for ev in events[1:]:
        kk = len(ev.draft_tokens)
        assert ev.draft_probs.shape == (kk, V) and ev.target_probs.shape == (kk + 1, V)
        assert ev.accepted == [True] * ev.n_accepted + [False] * (kk - ev.n_accepted)
        # the rule as stated: accepted iff u < p/q, up to the first failure
        for i in range(ev.n_accepted + (ev.n_accepted < kk)):
            d = ev.draft_tokens[i]
            ratio = float(ev.target_probs[i, d] / ev.draft_probs[i, d])
            assert (float(ev.uniforms[i]) < ratio) == (i < ev.n_accepted)
        assert ev.emitted == ev.draft_tokens[:ev.n_accepted] + [ev.next_token]
        assert ev.is_bonus == (kk > 0 and ev.n_accepted == kk)
        assert float(ev.target_probs[min(ev.n_accepted, kk), ev.next_token]) > 0
    s = result.stats
    drafting = [ev for ev in events if ev.draft_tokens]
    assert s.main_forwards == len(events)
    assert s.steps == len(drafting)
    assert s.drafted == sum(len(ev.draft_tokens) for ev in drafting)
    assert s.accepted == sum(ev.n_accepted for ev in drafting)
    assert s.acceptance_rate == pytest.approx(s.accepted / s.drafted)
    assert s.mean_acceptance_length == pytest.approx(1 + s.accepted / s.steps)
    for j in range(k):
        n_j = sum(len(ev.draft_tokens) > j for ev in drafting)
        assert s.per_position[j] == pytest.approx(sum(ev.n_accepted > j for ev in drafting) / n_j)
    assert s.per_position == sorted(s.per_position, reverse=True)   # position j needs 1..j-1 accepted
    assert s.draft_forwards == s.drafted                            # one module forward per MTP draft
    assert s.tokens_per_main_forward == pytest.approx(len(result.tokens) / len(events))


def test_same_seed_same_sample(trained):
    a = speculative_generate(trained, [2, 3], 25, num_draft=2, temperature=1.0, top_k=10, seed=7)
    b = speculative_generate(trained, [2, 3], 25, num_draft=2, temperature=1.0, top_k=10, seed=7)
    assert a.tokens == b.tokens


def test_ngram_lookup():
    d = NGramDrafter(vocab_size=10, max_n=3)
    # the last 3-gram (1, 2, 3) occurred at index 0; what followed it is proposed
    assert d.lookup([1, 2, 3, 9, 8, 0, 1, 2, 3], 3) == [9, 8, 0]
    assert d.lookup([1, 2, 3, 9, 8, 0, 1, 2, 3], 2) == [9, 8]
    # no 3-gram or 2-gram match: the latest 1-gram match wins
    assert d.lookup([5, 1, 6, 2, 6, 3, 7, 6], 2) == [3, 7]
    # a match near the end proposes fewer tokens (the suffix itself never matches)
    assert d.lookup([4, 4, 4], 3) == [4]
    assert d.lookup([1, 2, 3], 2) == []
    # match() also says how long the matched suffix was: the trees score a continuation by it
    assert d.match([1, 2, 3, 9, 8, 0, 1, 2, 3], 3) == (3, [9, 8, 0])
    assert d.match([5, 1, 6, 2, 6, 3, 7, 6], 2) == (1, [3, 7])
    assert d.match([4, 4, 4], 3) == (2, [4])
    assert d.match([1, 2, 3], 2) == (0, [])
    # continuations(): what followed EVERY earlier match of the longest matching suffix, latest first
    assert d.continuations([7, 1, 2, 3, 1, 2, 4, 1, 2], 2) == (2, [[4, 1], [3, 1]])
    assert d.continuations([5, 1, 6, 2, 6, 3, 7, 6], 3) == (1, [[3, 7, 6], [2, 6, 3]])
    assert d.continuations([1, 2, 3], 2) == (0, []) and d.continuations([4], 2) == (0, [])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt_ids=[]), "empty"),
    (dict(prompt_ids=[1, 99]), r"token ids must lie in \[0, 32\)"),
    (dict(prompt_ids=[-1, 2]), "token ids must lie"),
    (dict(prompt_ids=[1.0, 2.0]), "integer token ids"),
    (dict(prompt_ids="def f"), r"got str; encode text first: tokenizer.encode\(text\).ids"),
    (dict(prompt_ids=object()), r"got object; encode text first"),      # e.g. a tokenizers Encoding, not its .ids
    (dict(prompt_ids=torch.zeros(2, 3, dtype=torch.long)), "batch size 1"),
    (dict(prompt_ids=list(range(32)) * 3), "exceeds max_seq_len"),
    (dict(temperature=-0.5), "temperature"),
    (dict(num_draft=-1), "num_draft"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(eos_id=32), "eos_id"),
    (dict(drafter="medusa"), "unknown drafter"),
])
def test_bad_input_raises_clear_error(trained, kwargs, match):
    args = dict(prompt_ids=[1, 2, 3], max_new_tokens=5, num_draft=2, temperature=0.7)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        speculative_generate(trained, **args)
    if "num_draft" not in kwargs and "drafter" not in kwargs:
        del args["num_draft"]
        with pytest.raises(ValueError, match=match):
            generate(trained, **args)


def test_mtp_drafter_needs_mtp_modules():
    model = MTPModel(ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16,
                                 mtp_depth=0))
    with pytest.raises(ValueError, match="ngram"):
        speculative_generate(model, [1, 2], 4, num_draft=2)
    ref = generate(model, [1, 2], 6)
    assert speculative_generate(model, [1, 2], 6, num_draft=2, drafter="ngram").tokens == ref.tokens
    assert speculative_generate(model, [1, 2, 1, 2], 6, num_draft=3, drafter="suffix").tokens == \
        generate(model, [1, 2, 1, 2], 6).tokens                     # lookup only: no MTP module needed
