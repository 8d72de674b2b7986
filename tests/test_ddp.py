"""DistributedDataParallel: 2 CPU processes (gloo) train a few steps, each on its own shard."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from stdlib_sample import make_sample_root, sample_tokenizer

from mtp_lab import get_preset
from mtp_lab.data import build_corpus, save_tokenizer
from mtp_lab.train import History, TrainConfig, Trainer

STEPS = 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, tok_path: str, out: str) -> None:
    """One rank, configured through the same environment variables torchrun sets."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    corpus = build_corpus(tok_path, root=root, use_cache=False)
    cfg = TrainConfig(steps=STEPS, batch_size=8, seq_len=32, lr=3e-3, min_lr=3e-4, warmup=3, eval_interval=STEPS,
                      eval_batches=1, precision="fp32", seed=0)
    history = History()
    trainer = Trainer(get_preset("tiny", vocab_size=corpus.vocab_size), cfg, corpus, callbacks=[history])
    first_x, _ = trainer.batch(0)
    trainer.fit()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).numpy()
    np.save(os.path.join(out, f"params{rank}.npy"), params)
    np.save(os.path.join(out, f"batch{rank}.npy"), first_x.numpy())
    with open(os.path.join(out, f"log{rank}.json"), "w") as f:
        json.dump({"world": trainer.world, "losses": [r.loss for r in history.steps]}, f)
    dist.destroy_process_group()


@pytest.mark.slow        # 6 s: two processes import torch and train
def test_two_process_ddp_keeps_ranks_identical_and_learns(tmp_path):
    root = make_sample_root(tmp_path)
    tok_path = tmp_path / "tok.json"
    save_tokenizer(sample_tokenizer(root, vocab_size=300), tok_path)
    mp.spawn(_worker, args=(2, _free_port(), str(root), str(tok_path), str(tmp_path)), nprocs=2, join=True)

    p0, p1 = np.load(tmp_path / "params0.npy"), np.load(tmp_path / "params1.npy")
    assert np.array_equal(p0, p1)                                    # all-reduced gradients, same updates
    b0, b1 = np.load(tmp_path / "batch0.npy"), np.load(tmp_path / "batch1.npy")
    assert not np.array_equal(b0, b1)                                # each rank reads its own shard
    log0 = json.loads((tmp_path / "log0.json").read_text())
    assert log0["world"] == 2 and len(log0["losses"]) == STEPS       # rank 0 logs (mean over ranks)
    losses = log0["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert json.loads((tmp_path / "log1.json").read_text())["losses"] == []  # callbacks run on rank 0 only
