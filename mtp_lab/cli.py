"""The `mtp-lab` command. Each subcommand lives in its own module, which exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

# subcommand modules, in the order `mtp-lab --help` lists them
SUBCOMMAND_MODULES = ["mtp_lab.cli", "mtp_lab.fp8_bench", "mtp_lab.train_cli", "mtp_lab.distill", "mtp_lab.bench"]


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a preset's config and parameter counts")
    p.add_argument("--preset", default="course", help="preset name (default: course)")
    p.add_argument("--mtp-depth", type=int, default=None, help="override the preset's MTP depth D")
    p.set_defaults(func=_info)


def _info(args) -> int:
    from .config import get_preset
    from .model import MTPModel

    overrides = {} if args.mtp_depth is None else {"mtp_depth": args.mtp_depth}
    cfg = get_preset(args.preset, **overrides)
    counts = MTPModel(cfg).parameter_counts()
    print(json.dumps({"config": cfg.to_dict(), "parameters": counts}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp-lab", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # Ctrl-C: one line (train adds where its last checkpoint is), exit code 130
        print(f"mtp-lab {args.command}: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:  # bad input, an unusable file, a diverged run: one line
        print(f"mtp-lab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
