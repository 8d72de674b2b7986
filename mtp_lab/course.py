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

import platform
from dataclasses import dataclass
from typing import Any, Callable

import torch


class Wrong(Exception):
    """Raised by a check when the answer is wrong; the message says what is wrong."""


class NotAttempted(Exception):
    """Raised by a check when the answer is still the notebook's empty stub (None)."""


@dataclass(frozen=True)
class Exercise:
    name: str
    notebook: str
    hint: str
    run: Callable[[Any], str]   # raises Wrong / NotAttempted, or returns a short success message


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str                 # "correct", "wrong" or "not attempted"
    message: str
    hint: str

    @property
    def passed(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        if self.status == "correct":
            return f"✅ {self.name}: correct. {self.message}"
        if self.status == "not attempted":
            return f"⏳ {self.name}: not attempted yet ({self.message}).\n   Hint: {self.hint}"
        return f"❌ {self.name}: {self.message}\n   Hint: {self.hint}"


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, notebook: str, hint: str):
    """Decorator that registers a check function under `name`."""
    def register(run: Callable[[Any], str]) -> Callable[[Any], str]:
        if name in EXERCISES:
            raise ValueError(f"exercise {name!r} is registered twice")
        EXERCISES[name] = Exercise(name, notebook, hint, run)
        return run
    return register


def call(fn: Any, *args, **kwargs) -> Any:
    """Call the learner's function; None back means the stub is still empty."""
    if fn is None:
        raise NotAttempted("your answer is None")
    if not callable(fn):
        raise Wrong(f"expected a function, got {type(fn).__name__}")
    try:
        out = fn(*args, **kwargs)
    except (NotAttempted, Wrong):
        raise
    except Exception as err:  # the learner's code failed: report it as the answer's problem
        raise Wrong(f"your function raised {type(err).__name__}: {err}") from err
    if out is None:
        raise NotAttempted("your function returns None")
    return out


def as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Wrong(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value


def expect_shape(value: torch.Tensor, shape: tuple, what: str) -> None:
    if tuple(value.shape) != tuple(shape):
        raise Wrong(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol)


def evaluate(name: str, answer: Any) -> CheckResult:
    """Run exercise `name` on `answer` and return the verdict (nothing printed)."""
    # the checks register themselves on import; imported here to keep this module free of them
    from . import course_checks  # noqa: F401
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


def check(name: str, answer: Any) -> None:
    """Check an exercise answer and print the verdict: correct, what is wrong (with a hint), or not attempted.

    Use `evaluate` to get the verdict as a CheckResult instead.
    """
    print(evaluate(name, answer))


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment_report() -> torch.device:
    """Print Python, torch and mtp_lab versions and the device the course will use; return that device."""
    from . import __version__
    device = pick_device()
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__}")
    print(f"mtp_lab {__version__}")
    if device.type == "cuda":
        print(f"device  cuda ({torch.cuda.get_device_name(0)})")
    else:
        print(f"device  cpu ({torch.get_num_threads()} threads); every notebook runs on CPU, a GPU only makes "
              f"the training cells faster")
    return device
