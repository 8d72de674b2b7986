"""The course's exercise checks must accept right answers, name the usual mistakes, and never pass wrong ones.

Also checks that the stored notebooks are what tools/build_notebooks.py makes from notebooks/src (clean:
no stale outputs, no widget state).
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtp_lab.course import EXERCISES, SOLUTION_NOT_RUN, check, evaluate, solution_cell, torch_threads
from mtp_lab.course_checks import LOSSLESS

ROOT = Path(__file__).resolve().parents[1]


def _rms(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _tiles(x):
    M, K = x.shape
    n = -(-K // 128)
    return F.pad(x, (0, n * 128 - K)).view(M, n, 128).abs().amax(-1) / 448


def _fake_quant(x):
    s = _tiles(x).repeat_interleave(128, dim=1)[:, :x.shape[1]]
    return (x / s).to(torch.float8_e4m3fn).float() * s


def _tokens(a, k):
    return (1 - a ** (k + 1)) / (1 - a) if a != 1 else k + 1.0


def _walk(tokens, parents, p, sample):
    """The tree walk written out here, independent of mtp_lab.tree.tree_accept."""
    kids = {}
    for i, (t, par) in enumerate(zip(tokens, parents, strict=True)):
        kids.setdefault(par, {})[t] = i
    path, node = [], -1
    while True:
        y = sample(p[node + 1])
        if y not in kids.get(node, {}):
            return path, y
        node = kids[node][y]
        path.append(node)


def _walk_resampling(tokens, parents, p, sample):
    path, y = _walk(tokens, parents, p, sample)
    return path, sample(p[path[-1] + 1 if path else 0])        # draws again after the miss


def _walk_rows_off_by_one(tokens, parents, p, sample):
    return _walk(tokens, parents, torch.cat([p[:1], p]), sample)   # node i reads row i, the root's for node 0


def _size(scores, v, r, root=1):
    """Node by node: the n-th (1-based) goes in while s_n > r times what it adds, v[n] - v[n - 1] with the root in
    the forward (root=0: v[n - 1] - v[n - 2], the forward without it)."""
    n = 0
    while n < len(scores) and scores[n] > r * (v[n + root] - v[n + root - 1] if n + root else 0.0):
        n += 1
    return n


def _size_overall(scores, v, r):
    """The best N overall, argmax of sum s - r v(N + 1): not causal, the tempting wrong answer on a steppy v."""
    values = [sum(scores[:n]) - r * v[n] for n in range(len(scores) + 1)]
    return max(range(len(values)), key=values.__getitem__)


def _size_of_one_step(scores, v, r):
    """The per-step ratio, which ignores r: the tempting wrong answer."""
    rates = [(1 + sum(scores[:n])) / v[n] for n in range(len(scores) + 1)]
    return max(range(len(rates)), key=rates.__getitem__)


def _break_even(k, c, v):
    """Bisection written out here, independent of mtp_lab.proportion."""
    if _tokens(1.0, k) <= k * c + v:
        return float("nan")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _tokens(mid, k) < k * c + v else (lo, mid)
    return lo


# name -> (a right answer, [(a wrong answer, a word the verdict must contain), ...])
CASES = {
    "target_index": (lambda i, k: i + k + 1, [(lambda i, k: i + k, "off by one"),
                                              (lambda i, k: i + 2 * k + 1, "expected")]),
    "mtp_share": (14 / 685, [(14 / 671, "685"), (2.04, "percentage"), (0.5, "not the MTP share")]),
    "greedy_next": (lambda z: z[:, -1].argmax(-1), [(lambda z: z[:, 0].argmax(-1), "FIRST"),
                                                     (lambda z: z[:, -1].softmax(-1).max(-1).values, "floats"),
                                                     (lambda z: z.argmax(-1), "shape")]),
    "block_params": (lambda d, f: 4 * d * d + 3 * d * f + 2 * d,
                     [(lambda d, f: 4 * d * d + 3 * d * f, "RMSNorm gains"),
                      (lambda d, f: 4 * d * d + 2 * d * f + 2 * d, "THREE")]),
    "rmsnorm": (_rms, [(lambda x, w, e: F.layer_norm(x, x.shape[-1:], w, None, e), "LayerNorm"),
                       (lambda x, w, e: _rms(x, 1.0, e), "gain"),
                       (lambda x, w, e: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + e) * w, "outside"),
                       (lambda x, w, e: x[..., :3], "shape")]),
    "layernorm": (lambda x, e: (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + e).sqrt(),
                  [(lambda x, e: (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + e).sqrt(), "unbiased"),
                   (lambda x, e: _rms(x, 1.0, e), "RMSNorm")]),
    "mtp_inputs": (lambda h, t, k: (h[:, :h.shape[1] - k], t[:, k:]),
                   [(lambda h, t, k: (h[:, :h.shape[1] - k], t[:, k + 1:]), "label leak"),
                    (lambda h, t, k: (h[:, :h.shape[1] - k], t[:, k - 1:-1]), "k-1"),
                    (lambda h, t, k: (h[:, k:], t[:, k:]), "drops the first"),
                    (lambda h, t, k: h, "pair")]),
    "mtp_combine": (lambda m, e, h: m.eh_proj(torch.cat([m.enorm(e), m.hnorm(h)], -1)),
                    [(lambda m, e, h: m.eh_proj(torch.cat([m.hnorm(h), m.enorm(e)], -1)), "[h; e]"),
                     (lambda m, e, h: m.eh_proj(torch.cat([e, h], -1)), "RMSNorms"),
                     (lambda m, e, h: m.block(m.eh_proj(torch.cat([m.enorm(e), m.hnorm(h)], -1))), "block")]),
    "mtp_targets": (lambda t, k: t[:, k:], [(lambda t, k: t[:, :-k], "MAIN"), (lambda t, k: t[:, k - 1:], "off by one"),
                                            (lambda t, k: t[:, k:].flip(1), "wrong targets")]),
    "depth_loss": (lambda lg, t, k: F.cross_entropy(lg.flatten(0, 1), t[:, k:].flatten(), reduction="sum") / t.numel(),
                   [(lambda lg, t, k: F.cross_entropy(lg.flatten(0, 1), t[:, k:].flatten()), "T-k"),
                    (lambda lg, t, k: F.cross_entropy(lg.flatten(0, 1), t[:, :-k].flatten(), reduction="sum")
                     / t.numel(), "misaligned")]),
    "tile_scales": (_tiles, [(lambda x: x.abs().amax() / 448, "whole tensor"),
                             (lambda x: x.abs().amax(-1) / 448, "per row"),
                             (lambda x: 1 / _tiles(x), "reciprocal"),
                             (lambda x: _tiles(x) * 448 / 57344, "57344")]),
    "fake_quant": (_fake_quant, [(lambda x: x.to(torch.float8_e4m3fn).float(), "without scaling"),
                                 (lambda x: x.clone(), "nothing was quantised"), (lambda x: x.round(), "integers")]),
    "accept_prob": (lambda p, q, x: min(1.0, (p[x] / q[x]).item()),
                    [(lambda p, q, x: min(1.0, (q[x] / p[x]).item()), "upside down"),
                     (lambda p, q, x: (p[x] / q[x]).item(), "not a probability")]),
    "residual": (lambda p, q: (p - q).clamp(min=0) / (p - q).clamp(min=0).sum(),
                 [(lambda p, q: (q - p).clamp(min=0) / (q - p).clamp(min=0).sum(), "TARGET"),
                  (lambda p, q: (p - q).clamp(min=0), "normalised"), (lambda p, q: p - q, "negative")]),
    "greedy_accepted": (lambda d, t: next((i for i, (a, b) in enumerate(zip(d, t, strict=True)) if a != b), len(d)),
                        [(lambda d, t: sum(a == b for a, b in zip(d, t, strict=True)), "all matches")]),
    "expected_tokens": (_tokens, [(lambda a, k: _tokens(a, k) - 1, "bonus"), (lambda a, k: k * a, "expected")]),
    "spec_metrics": (lambda acc, d, s: (acc / d, 1 + acc / s), [(lambda acc, d, s: (acc / s, 1 + acc / s), "DRAFTED"),
                                                               (lambda acc, d, s: (acc / d, acc / s), "tau")]),
    "speedup": (lambda a, k, c, v: _tokens(a, k) / (k * c + v),
                [(lambda a, k, c, v: _tokens(a, k), "not free"),
                 (lambda a, k, c, v: _tokens(a, k) / (k * c + 1), "costs v")]),
    "break_even": (lambda k, c, v: _break_even(k, c, v), [(lambda k, c, v: c + v - 1, "break_even(3"),
                                                           (lambda k, c, v: max(0.0, c + v - 1), "expected")]),
    "mtp_layer_indices": (lambda L, n: list(range(L, L + n)), [(lambda L, n: list(range(L - 1, L - 1 + n)), "start at"),
                                                               (lambda L, n: 61, "list")]),
    "tree_walk": (_walk, [(lambda t, par, p, s: ([t[i] for i in _walk(t, par, p, s)[0]], _walk(t, par, p, s)[1]),
                           "NODES"), (_walk_rows_off_by_one, "root's row"), (_walk_resampling, "draw once"),
                          (lambda t, par, p, s: (_walk(t, par, p, s)[0], None), "without a token")]),
    "tree_size": (_size, [(lambda *a: _size(*a, root=0), "carries the root"),
                          (_size_overall, "best N overall"),
                          (_size_of_one_step, "this step alone"),
                          (lambda *a: float(_size(*a)) + 0.5, "not the value")]),
    "lossless": (dict(LOSSLESS), [({**LOSSLESS, "Medusa typical acceptance": True}, "1 of 8 answers wrong"),
                                  ({"a": 1}, "keys"), ({**LOSSLESS, "Medusa typical acceptance": 0}, "True or False")]),
}


def test_every_exercise_has_cases():
    assert set(CASES) == set(EXERCISES)
    per_notebook = {}
    for ex in EXERCISES.values():
        per_notebook[ex.notebook] = per_notebook.get(ex.notebook, 0) + 1
    assert sorted(per_notebook) == [f"0{i}" for i in range(10)] and min(per_notebook.values()) >= 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_right_answer_passes(name):
    result = evaluate(name, CASES[name][0])
    assert result.passed, str(result)


@pytest.mark.parametrize("name", sorted(CASES))
def test_wrong_answers_fail_with_a_reason(name):
    for wrong, word in CASES[name][1]:
        result = evaluate(name, wrong)
        assert result.status == "wrong", (name, str(result))
        assert word in result.message, (name, word, result.message)


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_stub_is_not_attempted(name):
    stub = None if not callable(CASES[name][0]) else (lambda *args: None)
    result = evaluate(name, stub)
    assert result.status == "not attempted" and not result.passed
    assert EXERCISES[name].hint in str(result)


# code that would hand over the answer: a slice, the acceptance rule, the residual, a formula with its operands
CODE = ["[:, ", "[:,", "min(1", "max(0", "p - q", "p/q", "p / q", "accepted / ", "1 + accepted", "/ 448",
        "expected [", "(B * T)", "B*T", "i+k", "i + k"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hints_and_diagnoses_point_without_the_code(name):
    """The hint shown on an untouched stub and every diagnosis of a wrong answer name the idea, never the code or
    formula that is the answer (the success message may)."""
    texts = [EXERCISES[name].hint] + [evaluate(name, wrong).message for wrong, _ in CASES[name][1]]
    for key in LOSSLESS:                # the scheme names of exercise "lossless" are its question, not its answer
        texts = [text.replace(key, "") for text in texts]
    leaks = [(text, c) for text in texts for c in CODE if c in text]
    assert not leaks, leaks


def test_lossless_names_no_key():
    """The diagnosis gives how many answers are wrong, not which: flipping named keys is not possible."""
    for key in LOSSLESS:
        result = evaluate("lossless", {**LOSSLESS, key: not LOSSLESS[key]})
        assert result.status == "wrong" and "1 of" in result.message
        assert not any(k in result.message for k in LOSSLESS), result.message


def test_solution_cells_run_only_when_asked(monkeypatch, capsys):
    """%%solution: Run All prints that the solution was not run; with MTP_LAB_RUN_SOLUTIONS=1 (the notebook build
    and tests) the body runs in the notebook's namespace and its errors propagate."""
    class Shell:
        def __init__(self):
            self.user_ns = {}

        def ex(self, code):
            exec(code, self.user_ns)

    shell = Shell()
    monkeypatch.delenv("MTP_LAB_RUN_SOLUTIONS", raising=False)
    solution_cell("", "answer = 42", shell)
    assert "answer" not in shell.user_ns and SOLUTION_NOT_RUN in capsys.readouterr().out
    monkeypatch.setenv("MTP_LAB_RUN_SOLUTIONS", "1")
    solution_cell("", "answer = 42", shell)
    assert shell.user_ns["answer"] == 42
    with pytest.raises(AssertionError):
        solution_cell("", "assert False", shell)


