"""Checkpoints: safetensors weights + JSON config + tokenizer, every file written atomically. Never pickle.

A checkpoint is a folder:
    model.safetensors      the model's state_dict (fp32, or bf16 for the shipped model: see `dtype`)
    config.json            {"model": ModelConfig fields, "weights_dtype": ..., plus free-form metadata}
    tokenizer.json         the `tokenizers` BPE that made the token ids
    optimizer.safetensors  AdamW moments (training checkpoints only, for --resume)
    mtp_undistilled.safetensors  the MTP modules before drafter self-distillation (distilled models only)
    trainer.json           step, training config, optimizer hyper-parameters and the sha256 of every other file
                           (training checkpoints only)
config.json is written last, so a folder with a config holds complete weights.

A training checkpoint (`save_checkpoint`, what `mtp-lab train --out DIR` keeps) is one atomic unit. Its files
are written to DIR/.staging/ first, trainer.json last: a .staging holding trainer.json is the commit. Then they
are moved into DIR one by one, trainer.json last, and .staging is removed. A kill at any point leaves either the
previous checkpoint intact (uncommitted .staging) or a commit that `recover` completes before the next resume or
save, so a resume sees the old checkpoint or the new one, never a mix. Every load of a training checkpoint
(`load_model`, hence `load_pretrained`, bench, distill, resume) first checks each file against the sha256 recorded
in trainer.json, and the config's sizes, before any model is built; `load_train_state` also cross-checks the step
against AdamW's own step counts. `lock` keeps two processes from writing one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tokenizers import Tokenizer

from .config import MAX_STEPS, ModelConfig, check_choice
from .data import ASSETS, DEFAULT_TOKENIZER, atomic_write_bytes, load_tokenizer, save_tokenizer
from .model import MTPModel, mtp_state

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
STAGING_DIR = ".staging"                         # where save_checkpoint writes before its commit
UNDISTILLED_FILE = "mtp_undistilled.safetensors"  # the MTP modules as MTP-loss training left them (mtp_lab.distill)
MTPWeights = Literal["distilled", "undistilled"]  # which MTP modules load_pretrained puts in a distilled model
CHECKPOINT_FILES = (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE, OPTIMIZER_FILE)  # trainer.json records their sha256
LOCK_FILE = ".lock"                              # held (flock) by the process writing the folder
MODEL_MARKERS = (CONFIG_FILE, MODEL_FILE, TRAINER_FILE, OPTIMIZER_FILE, UNDISTILLED_FILE)  # a model or run lives here
PRETRAINED_DIR = ASSETS / "course_model"         # mtp_lab/assets in an installed wheel, assets/ in a checkout
SHALLOW_DIR = ASSETS / "shallow_model"          # the previous, 4-block course model (preset "shallow"); it has no
                                                # tokenizer.json of its own: it shares the course model's
SHIPPED = (ASSETS, PRETRAINED_DIR, SHALLOW_DIR, DEFAULT_TOKENIZER)  # shipped with the package: never an output
PRETRAINED_COMMAND = ("torchrun --standalone --nproc_per_node=2 -m mtp_lab.cli train --preset course --steps 1800 "
                      "--threads 1 --out runs/course --export runs/course_model --distill-steps 300")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, or does not match its config."""


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing; a checkpoint folder needs {CONFIG_FILE} "
                              f"and {MODEL_FILE} (written by `mtp-lab train --out DIR`)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is corrupt or truncated") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: JSON nested too deeply to read; the file is corrupt or not written by "
                              f"mtp_lab") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(obj).__name__}, not an object; the file is corrupt "
                              f"or not written by mtp_lab")
    return obj


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
    """Rebuild the model from config.json and fill it from model.safetensors (checked key by key). The config's
    sizes (ModelConfig's bounds) and, in a training checkpoint, every file's sha256 are checked first."""
    directory = Path(directory)
    cfg, _ = load_config(directory)
    if (directory / TRAINER_FILE).exists():
        verify_files(directory, read_manifest(directory))
    path = directory / MODEL_FILE
    state = _read_tensors(path)
    model = MTPModel(cfg)
    _check_state(path, state, model.state_dict(), directory / CONFIG_FILE)
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype)


