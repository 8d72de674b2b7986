"""`mtp-lab info`: a preset's config and parameter counts."""

from __future__ import annotations

import json

from ..config import PRESETS, ModelConfig
from .flags import add_dataclass_flags, dataclass_values


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a preset's config and parameter counts")
    p.add_argument("--preset", default="course", help=f"preset name: {', '.join(PRESETS)} (default: course)")
    add_dataclass_flags(p, ModelConfig, only=("mtp_depth",), keep_defaults=False,
                        help_override={"mtp_depth": "override the preset's MTP depth D"})
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import get_preset
    from ..model import MTPModel

    cfg = get_preset(args.preset, **dataclass_values(args, ModelConfig, only=("mtp_depth",)))
    counts = MTPModel(cfg).parameter_counts()
    print(json.dumps({"config": cfg.to_dict(), "parameters": counts}, indent=2))
    return 0
