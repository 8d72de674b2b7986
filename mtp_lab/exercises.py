"""The exercise framework of the course: verdicts, the registry, and helpers the checks share.

`mtp_lab.course_checks` registers each exercise's check with `@exercise(...)`; `mtp_lab.course` evaluates
answers against them. This module imports neither, so the layering is one-way: course -> course_checks -> exercises.
"""

from __future__ import annotations

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