def _check_state(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                 config: Path) -> None:
    """The tensors of `path` against the model built from `config`: same names and shapes, floating point
    (load_state_dict would silently cast int or bool tensors) and finite."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match {config}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, want in expected.items():                 # model order: the first mismatch reported is stable
        got = state[name]
        if got.shape != want.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(got.shape)} but the config "
                                  f"({config}) implies {tuple(want.shape)}")
        if not got.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {str(got.dtype).removeprefix('torch.')}; "
                                  f"model weights are floating point: the file was not written by save_model")
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or inf; the weights are corrupt (saved by a "
                                  f"diverged run?): use an earlier checkpoint")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def holds_model(directory: str | Path) -> bool:
    """True if `directory` holds a model or a training run (any of its files, or a committed save)."""
    directory = Path(directory)
    return directory.is_dir() and (any((directory / name).exists() for name in MODEL_MARKERS)
                                   or (directory / STAGING_DIR / TRAINER_FILE).exists())


@contextlib.contextmanager
def lock(directory: str | Path, what: str = "--out"):
    """Hold DIR/.lock (an flock, released by the kernel even after kill -9) while writing DIR; a second process
    is refused with one line. A folder this call had to create is removed again if nothing else was put in it."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    try:                                    # never through a symlink: the file is truncated below
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise ValueError(f"{what} {directory}: cannot use its lock file {path} ({e.strerror}); remove it if no "
                         f"run is writing there") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise ValueError(f"{what} {directory} is being written by another process (pid {holder}); wait for it "
                             f"to finish or stop it, or give another {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield directory
        finally:
            path.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):       # not empty: the run wrote something, keep it
                    directory.rmdir()
    finally:
        os.close(fd)


def save_train_state(directory: str | Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """AdamW moments as safetensors ("<param index>.<name>"), then trainer.json: `state`, the optimizer's
    hyper-parameters and the sha256 of every checkpoint file already in `directory`."""
    directory = Path(directory)
    sd = optimizer.state_dict()
    tensors = {f"{i}.{name}": t.detach().cpu().contiguous()
               for i, s in sd["state"].items() for name, t in s.items()}
    atomic_write_bytes(directory / OPTIMIZER_FILE, st_save(tensors))
    sha = {name: _sha256(directory / name) for name in CHECKPOINT_FILES if (directory / name).is_file()}
    _write_json(directory / TRAINER_FILE, {**state, "param_groups": sd["param_groups"], "sha256": sha})


def save_checkpoint(directory: str | Path, model: MTPModel, tokenizer: Tokenizer, optimizer: torch.optim.Optimizer,
                    state: dict, dtype: torch.dtype | None = None) -> Path:
    """A training checkpoint as one atomic unit (module docstring): staged in DIR/.staging, then moved in."""
    directory = Path(directory)
    recover(directory)                                  # the previous save's leftovers: finished or dropped
    save_model(directory / STAGING_DIR, model, tokenizer, dtype=dtype)
    save_train_state(directory / STAGING_DIR, optimizer, state)       # trainer.json last: the commit
    recover(directory)                                  # moves the committed files in
    return directory


def recover(directory: str | Path) -> None:
    """Complete an interrupted save_checkpoint: a committed DIR/.staging (it holds trainer.json) is moved into
    DIR, trainer.json last; an uncommitted one is deleted, which leaves the previous checkpoint as it was."""
    staging = Path(directory) / STAGING_DIR
    if not staging.is_dir():
        return
    if (staging / TRAINER_FILE).is_file():
        for name in (*CHECKPOINT_FILES, TRAINER_FILE):
            with contextlib.suppress(FileNotFoundError):   # moved already (by the other ranks of a torchrun too)
                os.replace(staging / name, Path(directory) / name)
    shutil.rmtree(staging, ignore_errors=True)


def read_manifest(directory: str | Path) -> dict:
    """trainer.json as it is (no `recover`), its types checked: step an int in [0, 2^40] (not a bool), elapsed a
    finite number >= 0, and a sha256 for the optimizer file and every other checkpoint file in the folder."""
    path = Path(directory) / TRAINER_FILE
    if not path.is_file():
        found = " (it holds a model, not a training run)" if holds_model(directory) else ""
        raise CheckpointError(f"{path}: file missing, so {directory} holds no training checkpoint to resume{found}; "
                              f"`mtp-lab train --out DIR` writes one")
    meta = _read_json(path)
    fix = "the file is corrupt: resume from a copy of the run, or start again (mtp-lab train --overwrite)"
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
        raise CheckpointError(f"{path}: no 'step' (an integer >= 0), got {str(step)[:40]!r}; {fix}")
    elapsed = meta.get("elapsed", 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not (math.isfinite(elapsed)
                                                                                  and elapsed >= 0):
        raise CheckpointError(f"{path}: 'elapsed' must be a number of seconds >= 0, got {str(elapsed)[:40]!r}; {fix}")
    sha = meta.get("sha256")
    listed = [name for name in CHECKPOINT_FILES if name == OPTIMIZER_FILE or (Path(directory) / name).exists()]
    if not (isinstance(sha, dict) and all(isinstance(sha.get(name), str) and len(sha[name]) == 64 for name in listed)
            and set(sha) <= set(CHECKPOINT_FILES)):
        raise CheckpointError(f"{path}: no sha256 of each of {', '.join(listed)}, so the files cannot be checked; "
                              f"{fix}")
    data = meta.get("data")                 # the corpus record of mtp_lab.train (absent in older runs)
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("tokens_sha256"), str) and
                                 isinstance(data.get("root"), (str, type(None))) and
                                 isinstance(data.get("mix", ""), str)):
        raise CheckpointError(f"{path}: 'data' is not the record of a corpus (root, mix, tokens_sha256); {fix}")
    return meta


