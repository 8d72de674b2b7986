"""`mtp-lab bench` runs end to end (random tiny model) and writes a strict-JSON table consistent with itself."""

import json

import pytest
import torch
from cli_errors import one_line_error

from mtp_lab.bench import matmul_macs_per_token, merge, speedup_ceiling
from mtp_lab.cli import main
from mtp_lab.decoding import GenerationStats

pytestmark = pytest.mark.usefixtures("one_thread")      # tiny models: one thread is fastest


def test_bench_command_writes_a_consistent_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--random", "tiny", "--prompts", "2", "--prompt-len", "12", "--new-tokens", "10",
               "--k", "1", "3", "--drafters", "mtp", "mtp-pre", "ngram", "--threads", "1", "--json", str(out)])
    assert rc == 0
    assert "speedup" in capsys.readouterr().out
    result = json.loads(out.read_text())          # strict JSON: NaN would not parse back as a number here
    rows = {(r["drafter"], r["k"]): r for r in result["rows"]}
    # tiny has D = 2: pre-norm recycling only differs (and only runs) for k > D
    assert set(rows) == {("ar", 0), ("mtp", 1), ("mtp", 3), ("mtp-pre", 3), ("ngram", 1), ("ngram", 3)}
    assert rows[("ar", 0)]["speedup"] == pytest.approx(1.0) and rows[("ar", 0)]["cpu_speedup"] == pytest.approx(1.0)
    for r in result["rows"]:
        assert r["new_tokens"] == 2 * 10
        assert r["identical_to_ar"] == 2                 # greedy speculative decoding is lossless
        assert r["speedup_over_tau"] == pytest.approx(r["speedup"] / r["tau"])
        assert len(r["per_position"]) == r["k"]
    mtp = rows[("mtp", 3)]
    assert mtp["drafting_steps"] <= mtp["draft_forwards"] <= 3 * mtp["drafting_steps"]   # one forward per draft
    assert rows[("ngram", 3)]["draft_forwards"] == 0


