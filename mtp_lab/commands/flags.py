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


def check_output(path: str | Path, flag: str, folder: bool) -> Path:
    """Refuse, before any long work, an output `path` (a folder, or a file) that cannot be written: a file where
    a folder is wanted or the reverse, a file among its parents, or a place this process cannot write."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder (new or existing)")
    if not folder and path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    parent = path if folder else path.parent
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
    """--threads N: torch's CPU threads (None: torch's choice)."""
    import torch

    if n is not None:
        if n <= 0:
            raise ValueError(f"--threads must be > 0, got {n}")
        torch.set_num_threads(n)
