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


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment_report() -> torch.device:
    """Print Python, torch and mtp_lab versions, the device the course will use and whether the views are live
    widgets (viz.widgets_available, which prints why not once); return that device."""
    from . import __version__
    from .viz.common import widgets_available
    device = pick_device()
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__}")
    print(f"mtp_lab {__version__}")
    if device.type == "cuda":
        print(f"device  cuda ({torch.cuda.get_device_name(0)})")
    else:
        print(f"device  cpu ({torch.get_num_threads()} threads); every notebook runs on CPU, a GPU only makes "
              f"the training cells faster")
    print(f"views   {'live widgets' if widgets_available() else 'static figures (no widget front end)'}")
    return device
