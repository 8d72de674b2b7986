"""The `mtp-lab` command (console script, and `python -m mtp_lab.cli` for torchrun): see mtp_lab.commands."""

from __future__ import annotations

import sys

from .commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
