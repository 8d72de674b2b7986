"""Helpers for the notebook course: an environment report and exercise checks that say what is wrong.

In a notebook:

    from mtp_lab.course import check, environment_report
    device = environment_report()          # versions, device (cuda when present, else cpu)
    def my_rmsnorm(x, weight, eps): ...    # the learner's answer
    check("rmsnorm", my_rmsnorm)           # prints correct / what is wrong / not attempted + hint

Each check compares the answer with an independent reference (torch ops or the equation written
out) and, when it is wrong, recognises the usual mistakes (off-by-one shifts, swapped order, the
wrong normalisation) to name them. The exercises themselves live in `mtp_lab.course_checks`.
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any

import torch

from . import course_checks  # noqa: F401  (registers every exercise's check in EXERCISES)
from .exercises import EXERCISES, CheckResult, NotAttempted, Wrong


def evaluate(name: str, answer: Any) -> CheckResult:
    """Run exercise `name` on `answer` and return the verdict (nothing printed)."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; known exercises: {sorted(EXERCISES)}")
    ex = EXERCISES[name]
    try:
        message = ex.run(answer)
    except NotAttempted as err:
        return CheckResult(name, "not attempted", str(err), ex.hint)
    except Wrong as err:
        return CheckResult(name, "wrong", str(err), ex.hint)
    return CheckResult(name, "correct", message, ex.hint)


STRICT_ENV = "MTP_LAB_STRICT_CHECKS"   # set by the notebook tests (notebooks/conftest.py)


def check(name: str, answer: Any) -> None:
    """Check an exercise answer and print the verdict: correct, what is wrong (with a hint), or not attempted.

    Use `evaluate` to get the verdict as a CheckResult instead. With the environment variable
    MTP_LAB_STRICT_CHECKS=1 (the notebook tests) a wrong answer also raises AssertionError: the course's own
    solutions store no output, so this is what makes a solution that stopped passing fail the run.
    """
    result = evaluate(name, answer)
    print(result)
    if result.status == "wrong" and os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(f"{STRICT_ENV}=1: {result}")


SOLUTIONS_ENV = "MTP_LAB_RUN_SOLUTIONS"   # set by the notebook build and tests: solution cells run and are checked
SOLUTION_NOT_RUN = ("solution not run: Run All skips it. Expand the cell to read it; to run it, delete its first "
                    "line (%%solution) and run the cell.")


def solution_cell(line: str, cell: str, shell=None) -> None:
    """The `%%solution` cell magic: a solution runs only when the learner asks for it.

    A collapsed solution cell starts with `%%solution`, so Run All does not overwrite the learner's answer with the
    course's, and the collapsed cell's one-line preview shows the magic, not the answer. The body runs (in the
    notebook's namespace, errors raised) only with MTP_LAB_RUN_SOLUTIONS=1: `make notebooks` and the notebook tests
    set it, so every solution is still checked on every build.
    """
    if os.environ.get(SOLUTIONS_ENV) != "1":
        print(SOLUTION_NOT_RUN)
        return
    if shell is None:
        from IPython import get_ipython
        shell = get_ipython()
    shell.ex(cell)


def torch_threads(cores: int | None = None) -> tuple[int, str]:
    """CPU threads for this kernel and why: (threads, one line to print).

    The course's model is small and decodes one token at a time, where thread synchronisation costs more than
    a second core gains; on a laptop the browser needs a core too. Measured on 2 shared cores in JupyterLab
    (tools/browser_runall.py 01 04, with and without --threads 2): Run All of notebook 04 took 89 s with torch's
    default 2 threads and 18 s with 1, notebook 01 12.4 s and 3.5 s. So: 1 thread on up to 4 cores, and
    on more cores torch's default minus two cores left for the browser. OMP_NUM_THREADS, when set, wins.
    """
    cores = cores or os.cpu_count() or 1
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
        return n, f"threads {n} of {cores} cores (set by OMP_NUM_THREADS)"
    if cores <= 4:
        return 1, (f"threads 1 of {cores} cores: a model this small runs fastest on one, and the browser keeps "
                   f"a core (torch's default would take them all)")
    n = max(1, min(torch.get_num_threads(), cores - 2))
    return n, f"threads {n} of {cores} cores (two left for the browser and the notebook server)"


def setup_kernel() -> int:
    """Set torch's CPU threads for this machine (torch_threads), print why, and register the %%solution magic;
    returns the thread count."""
    n, why = torch_threads()
    torch.set_num_threads(n)
    print(why)
    try:
        from IPython import get_ipython
    except ImportError:
        return n
    shell = get_ipython()
    if shell is not None:
        shell.register_magic_function(lambda line, cell: solution_cell(line, cell, shell), "cell", "solution")
    return n


def rate_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a rate successes / trials (z = 1.96: 95%), as (low, high); (0, 1) without trials.

    For acceptance rates: it treats drafts as independent, while acceptances cluster (whole chains pass in
    predictable stretches), so the true uncertainty is somewhat wider: read it as a lower bound on the noise.
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_text(successes: int, trials: int) -> str:
    """'0.724 (95% 0.66-0.78, n 145)': a rate with its Wilson interval and its number of trials."""
    lo, hi = rate_interval(successes, trials)
    return f"{successes / max(1, trials):.3f} (95% {lo:.2f}-{hi:.2f}, n {trials})"


def compare_rates(a: tuple[int, int], b: tuple[int, int]) -> str:
    """Whether two rates (successes, trials) differ beyond noise: their 95% intervals overlap or not."""
    (lo_a, hi_a), (lo_b, hi_b) = rate_interval(*a), rate_interval(*b)
    diff = a[0] / max(1, a[1]) - b[0] / max(1, b[1])
    if lo_a > hi_b or lo_b > hi_a:
        return f"difference {diff:+.3f}: the 95% intervals do not overlap: larger than the noise"
    return f"difference {diff:+.3f}: the 95% intervals overlap: no clear difference at this sample size (noise)"


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment_report() -> torch.device:
    """Print Python, torch and mtp_lab versions, the device the course will use and whether the views are live
    widgets (viz.widgets_available, which prints why not once); set the CPU threads for this machine (setup_kernel:
    one line says how many and why); return the device."""
    from . import __version__
    from .viz.common import widgets_available
    device = pick_device()
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__}")
    print(f"mtp_lab {__version__}")
    if device.type == "cuda":
        print(f"device  cuda ({torch.cuda.get_device_name(0)})")
    else:
        print("device  cpu; every notebook runs on CPU, a GPU only makes the training cells faster")
    print(f"views   {'live widgets' if widgets_available() else 'static figures (no widget front end)'}")
    setup_kernel()
    return device
