"""`mtp-lab distill`: self-distil a saved model's MTP modules toward its frozen main model (mtp_lab.distill);
the flags are DistillConfig's fields."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from .. import distill as library
from ..distill import DistillConfig, distill
from .flags import ROOT_HELP, add_dataclass_flags, check_output, dataclass_values, set_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("distill", help="self-distil a saved model's MTP modules toward its main model",
                              description=library.__doc__)
    p.add_argument("--checkpoint", default=None, help="model folder (default: the shipped course model)")
    p.add_argument("--out", required=True, help="folder to write the distilled model to")
    p.add_argument("--overwrite", action="store_true", help="replace the model --out holds (never a training run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--root", default=None, help=ROOT_HELP)
    add_dataclass_flags(p, DistillConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import PRETRAINED_DIR, lock

    cfg = DistillConfig(**dataclass_values(args, DistillConfig))
    source = Path(args.checkpoint) if args.checkpoint else PRETRAINED_DIR
    out = check_output(args.out, "--out", "model", {"--checkpoint": source, "--root": args.root},
                       overwrite=args.overwrite)
    set_threads(args.threads)
    with lock(out):
        return distill_to(args, cfg, source, out)


def distill_to(args, cfg: DistillConfig, source: Path, out: Path) -> int:
    """Load `source`, distil its MTP modules, write the model to `out` (locked); nothing is written if it fails."""
    from ..checkpoint import (
        CONFIG_FILE,
        UNDISTILLED_FILE,
        CheckpointError,
        load_config,
        load_pretrained,
        save_model,
        save_undistilled,
    )
    from ..data import build_corpus
    from ..metrics import write_metrics
    from ..model import mtp_state

    model, tok = load_pretrained(source)
    _, meta = load_config(source)
    dtype = getattr(torch, str(meta.get("weights_dtype", "float32")), None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):     # the model is written in it
        raise CheckpointError(f"{source / CONFIG_FILE}: weights_dtype {meta['weights_dtype']!r} is not float32, "
                              f"bfloat16 or float16; the file is corrupt or not written by mtp_lab")
    # the undistilled modules: the source's own, or those it kept if it was distilled already
    if (source / UNDISTILLED_FILE).is_file():
        undistilled = load_pretrained(source, mtp="undistilled")[0].state_dict()
    else:
        undistilled = model.state_dict()
    undistilled = mtp_state(undistilled, copy=True)
    corpus = build_corpus(tok, root=args.root)
    t0 = time.perf_counter()
    records = distill(model, corpus, cfg)
    save_model(out, model, tok, dtype=dtype,
               metadata={**{k: v for k, v in meta.items() if k not in ("model", "weights_dtype")},
                         "distill_config": dataclasses.asdict(cfg), "distilled_from": str(source),
                         "distill_seconds": round(time.perf_counter() - t0, 1),
                         "distill_final_loss": records[-1]["loss"]})
    save_undistilled(out, undistilled, dtype)
    write_metrics(out, corpus, cfg.batch_size, cfg.seq_len, cfg.steps)
    return 0

