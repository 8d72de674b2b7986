"""The speed-up model (mtp_lab.proportion) against hand-derived closed forms, the engine-timed draft cost, and the
speed-up lab view."""

import math

import pytest

from mtp_lab.bench import build_drafters, repeated_bench, run_bench
from mtp_lab.config import get_preset
from mtp_lab.course import evaluate
from mtp_lab.proportion import (
    alpha_from_tau,
    bench_point,
    break_even_alpha,
    draft_cost_vs_depth,
    expected_tokens,
    measure_draft_cost,
    predicted_speedup,
    random_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.85, 0.999])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_expected_tokens_is_the_geometric_series(alpha, k):
    assert expected_tokens(alpha, k) == pytest.approx((1 - alpha ** (k + 1)) / (1 - alpha), rel=1e-12)


def test_expected_tokens_at_full_acceptance_is_k_plus_one():
    assert expected_tokens(1.0, 3) == 4.0 and expected_tokens(0.0, 3) == 1.0


def test_predicted_speedup_by_hand():
    # alpha 0.8, k 2: 1 + 0.8 + 0.64 = 2.44 tokens for 2 * 0.1 + 1.2 + 0.05 = 1.45 AR-token times
    assert predicted_speedup(0.8, 2, 0.1, 1.2, 0.05) == pytest.approx(2.44 / 1.45)
    assert predicted_speedup(0.8, 2, 0.1) == pytest.approx(2.44 / 1.2)      # the textbook tau / (k c + 1)


@pytest.mark.parametrize("c, v", [(0.1, 1.0), (0.42, 1.1), (0.0, 1.3)])
def test_break_even_for_one_draft_has_a_closed_form(c, v):
    # k = 1: 1 + alpha = c + v  =>  alpha = c + v - 1
    assert break_even_alpha(1, c, v) == pytest.approx(c + v - 1, abs=1e-7)


def test_break_even_solves_speedup_one_and_flags_the_impossible():
    a = break_even_alpha(4, 0.3, 1.5)
    assert 0 < a < 1 and predicted_speedup(a, 4, 0.3, 1.5) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(break_even_alpha(4, 0.9, 1.5))          # 5 tokens for 5.1 AR-token times: never pays
    assert break_even_alpha(2, 0.0, 0.9) == 0.0                 # a step cheaper than one token pays at alpha 0


@pytest.mark.parametrize("k", [1, 3, 4])
def test_alpha_from_tau_inverts_expected_tokens(k):
    for alpha in (0.1, 0.5, 0.9):
        assert alpha_from_tau(expected_tokens(alpha, k), k) == pytest.approx(alpha, abs=1e-7)
    with pytest.raises(ValueError, match="tau"):
        alpha_from_tau(k + 1.5, k)


def test_measure_draft_cost_times_the_engine():
    cfg = get_preset("tiny")
    r = measure_draft_cost(cfg, k=2, new_tokens=12, prompt_len=8, repeats=2)
    assert r["n_layers"] == cfg.n_layers and r["k"] == 2 and r["threads"] == 1
    assert r["c"] > 0 and r["verify"] > 0 and r["ar_ms_per_token"] > 0
    assert r["c_range"][0] <= r["c"] <= r["c_range"][1]
    with pytest.raises(ValueError, match="max_seq_len"):
        measure_draft_cost(cfg, new_tokens=60, prompt_len=8)
    rows = draft_cost_vs_depth(cfg, depths=(1, 3), new_tokens=8, prompt_len=4, repeats=1)
    assert [r["n_layers"] for r in rows] == [1, 3]


