"""AR decoding speed of the shipped course model at 1 vs 2 torch threads, interleaved in one run so that machine
load hits both alike (16 test-split prompts x 128 new tokens, 3 rounds). `mtp-lab bench` defaults to the faster.

    python tools/ar_threads.py
"""

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtp_lab.bench import heldout_prompts  # noqa: E402
from mtp_lab.decoding import generate  # noqa: E402

model, prompts, _ = heldout_prompts(None, 16, 64)
ms = {1: [], 2: []}
with torch.inference_mode():
    generate(model, prompts[0], 8)                                  # warm-up
    for _ in range(3):
        for threads in ms:
            torch.set_num_threads(threads)
            stats = [generate(model, p, 128).stats for p in prompts]
            ms[threads].append(1e3 * sum(s.wall_time_s for s in stats) / sum(s.main_forwards for s in stats))
for threads, runs in ms.items():
    listed = ", ".join(f"{x:.2f}" for x in runs)
    print(f"{threads} thread(s): AR {statistics.median(runs):.2f} ms/token (runs {listed})")
