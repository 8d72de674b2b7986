"""The `mtp-lab` command. Each subcommand lives in its own module, which exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # bad input or a missing checkpoint: one clear line, no traceback
        print(f"mtp-lab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