def test_bench_point_puts_a_row_in_ar_token_units():
    model = random_model(get_preset("tiny"))
    prompts = [[1, 2, 3, 4, 5, 6]]
    rows = run_bench(model, prompts, 10, [2], build_drafters(model, ["mtp"]))
    row = rows[1]
    p = bench_point(row)
    a = row["ms_per_main_forward"]["ar_token"]
    assert p["c"] == pytest.approx(row["ms_per_draft_forward"] / a)
    assert p["verify"] == pytest.approx(row["ms_per_main_forward"]["verify"] / a)
    assert expected_tokens(p["alpha"], 2) == pytest.approx(row["tau"], abs=1e-6)


def test_repeated_bench_reports_the_median_and_the_range():
    model = random_model(get_preset("tiny"))
    rows = repeated_bench(model, [[1, 2, 3, 4, 5, 6]], 8, [1], build_drafters(model, ["ngram"]), repeats=3)
    for r in rows:
        lo, hi = r["speedup_range"]
        assert r["repeats"] == 3 and len(r["speedup_samples"]) == 3
        assert lo <= r["speedup"] <= hi and r["speedup"] == sorted(r["speedup_samples"])[1]
    with pytest.raises(ValueError, match="repeats"):
        repeated_bench(model, [[1, 2, 3]], 4, [1], {}, repeats=0)


def test_speedup_lab_follows_its_sliders():
    from mtp_lab.viz import speedup_lab
    points = [{"label": "deep", "alpha": 0.8, "k": 3, "c": 0.08, "verify": 1.2, "speedup": 2.1},
              {"label": "shallow", "alpha": 0.8, "k": 3, "c": 0.45, "verify": 1.3, "speedup": 1.1}]
    lab = speedup_lab(points, interactive=False)
    assert lab.prediction == pytest.approx(predicted_speedup(0.8, 3, 0.08, 1.2))
    lab.c.value = 0.3
    lab.flush()
    assert lab.prediction == pytest.approx(predicted_speedup(0.8, 3, 0.3, 1.2))
    curve = lab.fig_c.data[0]
    i = min(range(len(curve.x)), key=lambda j: abs(curve.x[j] - 0.3))
    assert curve.y[i] == pytest.approx(predicted_speedup(0.8, 3, curve.x[i], 1.2))
    lab.preset.value = 1                                        # the shallow model's measured costs
    lab.flush()
    assert (lab.k.value, lab.c.value) == (3, 0.45) and "predicted speed-up" in lab.status.value
    lab.preset.value = "deepseek"
    lab.flush()
    assert lab.k.value == 1 and lab.prediction == pytest.approx(predicted_speedup(0.88, 1, round(1 / 62, 3), 1.0))
    with pytest.raises(ValueError, match="measured point"):
        speedup_lab([], interactive=False)


def test_break_even_exercise_check():
    good = evaluate("break_even", lambda k, c, v: break_even_alpha(k, c, v))
    assert good.passed, good.message
    closed_form = evaluate("break_even", lambda k, c, v: c + v - 1)       # right only for k = 1
    assert closed_form.status == "wrong" and "break_even(3" in closed_form.message
    assert evaluate("break_even", lambda k, c, v: None).status == "not attempted"
    textbook = evaluate("speedup", lambda a, k, c, v: expected_tokens(a, k) / (k * c + 1))
    assert textbook.status == "wrong" and "costs v" in textbook.message
    assert evaluate("speedup", lambda a, k, c, v: expected_tokens(a, k) / (k * c + v)).passed


def test_shipped_models_have_the_preset_shapes_and_proportions():
    from mtp_lab.bench import matmul_macs_per_token
    from mtp_lab.checkpoint import PRETRAINED_DIR, SHALLOW_DIR, load_config
    course, _ = load_config(PRETRAINED_DIR)
    shallow, _ = load_config(SHALLOW_DIR)
    assert course == get_preset("course") and shallow == get_preset("shallow")
    assert (course.n_layers, shallow.n_layers) == (24, 4)
    # one MTP module against the main model by matmul work alone: 0.098 against 0.420
    assert matmul_macs_per_token(course)["c"] < 0.1 < 0.4 < matmul_macs_per_token(shallow)["c"]
