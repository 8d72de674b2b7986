"""Command-line flags built one way from the config dataclasses, and the checks every command shares.

A dataclass field becomes a flag of the same name (`seq_len` -> `--seq-len`): its type gives the argparse type
(a `Literal` gives the choices, `X | None` gives X), and the comment beside the field in the class's source gives
the help, so a field's meaning is written once, in the config:

    add_dataclass_flags(parser, TrainConfig, skip={"betas"}, keep_defaults=False, rename={"lam": "lambda"})
    given = dataclass_values(args, TrainConfig, skip={"betas"})       # {field: value} of the flags that were set
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import tempfile
import types
import typing
from pathlib import Path

ROOT_HELP = ("corpus folder of .py files (default: the shipped snapshot of Python 3.11.7's standard library, the "
             "course model's corpus); this Python's own library: --root \"$(python -c 'import sysconfig; "
             "print(sysconfig.get_paths()[\"stdlib\"])')\"")
FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*#\s?(.*)$")
CONTINUATION = re.compile(r"^\s+#\s?(.*)$")


def field_comments(cls) -> dict[str, str]:
    """{field: the comment beside it in the class's source, continuation comment lines joined}."""
    comments, last = {}, None
    for line in inspect.getsource(cls).splitlines()[1:]:
        if line.lstrip().startswith(("def ", "@")):            # the fields come before the methods
            break
        if m := FIELD_LINE.match(line):
            last = m.group(1)
            comments[last] = m.group(2).strip()
        elif last and (m := CONTINUATION.match(line)):
            comments[last] += " " + m.group(1).strip()
        else:
            last = None
    return comments


def _flag_type(hint) -> tuple[type, tuple | None]:
    """(argparse type, choices) of a field's resolved type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        choices = tuple(v for a in args for v in (typing.get_args(a) or (a,)))   # nested Literals flattened
        return type(choices[0]), choices
    if hint in (int, float, str):
        return hint, None
    raise TypeError(f"no command-line flag for a field of type {hint!r}; skip it")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, only: tuple[str, ...] | None = None,
                        skip: set[str] = frozenset(), keep_defaults: bool = True,
                        rename: dict[str, str] | None = None, help_override: dict[str, str] | None = None) -> None:
    """One flag per field of dataclass `cls` (the fields in `only`, or all but `skip`).

    keep_defaults: the flag's default is the field's default (shown in --help); False: None, so that a command can
    tell the flags given from those left out (a resumed run keeps its saved values)."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    rename, help_override = rename or {}, help_override or {}
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        kind, choices = _flag_type(hints[f.name])
        text = help_override.get(f.name, comments.get(f.name, ""))
        if keep_defaults:
            text += f" (default: {f.default})"
        parser.add_argument("--" + rename.get(f.name, f.name).replace("_", "-"), dest=f.name, type=kind,
                            choices=choices, default=f.default if keep_defaults else None, help=text.strip())


def dataclass_values(args: argparse.Namespace, cls, only: tuple[str, ...] | None = None,
                     skip: set[str] = frozenset()) -> dict:
    """{field: value} for the fields of `cls` whose flags were given (not None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if (only is None or f.name in only) and f.name not in skip and getattr(args, f.name, None) is not None}


OutputKind = typing.Literal["file", "model", "run"]   # a file; a model folder; a training run folder (train --out)
THREADS_PER_CPU = 4      # --threads above this many per CPU core is refused (100000 threads crashed torch)


def check_output(path: str | Path, flag: str, kind: OutputKind, reads: dict | None = None, overwrite: bool = False,
                 again: str | None = None) -> Path:
    """The one rule for every output of every command, applied before any long work. An output
    - is never a shipped asset (checkpoint.SHIPPED), even with --overwrite;
    - never is, nor lies inside, nor (a folder) directly holds a file that the command reads: `reads`,
      {flag: path} of its inputs;
    - is a folder where a folder is wanted, a regular file where a file is wanted: a device node, a FIFO or a socket
      is never replaced;
    - as a model folder: never a training run's folder (writing a model there breaks its resume); one holding a
      model (or, kind "run", a run) only with `overwrite` (else `again`: how to go on); as a file: never a file of
      a model or run folder;
    - lies where this process can write.
    Returns `path` as given."""
    from ..checkpoint import SHIPPED, STAGING_DIR, TRAINER_FILE, holds_model

    path = Path(path)
    real = path.resolve()
    for shipped in SHIPPED:
        if real == shipped.resolve() or real.is_relative_to(shipped.resolve()):
            raise ValueError(f"{flag} {path} is part of the shipped course assets ({shipped}), which no command "
                             f"replaces; give another {flag}")
    for label, read in (reads or {}).items():
        if read is None:
            continue
        read = Path(read).resolve()
        if real == read or real.is_relative_to(read) or (kind != "file" and read.parent == real and read.is_file()):
            raise ValueError(f"{flag} {path} would overwrite {label} {read}, which this command reads; give "
                             f"another {flag}")
    if path.exists() and kind == "file" and not path.is_file():
        what = "a folder; give a file name" if path.is_dir() else "not a regular file (a device, FIFO or socket), " \
                                                                   "which is never replaced; give a file name"
        raise ValueError(f"{flag} {path} is {what}")
    if path.exists() and kind != "file" and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder (new or existing)")
    if kind == "file" and holds_model(real.parent):
        raise ValueError(f"{flag} {path} lies in the model folder {real.parent}, which it could replace a file of; "
                         f"give a file outside it")
    if kind == "model" and ((real / TRAINER_FILE).exists() or (real / STAGING_DIR).exists()):
        raise ValueError(f"{flag} {path} is a training run's folder: a model written there would replace its fp32 "
                         f"weights and break its --resume; give another {flag}")
    if kind != "file" and holds_model(real) and not overwrite:
        raise ValueError(f"{flag} {path} already holds a checkpoint; "
                         f"{again or f'replace it with --overwrite, or give another {flag}'}")
    parent = path if kind != "file" else path.parent
    while not parent.exists() and parent != parent.parent:        # the folder that would hold the new ones
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, so nothing can be created under it; give another path")
    try:
        with tempfile.TemporaryFile(dir=parent):                   # the honest test: root ignores permission bits
            pass
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {parent} ({e.strerror}); give a writable place") from e
    return path


def set_threads(n: int | None) -> None:
    """--threads N: torch's CPU threads (None: torch's choice); N in [1, THREADS_PER_CPU x the CPU count]."""
    import os

    import torch

    from ..config import check_int

    if n is not None:
        most = THREADS_PER_CPU * (os.cpu_count() or 1)
        check_int("--threads", n, minimum=1, maximum=most, note=f" ({THREADS_PER_CPU}x the {os.cpu_count()} CPUs)")
        torch.set_num_threads(n)
