"""The `mtp-lab` command line, above the whole library: one module per subcommand, each with `register(subparsers)`
(its flags, built from the config dataclasses by `flags.add_dataclass_flags` where a config exists) and `run(args)`.

Nothing in the library imports this package (tests/test_layering.py checks it): the functions a command calls
(training, distillation, benchmarks, export) live in the library and are usable without the command line.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, distill, fp8_bench, info, train

SUBCOMMANDS = (info, fp8_bench, train, distill, bench)     # in the order `mtp-lab --help` lists them


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block), like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="mtp-lab", description="Multi-Token Prediction lab: train, distil, "
                                     "benchmark and inspect DeepSeek-V3-style MTP models.")
    parser.add_argument("--version", action="version", version=f"mtp-lab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.register(subparsers)
    return parser


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
