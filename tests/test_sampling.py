"""Temperature, top-k and top-p against hand-derived distributions; argument checks."""

import math

import pytest
import torch

from mtp_lab import SamplingParams, probs_from_logits


def test_greedy_is_one_hot_at_the_first_argmax():
    logits = torch.tensor([[0.1, 2.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    probs = probs_from_logits(logits, temperature=0.0, top_k=1, top_p=0.1)
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert SamplingParams().sample(probs[0]) == 1


def test_temperature_is_a_scaled_softmax():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    for t in (0.5, 1.0, 2.0):
        e = [math.exp(x / t) for x in logits.tolist()]
        want = torch.tensor([x / sum(e) for x in e])
        torch.testing.assert_close(probs_from_logits(logits, t), want)


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    e3, e2 = math.exp(3.0), math.exp(2.0)
    want = torch.tensor([0.0, e3 / (e3 + e2), e2 / (e3 + e2), 0.0])
    torch.testing.assert_close(probs_from_logits(logits, 1.0, top_k=2), want)
    torch.testing.assert_close(probs_from_logits(logits, 1.0, top_k=10), probs_from_logits(logits, 1.0))


def test_top_p_keeps_the_smallest_set_reaching_p():
    p = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = p.log()
    # sorted 0.5, 0.3, 0.15, 0.05: the mass before each is 0, 0.5, 0.8, 0.95
    torch.testing.assert_close(probs_from_logits(logits, 1.0, top_p=0.8), torch.tensor([0.0, 0.625, 0.0, 0.375]))
    torch.testing.assert_close(probs_from_logits(logits, 1.0, top_p=0.81),
                               torch.tensor([0.15, 0.5, 0.0, 0.3]) / 0.95)
    torch.testing.assert_close(probs_from_logits(logits, 1.0, top_p=0.5), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(probs_from_logits(logits, 1.0, top_p=1.0), p)


def test_top_k_then_top_p_row_by_row():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.4, 0.3, 0.2, 0.1]]).log()
    got = probs_from_logits(logits[None], 1.0, top_k=3, top_p=0.7)                  # (1, 2, V)
    # row 0: top-3 renormalised = [0.15, 0.5, 0, 0.3]/0.95; sorted masses before: 0, 0.526 -> keep 0.5, 0.3
    # row 1: top-3 = [0.4, 0.3, 0.2]/0.9; masses before: 0, 0.444, 0.778 -> keep 0.4, 0.3
    want = torch.tensor([[[0.0, 0.625, 0.0, 0.375], [4 / 7, 3 / 7, 0.0, 0.0]]])
    torch.testing.assert_close(got, want)


def test_float64_logits_stay_float64():
    assert probs_from_logits(torch.zeros(3, dtype=torch.float64), 1.0).dtype == torch.float64
    assert probs_from_logits(torch.zeros(3, dtype=torch.bfloat16), 1.0).dtype == torch.float32


def test_sample_follows_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0)
    counts = torch.bincount(torch.tensor([params.sample(probs, gen) for _ in range(4000)]), minlength=4)
    assert counts[1] == 0
    assert (counts / 4000 - probs).abs().max() < 0.03            # 4 sigma is about 0.03 here


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), r"top_p must be None or a number in \(0, 1\]"),
    (dict(top_p=1.01), "top_p"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-1.0),             # would invert the distribution: softmax(-logits)
    dict(temperature=float("nan")),     # would give all-NaN probabilities
    dict(temperature=float("inf")),
    dict(temperature="0.7"),
    dict(temperature=1.0, top_k=0),
    dict(temperature=1.0, top_k=True),
    dict(temperature=1.0, top_p=0.0),   # would drop every token: 0 / 0
    dict(temperature=1.0, top_p=float("nan")),
    dict(temperature=1.0, top_p=1.5),
])
def test_probs_from_logits_checks_like_sampling_params(kwargs):
    with pytest.raises(ValueError) as direct:
        probs_from_logits(torch.tensor([1.0, 3.0, 2.0]), **kwargs)
    with pytest.raises(ValueError) as params:
        SamplingParams(**kwargs)
    assert str(direct.value) == str(params.value)        # one validator, one message