def test_bad_arguments_exit_with_a_message(capsys):
    assert main(["bench", "--random", "tiny", "--prompts", "0"]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert main(["bench", "--random", "tiny", "--prompt-len", "60", "--new-tokens", "10"]) == 2
    assert "max_seq_len" in capsys.readouterr().err


def test_merge_sums_counters_and_positions():
    a = GenerationStats(new_tokens=5, main_forwards=3, steps=2, drafted=4, accepted=3, wall_time_s=1.0,
                        drafted_per_position=[2, 2], accepted_per_position=[2, 1])
    b = GenerationStats(new_tokens=7, main_forwards=4, steps=3, drafted=5, accepted=1, wall_time_s=2.0,
                        drafted_per_position=[3, 2], accepted_per_position=[1, 0])
    m = merge([a, b])
    assert (m.new_tokens, m.main_forwards, m.steps, m.drafted, m.accepted) == (12, 7, 5, 9, 4)
    assert m.drafted_per_position == [5, 4] and m.accepted_per_position == [3, 1]
    assert m.mean_acceptance_length == pytest.approx(1 + 4 / 5)
    assert m.wall_time_s == pytest.approx(3.0)


def test_matmul_macs_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from mtp_lab import MTPModel, get_preset

    cfg = get_preset("tiny")
    model = MTPModel(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 1))

    def matmul_flops(fn):                       # torch's own count of the matmuls (2 flops per multiply-add)
        with FlopCounterMode(display=False) as counter:
            fn()
        counts = counter.get_flop_counts()["Global"]
        return sum(v for op, v in counts.items() if "mm" in str(op))

    with torch.no_grad():
        main = matmul_flops(lambda: model.forward_main(x))
        h = torch.randn(1, 1, cfg.d_model)
        module = matmul_flops(lambda: model.forward_mtp(1, h, x))
    macs = matmul_macs_per_token(cfg)
    assert (macs["main"], macs["mtp_module"]) == (main // 2, module // 2)
    assert speedup_ceiling(macs["c"], 1) == pytest.approx(2 / (1 + macs["c"]))
    assert speedup_ceiling(0.0, 4) == 5.0


def test_merge_pads_generations_that_drafted_fewer_positions():
    # a generation that only drafted k = 1 merged with one at k = 2 (a zip would drop position 2)
    a = GenerationStats(steps=2, drafted=4, accepted=3, drafted_per_position=[2, 2], accepted_per_position=[2, 1])
    b = GenerationStats(steps=3, drafted=3, accepted=2, drafted_per_position=[3], accepted_per_position=[2])
    for m in (merge([a, b]), merge([b, a]), GenerationStats.merge([b, a])):
        assert m.drafted_per_position == [5, 2] and m.accepted_per_position == [4, 1]
        assert m.per_position == pytest.approx([4 / 5, 1 / 2])


def test_bench_runs_the_trees_and_counts_who_proposed_each_accepted_token(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--random", "tiny", "--prompts", "2", "--prompt-len", "12", "--new-tokens", "12",
               "--k", "3", "--drafters", "mtp-tree", "hybrid", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "accepted from" in text
    for r in json.loads(out.read_text())["rows"][1:]:
        assert r["identical_to_ar"] == 2
        n_acc = round((r["tau"] - 1) * r["drafting_steps"])            # tau = 1 + accepted / steps
        assert sum(r["accepted_by_source"].values()) == n_acc
        assert r["nodes_per_step"] >= 1 and len(r["per_position"]) <= r["k"]


def test_verify_cost_command_writes_the_curve(tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["bench", "--random", "tiny", "--verify-cost", "8", "--repeats", "3", "--json", str(out)]) == 0
    assert "largest tree" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["n"] == list(range(1, 9)) and res["v"][0] == pytest.approx(1.0) and res["repeats"] == 3
    assert all(b >= a for a, b in zip(res["v_fit"][:-1], res["v_fit"][1:], strict=True))   # the fit never falls
    assert res["largest_n_within"]["2.0"] >= res["largest_n_within"]["1.25"] >= 1
    for n in ("1", "-2"):                    # the flag is named, not the library's max_n
        assert "--verify-cost must be an integer >= 2" in one_line_error(
            capsys, ["bench", "--random", "tiny", "--verify-cost", n])


def test_stopping_command_scores_fixed_k_against_the_cost_rule(tmp_path, capsys):
    out = tmp_path / "s.json"
    args = ["bench", "--random", "tiny", "--prompts", "4", "--prompt-len", "8", "--new-tokens", "24"]
    assert main(args + ["--stopping", "3", "--temperature", "1", "--repeats", "2", "--json", str(out)]) == 0
    assert "cost rule: in-sample" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["K"] == 3 and res["seeds"] == 2 and res["prompts"] == 4 and set(res["fixed"]) == {"1", "2", "3"}
    assert res["in_sample"]["rate"] >= max(res["fixed"].values()) * 0.9 and len(res["acceptance"]) == 3
    assert "--stopping must be a positive integer and <= 30" in one_line_error(capsys, args + ["--stopping", "300"])
    assert "two separate measurements" in one_line_error(capsys, args + ["--stopping", "3", "--verify-cost", "8"])
    assert "at least two prompts" in one_line_error(capsys, args[:3] + ["--prompts", "1"] + args[5:] + ["--stopping",
                                                                                                   "3"])


def test_monotone_fit_pools_adjacent_violators():
    from mtp_lab.tree import monotone
    assert monotone([1.0, 1.2, 1.1, 1.5]) == pytest.approx([1.0, 1.15, 1.15, 1.5])     # least squares: the mean
    assert monotone([1.0, 3.0, 1.0, 1.0]) == pytest.approx([1.0, 5 / 3, 5 / 3, 5 / 3])
    assert monotone([1.0, 2.0]) == [1.0, 2.0]


def test_merge_sums_the_sources():
    a = GenerationStats(accepted_by_source={"mtp": 3, "ngram": 1})
    b = GenerationStats(accepted_by_source={"mtp": 2, "mtp+ngram": 4})
    assert merge([a, b]).accepted_by_source == {"mtp": 5, "ngram": 1, "mtp+ngram": 4}