def test_threads_leave_the_browser_a_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [torch_threads(c)[0] for c in (1, 2, 4)] == [1, 1, 1]
    assert 1 <= torch_threads(16)[0] <= 14
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    n, why = torch_threads(2)
    assert n == 3 and "OMP_NUM_THREADS" in why


def test_learner_exception_is_reported():
    result = evaluate("rmsnorm", lambda x, w, e: x.nonexistent())
    assert result.status == "wrong" and "AttributeError" in result.message


def test_check_prints_verdict_and_unknown_name_raises(capsys):
    check("expected_tokens", _tokens)
    assert "✅ expected_tokens: correct" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown exercise"):
        evaluate("no_such_exercise", 1)
    assert math.isclose(_tokens(0.85, 1), 1.85)


def test_strict_checks_raise_on_a_wrong_answer_only(capsys, monkeypatch):
    monkeypatch.setenv("MTP_LAB_STRICT_CHECKS", "1")          # as in the notebook tests (notebooks/conftest.py)
    check("expected_tokens", _tokens)                          # correct: prints, no error
    check("expected_tokens", None)                             # the learner's untouched stub: not attempted
    with pytest.raises(AssertionError, match="expected_tokens"):
        check("expected_tokens", lambda alpha, k: alpha * k)   # wrong
    monkeypatch.delenv("MTP_LAB_STRICT_CHECKS")
    check("expected_tokens", lambda alpha, k: alpha * k)       # outside the tests a wrong answer only prints
    assert capsys.readouterr().out.count("❌") == 2


def test_notebooks_are_built_from_source_and_clean():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_notebooks.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _builder():
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_notebooks_for_course", ROOT / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_solution_cell_without_the_magic_is_refused(tmp_path):
    build = _builder()
    path = tmp_path / "97_bad.py"
    path.write_text('# %% [markdown]\n# # 97\n\n# %%\nx = 1\n\n# %% tags=["solution"]\nprint("✅")\n')
    with pytest.raises(build.BuildError, match="must start with `# %%solution`"):
        build.from_source(path)


def test_course_notebooks_hide_set_up_and_solutions():
    """Every stored notebook: the slideshow opens on the title (the source note and the set-up cell are skipped),
    and every solution starts with %%solution, so Run All skips it and its collapsed preview is that line."""
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        shown = [c for c in cells if c.metadata.get("slideshow", {}).get("slide_type") != "skip"]
        assert shown[0].cell_type == "markdown" and shown[0].source.startswith("# "), path.name
        assert not any("import importlib.util, sys  # set-up" in c.source for c in shown), path.name
        solutions = [c for c in cells if "solution" in c.metadata.get("tags", [])]
        assert solutions and all(c.source.splitlines()[0] == "%%solution" for c in solutions), path.name