def verify_files(directory: str | Path, meta: dict) -> None:
    """Every file listed in trainer.json's sha256 (`meta`, from read_manifest) against its hash."""
    directory = Path(directory)
    for name, digest in meta["sha256"].items():
        if not (directory / name).is_file() or _sha256(directory / name) != digest:
            raise CheckpointError(f"{directory / name}: does not match the sha256 recorded in {TRAINER_FILE}: the "
                                  f"folder mixes files of different checkpoints (or a save is in progress); restore "
                                  f"them from one save")


def read_trainer_state(directory: str | Path) -> dict:
    """trainer.json of a training checkpoint, after `recover` completed or dropped an interrupted save."""
    recover(directory)
    return read_manifest(directory)


def load_train_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Check every file against trainer.json's sha256, restore the optimizer saved by save_train_state
    (moments checked against the parameters, AdamW's step counts against trainer.json's step); returns the
    trainer state dict (step, ...)."""
    directory = Path(directory)
    meta = read_trainer_state(directory)
    verify_files(directory, meta)
    del meta["sha256"]
    path = directory / OPTIMIZER_FILE
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = meta.pop("param_groups", None)
    if not (isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            and sum(len(g["params"]) for g in groups) == len(params)):
        raise CheckpointError(f"{directory / TRAINER_FILE}: optimizer groups do not match the model "
                              f"({len(params)} parameters); was it saved for another config?")
    _check_groups(directory / TRAINER_FILE, groups, optimizer.param_groups)
    state: dict[int, dict] = {}
    for key, t in _read_tensors(path).items():
        index, _, name = key.partition(".")
        if not (index.isdigit() and int(index) < len(params) and name):
            raise CheckpointError(f"{path}: unexpected tensor {key!r}; an optimizer file holds "
                                  f"'<parameter index>.<name>' tensors for {len(params)} parameters")
        if name != "step" and t.shape != params[int(index)].shape:
            raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(t.shape)}, its parameter "
                                  f"{tuple(params[int(index)].shape)}; was it saved for another config?")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or inf, so training would only write NaN "
                                  f"weights; resume from an earlier copy of the run, or start again (--overwrite)")
        state.setdefault(int(index), {})[name] = t
    _check_moments(path, state, len(params), meta["step"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot restore optimizer state: {e}") from e
    return meta


def _check_groups(path: Path, saved: list[dict], now: list[dict]) -> None:
    """The saved hyper-parameters of each optimizer group have the names and types of this optimizer's (numbers
    finite), so that load_state_dict and AdamW's step cannot fail on them."""
    def same_kind(a, b) -> bool:
        if isinstance(b, bool) or b is None or isinstance(b, str):
            return type(a) is type(b)
        if isinstance(b, (int, float)):
            return not isinstance(a, bool) and isinstance(a, (int, float)) and math.isfinite(a)
        if isinstance(b, (tuple, list)):
            return isinstance(a, (tuple, list)) and len(a) == len(b) and all(map(same_kind, a, b))
        return False
    for i, (g, ref) in enumerate(zip(saved, now, strict=True)):
        bad = sorted(k for k in set(g) | set(ref) if k != "params" and not (k in g and k in ref
                                                                             and same_kind(g[k], ref[k])))
        if bad:
            raise CheckpointError(f"{path}: optimizer group {i} has missing or malformed {bad}; the file is corrupt: "
                                  f"resume from a copy of the run, or start again")


