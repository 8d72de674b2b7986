"""Checkpoints: safetensors weights + JSON config + tokenizer, every file written atomically. Never pickle.

A checkpoint is a folder:
    model.safetensors      the model's state_dict (fp32, or bf16 for the shipped model: see `dtype`)
    config.json            {"model": ModelConfig fields, "weights_dtype": ..., plus free-form metadata}
    tokenizer.json         the `tokenizers` BPE that made the token ids
    optimizer.safetensors  AdamW moments (training checkpoints only, for --resume)
    mtp_undistilled.safetensors  the MTP modules before drafter self-distillation (distilled models only)
    trainer.json           step, training config and optimizer hyper-parameters (training checkpoints only)
config.json is written last, so a folder with a config holds complete weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tokenizers import Tokenizer

from .config import ModelConfig
from .data import ASSETS, atomic_write_bytes, load_tokenizer, save_tokenizer
from .model import MTPModel

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
UNDISTILLED_FILE = "mtp_undistilled.safetensors"  # the MTP modules as MTP-loss training left them (mtp_lab.distill)
PRETRAINED_DIR = ASSETS / "course_model"
PRETRAINED_COMMAND = ("torchrun --standalone --nproc_per_node=2 -m mtp_lab.cli train --preset course --steps 1500 "
                      "--threads 1 --out runs/course --export assets/course_model --distill-steps 300")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, or does not match its config."""


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing; a checkpoint folder needs {CONFIG_FILE} "
                              f"and {MODEL_FILE} (written by `mtp-lab train --out DIR`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is corrupt or truncated") from e


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        return st_load(path.read_bytes())
    except Exception as e:  # safetensors raises SafetensorError (and others) on bad headers or sizes
        raise CheckpointError(f"{path}: not a readable safetensors file, corrupt or truncated ({e})") from e


def save_model(directory: str | Path, model: MTPModel, tokenizer: Tokenizer | None = None,
               dtype: torch.dtype | None = None, metadata: dict | None = None) -> Path:
    """Write model.safetensors (cast to `dtype` if given), tokenizer.json, then config.json."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / MODEL_FILE, st_save(state, metadata={"format": "pt"}))
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory / TOKENIZER_FILE)
    weights_dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    _write_json(directory / CONFIG_FILE, {"model": model.config.to_dict(), "weights_dtype": weights_dtype,
                                          **(metadata or {})})
    return directory


def load_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole config.json) of a checkpoint folder."""
    path = Path(directory) / CONFIG_FILE
    meta = _read_json(path)
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: no 'model' object with the ModelConfig fields")
    try:
        return ModelConfig.from_dict(meta["model"]), meta
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> MTPModel:
    """Rebuild the model from config.json and fill it from model.safetensors (checked key by key)."""
    directory = Path(directory)
    cfg, _ = load_config(directory)
    path = directory / MODEL_FILE
    state = _read_tensors(path)
    model = MTPModel(cfg)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match {directory / CONFIG_FILE}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, want in expected.items():                 # model order: the first mismatch reported is stable
        if state[name].shape != want.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(state[name].shape)} but the config "
                                  f"({directory / CONFIG_FILE}) implies {tuple(want.shape)}")
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype)


def save_train_state(directory: str | Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """AdamW moments as safetensors ("<param index>.<name>"), hyper-parameters and `state` as JSON."""
    directory = Path(directory)
    sd = optimizer.state_dict()
    tensors = {f"{i}.{name}": t.detach().cpu().contiguous()
               for i, s in sd["state"].items() for name, t in s.items()}
    atomic_write_bytes(directory / OPTIMIZER_FILE, st_save(tensors))
    _write_json(directory / TRAINER_FILE, {**state, "param_groups": sd["param_groups"]})


def load_train_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer saved by save_train_state; returns the trainer state dict (step, ...)."""
    directory = Path(directory)
    meta = _read_json(directory / TRAINER_FILE)
    tensors = _read_tensors(directory / OPTIMIZER_FILE)
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = t
    groups = meta.pop("param_groups", None)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    if groups is None or sum(len(g["params"]) for g in groups) != n_params:
        raise CheckpointError(f"{directory / TRAINER_FILE}: optimizer groups do not match the model "
                              f"({n_params} parameters); was it saved for another config?")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{directory / OPTIMIZER_FILE}: cannot restore optimizer state: {e}") from e
    return meta


def save_undistilled(directory: str | Path, mtp_state: dict[str, torch.Tensor] | None,
                     dtype: torch.dtype | None = None) -> None:
    """Keep the MTP modules as the MTP loss trained them, next to a self-distilled model (mtp_lab.distill).

    mtp_state: the `mtp.*` tensors before distillation; None removes a stale file (the model is not distilled).
    """
    path = Path(directory) / UNDISTILLED_FILE
    if mtp_state is None:
        path.unlink(missing_ok=True)
        return
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in mtp_state.items()}
    atomic_write_bytes(path, st_save(state, metadata={"format": "pt"}))


def _load_undistilled(model: MTPModel, directory: Path) -> None:
    path = directory / UNDISTILLED_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing; only a model exported with `--distill-steps` (or written "
                              f"by `mtp-lab distill`) keeps its undistilled MTP modules")
    state = _read_tensors(path)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("mtp.")}
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"{path}: tensors do not match the MTP modules of {directory / CONFIG_FILE}")
    model.load_state_dict(state, strict=False)


def load_pretrained(path: str | Path | None = None, device: str | torch.device = "cpu",
                    mtp: str = "distilled") -> tuple[MTPModel, Tokenizer]:
    """The shipped course model (assets/course_model) or any checkpoint folder -> (model in eval mode, tokenizer).

    mtp="undistilled" swaps in the MTP modules as the MTP loss left them, before drafter self-distillation
    (mtp_lab.distill); the main model is the same either way.
    """
    if mtp not in ("distilled", "undistilled"):
        raise ValueError(f"mtp must be 'distilled' (the checkpoint's MTP modules) or 'undistilled', got {mtp!r}")
    directory = Path(path) if path is not None else PRETRAINED_DIR
    if not (directory / CONFIG_FILE).is_file() and not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint at {directory}; create the course model with `{PRETRAINED_COMMAND}`"
                                if path is None else f"no checkpoint at {directory} (expected {CONFIG_FILE} "
                                f"and {MODEL_FILE}); `mtp-lab train --out {directory}` writes one")
    model = load_model(directory, device=device).eval()
    if mtp == "undistilled":
        _load_undistilled(model, directory)
    tok_path = directory / TOKENIZER_FILE
    try:
        tokenizer = load_tokenizer(tok_path)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{tok_path}: {e}") from e
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise CheckpointError(f"{tok_path}: vocabulary {tokenizer.get_vocab_size()} != config vocab_size "
                              f"{model.config.vocab_size}")
    return model, tokenizer