def _check_moments(path: Path, state: dict[int, dict], n_params: int, step: int) -> None:
    """AdamW's state against trainer.json: after `step` > 0 steps every parameter has its two moments and a step
    count equal to `step` (one optimizer step per training step); at step 0 there is no state yet."""
    for i in range(n_params) if step else []:
        names = set(state.get(i, {}))
        if names != {"step", "exp_avg", "exp_avg_sq"}:
            raise CheckpointError(f"{path}: parameter {i} has optimizer state {sorted(names)}, not step, exp_avg and "
                                  f"exp_avg_sq; the file is incomplete: resume from a copy of the run, or start again")
        count = state[i]["step"]
        if count.numel() != 1 or float(count) != step:
            raise CheckpointError(f"{path}: AdamW counted {count.flatten()[:1].tolist()} steps for parameter {i}, "
                                  f"{TRAINER_FILE} says step {step}; the files disagree: resume from a copy of the "
                                  f"run, or start again")
    if not step and state:
        raise CheckpointError(f"{path}: optimizer state at step 0; {TRAINER_FILE} and the optimizer disagree")


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
    _check_state(path, state, mtp_state(model.state_dict()), directory / CONFIG_FILE)
    model.load_state_dict(state, strict=False)


def load_pretrained(path: str | Path | None = None, device: str | torch.device = "cpu",
                    mtp: MTPWeights = "distilled") -> tuple[MTPModel, Tokenizer]:
    """The shipped course model (assets/course_model) or any checkpoint folder -> (model in eval mode, tokenizer).

    mtp="undistilled" swaps in the MTP modules as the MTP loss left them, before drafter self-distillation
    (mtp_lab.distill); the main model is the same either way.
    """
    check_choice("mtp", mtp, MTPWeights, " (the checkpoint's MTP modules, or those kept before self-distillation)")
    directory = Path(path) if path is not None else PRETRAINED_DIR
    if not (directory / CONFIG_FILE).is_file() and not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint at {directory}; create the course model with `{PRETRAINED_COMMAND}`"
                                if path is None else f"no checkpoint at {directory} (expected {CONFIG_FILE} "
                                f"and {MODEL_FILE}); `mtp-lab train --out {directory}` writes one")
    model = load_model(directory, device=device).eval()
    if mtp == "undistilled":
        _load_undistilled(model, directory)
    tok_path = directory / TOKENIZER_FILE
    if not tok_path.is_file() and directory.resolve().parent == ASSETS.resolve():
        tok_path = DEFAULT_TOKENIZER                    # a shipped model: the one shipped copy of the tokenizer
    try:
        tokenizer = load_tokenizer(tok_path)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(f"{tok_path}: {e}") from e
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise CheckpointError(f"{tok_path}: vocabulary {tokenizer.get_vocab_size()} != config vocab_size "
                              f"{model.config.vocab_size}")
    return model, tokenizer
