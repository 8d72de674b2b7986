"""`make gpu-check`: the course on a GPU, measured in one command (issue 22). Writes
docs/results/gpu_check_<device>.json and .md.

Parts (--parts; each runs in its own process with its own time budget, so one that fails, hangs or runs out of
time is recorded and the others still run; the report is rewritten after every part):
  tests       the model, loss, FP8, decoding and training tests on the device (pytest --torch-device)
  simulation  mtp_lab's FP8 GEMM simulation against torch._scaled_mm on the SAME FP8 inputs and scales:
              (a) DeepSeek's scheme (1x128 tiles, 128x128 blocks, FP32 promotion every 128): the package's
                  simulations, the 14-bit accumulation model, the hardware per 128-chunk (backend="scaled_mm")
                  and, where torch has it, block-wise scaled_mm in one call; per shape, distance of each from
                  the exact (float64) sum and from each other;
              (b) the accumulator itself: one tensor-wise scaled_mm over all of K (use_fast_accum on and off)
                  against the B-bit model for B = 10..24: which B predicts the hardware, and whether the 14-bit
                  model predicts it better than exact accumulation does
  throughput  FP8 (tensor-, row-, block-wise scaled_mm; the package's per-chunk backend; the dequant simulation)
              vs BF16 GEMMs at 4096^3 and at the course model's shapes (inputs already quantized); FP8Linear
              forward+backward (dequant and scaled_mm backends) vs a BF16 nn.Linear
  decoding    the shipped course model at batch 1: AR vs MTP vs n-gram (bench.run_bench), tau and greedy
              equality with AR; on the prompts of the committed CPU report, so tau and the AR text compare
  train       `mtp-lab train --preset course` (the real command): BF16 with two seeds, FP8 ("--fp8 all") with the
              first; tokens/s and validation-loss curves, the FP8-vs-BF16 gap against the seed-to-seed gap
  notebooks   every notebook executed on the device (nbclient, as tools/build_notebooks.py builds them) and
              checked as the build checks them (errors, solutions, every {{quoted}} number shown by a checked
              output); checked outputs that differ from the stored (CPU) ones; device-dependent sentences

    python tools/gpu_check.py                                        # every part, on cuda (make gpu-check)
    python tools/gpu_check.py --device cpu                           # the CPU paths at small sizes (the CPU report)
    python tools/gpu_check.py --device cpu --parts simulation --notebooks 02

Runs without installing mtp_lab (the repository root goes on sys.path and PYTHONPATH): the GPU machine's own
Python with torch is enough for parts 1-5; part 6 also needs nbclient, ipykernel, jupytext, plotly, ipywidgets
and anywidget (docs/fp8.md, "The GPU check", says how to carry them).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
from gpu_check_report import markdown  # noqa: E402

from mtp_lab.data import atomic_write_json  # noqa: E402

PARTS = ("tests", "simulation", "throughput", "decoding", "train", "notebooks")
BUDGET_S = {"tests": 55, "simulation": 25, "throughput": 25, "decoding": 55, "train": 80, "notebooks": 120}  # 6 min
RESULTS = ROOT / "docs" / "results"
CPU_REPORT = RESULTS / "gpu_check_cpu.json"     # the committed CPU run: its prompts, tau and AR text
TEST_FILES = ("tests/test_model.py", "tests/test_fp8.py", "tests/test_decoding.py", "tests/test_train.py")
# sizes: the device run, and the small CPU run that only proves the code paths
SIZES = {
    "cuda": dict(sim_shapes=[(2048, 128, 128), (2048, 352, 128), (2048, 128, 352), (2048, 2048, 128),
                             (4096, 4096, 4096)],
                 corner=256, acc_mn=256, acc_ks=[128, 512, 1024, 4096, 16384],
                 gemm_shapes=[("4096^3", 4096, 4096, 4096), ("course wq (2048 tokens)", 2048, 128, 128),
                              ("course w1", 2048, 352, 128), ("course w2", 2048, 128, 352),
                              ("course head", 2048, 2048, 128), ("decode w1 (16 rows)", 16, 352, 128)],
                 linear_shapes=[("4096 tokens, 4096 -> 4096", 4096, 4096, 4096), ("course w1", 2048, 128, 352)],
                 repeats=20, prompts=8, prompt_len=64, new_tokens=64, ks=[1, 2, 3],
                 train=dict(steps=150, batch_size=16, seq_len=128, eval_interval=25)),
    "cpu": dict(sim_shapes=[(64, 128, 128), (32, 352, 352)], corner=64, acc_mn=32, acc_ks=[128, 512, 1024],
                gemm_shapes=[("128^3", 128, 128, 128), ("course wq (64 tokens)", 64, 128, 128)],
                linear_shapes=[("course w1 (64 tokens)", 64, 128, 352)],
                repeats=3, prompts=8, prompt_len=64, new_tokens=64, ks=[1, 2, 3],
                train=dict(steps=4, batch_size=2, seq_len=32, eval_interval=2)),
}


# ============================================================================ helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() (CUDA events on a GPU: kernel time, not launch time)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref||_F / ||ref||_F in float64."""
    ref = ref.double()
    return float((x.double() - ref).norm() / ref.norm())


def dist(x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - y||_F / ||ref||_F: how far apart two results are, on the scale of the exact one."""
    return float((x.double() - y.double()).norm() / ref.double().norm())


def attempt(fn):
    """fn()'s value, or {"error": first line of the exception}: an unsupported scaling mode is a finding."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded in the report, never hidden
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}


def device_label(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def meta(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda)
    try:   # the commit, and the tracked files of the code that ran that differ from it (a copy without .git: None)
        git = dict(cwd=ROOT, capture_output=True, text=True, timeout=10)
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "mtp_lab", "tools",
                                 "tests", "notebooks", "assets"], **git).stdout.splitlines()
        info["modified"] = [line[3:] for line in status] if info["commit"] else None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = info["modified"] = None
    return info


class Part:
    """What a part has measured so far, written to its file after every record (a part stopped by its
    time budget still reports what it finished)."""

    def __init__(self, device: torch.device, out: Path, args):
        self.device, self.out, self.args, self.data = device, out, args, {}
        self.sizes = SIZES["cuda" if device.type == "cuda" else "cpu"]

    def record(self, key: str, value) -> None:
        self.data[key] = value
        atomic_write_json(self.out, self.data, indent=1, default=str)


# ============================================================================ 1. tests

def part_tests(p: Part) -> None:
    """pytest on the device; outcomes from its junit XML."""
    import xml.etree.ElementTree as ET
    xml = p.out.with_suffix(".xml")
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider", "-m", "not browser",
           f"--torch-device={p.device}", f"--junitxml={xml}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env())
    counts, failures, skips = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}, [], []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            counts["failed" if bad.tag == "failure" else "error"] += 1
            failures.append({"test": name, "message": (bad.get("message") or "").splitlines()[0][:300]})
        elif skip is not None:
            counts["skipped"] += 1
            skips.append({"test": name, "reason": (skip.get("message") or "")[:200]})
        else:
            counts["passed"] += 1
    p.record("tests", {"command": shlex.join(["python", *cmd[1:-1]]), "exit_code": proc.returncode, **counts,
                       "seconds": round(time.perf_counter() - t0, 1), "failures": failures, "skips": skips,
                       "tail": proc.stdout[-1500:]})


# ============================================================================ 2. simulation vs hardware

def kernel_exact(qa, sa, qb, sb, rows: int, cols: int) -> torch.Tensor:
    """sum_c sa_c sb_c^T (qa_c qb_c^T) in float64 (every product and sum exact to ~1e-16) on a rows x cols
    corner of C: the value an FP8 GEMM with exact accumulation would return for these FP8 inputs and scales."""
    K, out = qa.shape[1], 0
    for c in range(sa.shape[1]):
        cols_k = slice(c * 128, min((c + 1) * 128, K))
        out = out + sa[:rows, c, None].double() * sb[None, :cols, c].double() * (
            qa[:rows, cols_k].double() @ qb[:cols, cols_k].double().t())
    return out


def model_14bit(qa, sa, qb, sb, rows: int, cols: int, bits: int = 14) -> torch.Tensor:
    """The accumulation model for the kernel scheme: each 128-chunk summed in a `bits`-bit accumulator (MMA
    slices of 32), scaled and added in FP32 (promotion every 128)."""
    from mtp_lab.fp8 import limited_precision_matmul
    K = qa.shape[1]
    out = torch.zeros(rows, cols, dtype=torch.float32, device=qa.device)
    for c in range(sa.shape[1]):
        cols_k = slice(c * 128, min((c + 1) * 128, K))
        part = limited_precision_matmul(qa[:rows, cols_k].float(), qb[:cols, cols_k].float(), bits, None)
        out += sa[:rows, c, None] * sb[None, :cols, c] * part
    return out


_BLOCKWISE_LAYOUT: dict[str, str] = {}     # the scale layout that last ran (tried first: timings pay no refusals)


def blockwise_scaled_mm(qa, sa, qb, sb_block) -> tuple[torch.Tensor, str]:
    """DeepSeek's scaling in ONE torch call: F.scaled_mm with BlockWise1x128 (A) and BlockWise128x128 (B)
    scales, fp32 out -> (C, the scale layout that ran). torch's docstring does not give the layout cuBLAS wants;
    torch's own benchmark (benchmarks/operator_benchmark/pt/scaled_mm_test.py) gives A's (M, K/128) scales
    outer-dim-major (strides (1, M)) and B's 128x128 scales as (N/128, K/128) padded to a multiple of 4 along K
    and transposed. That layout is tried first, then two plainer ones; every refusal is reported."""
    import torch.nn.functional as F
    pad4 = F.pad(sb_block, (0, -sb_block.shape[1] % 4))                   # (N/128, L4)
    layouts = {"A outer-dim-major, B padded and transposed": (sa.t().contiguous().t(), pad4.t()),
               "A outer-dim-major, B (K/128, N/128) contiguous": (sa.t().contiguous().t(), sb_block.t().contiguous()),
               "A and B row-major": (sa.contiguous(), sb_block.contiguous())}
    errors = []
    for layout in sorted(layouts, key=lambda name: name != _BLOCKWISE_LAYOUT.get("ran")):   # the one that ran first
        s_a, s_b = layouts[layout]
        try:
            y = F.scaled_mm(qa, qb.t(), s_a, F.ScalingType.BlockWise1x128, s_b, F.ScalingType.BlockWise128x128,
                            output_dtype=torch.float32)
            _BLOCKWISE_LAYOUT["ran"] = layout
            return y, layout
        except Exception as e:  # noqa: BLE001 - all refused: the caller records why
            errors.append(f"{layout}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    raise RuntimeError("; ".join(errors))


def part_simulation(p: Part) -> None:
    from mtp_lab.fp8 import chunk_scales, limited_precision_matmul, quantize, scaled_matmul, scaled_mm_available
    dev, S = p.device, p.sizes
    hw_ok = dev.type == "cpu" or scaled_mm_available(dev)
    p.record("hardware", "torch._scaled_mm on " + (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
             "the CPU (FP32 accumulation: exercises the code, measures no tensor core)")
             + ("" if hw_ok else " -- NOT AVAILABLE (compute capability < 8.9)"))
    rows = []
    for M, N, K in S["sim_shapes"]:
        g = torch.Generator().manual_seed(M + N + K)
        a, b = torch.randn(M, K, generator=g).to(dev), torch.randn(N, K, generator=g).to(dev)
        qa, sa = quantize(a, "e4m3", "tile")
        qb, sb = quantize(b, "e4m3", "block")
        sbc = chunk_scales(sb, "block", N, K)
        r, c = min(M, S["corner"]), min(N, S["corner"])
        exact = kernel_exact(qa, sa, qb, sbc, r, c)
        got = {"sim chunked": scaled_matmul(qa, sa, qb, sbc, backend="chunked")[:r, :c],
               "sim dequant": scaled_matmul(qa, sa, qb, sbc, backend="dequant")[:r, :c],
               "model 14-bit": model_14bit(qa, sa, qb, sbc, r, c)}
        if hw_ok:
            got["hw per-chunk"] = scaled_matmul(qa, sa, qb, sbc, backend="scaled_mm")[:r, :c]
            blk = attempt(lambda: blockwise_scaled_mm(qa, sa, qb, sb))   # noqa: B023 - called at once
            if isinstance(blk, dict):
                got_blk = blk
            else:
                got["hw blockwise"], got_blk = blk[0][:r, :c], {"scale_layout": blk[1]}
        row = {"shape": [M, N, K], "corner": [r, c],
               "rel_to_exact": {k: rel(v, exact) for k, v in got.items()},
               "fp32_gemm_rel_to_exact": rel((a.double() @ b.double().t())[:r, :c], exact)}
        for hw in ("hw per-chunk", "hw blockwise"):
            if hw in got:
                # distances as a share of ||exact||: from the model's prediction, the simulation, and exact
                row[hw] = {"to_model_14bit": dist(got[hw], got["model 14-bit"], exact),
                           "to_sim_chunked": dist(got[hw], got["sim chunked"], exact),
                           "to_exact": rel(got[hw], exact)}
                row[hw]["model_closer_than_exact"] = row[hw]["to_model_14bit"] < row[hw]["to_exact"]
        if hw_ok and "hw blockwise" not in got:
            row["hw blockwise"] = got_blk
        elif hw_ok:
            row["hw blockwise"].update(got_blk)
        rows.append(row)
        p.record("kernel_scheme", rows)
    if not hw_ok:
        return
    # (b) the accumulator: one scaled_mm over all of K with unit tensor-wise scales, against the B-bit model
    one = torch.ones((), device=dev)
    acc_rows, m = [], S["acc_mn"]
    for K in S["acc_ks"]:
        g = torch.Generator().manual_seed(K)
        qa, _ = quantize(torch.randn(m, K, generator=g).to(dev), "e4m3", "tensor")
        qb, _ = quantize(torch.randn(m, K, generator=g).to(dev), "e4m3", "tensor")
        exact = qa.double() @ qb.double().t()
        models = {bits: limited_precision_matmul(qa.float(), qb.float(), bits, None) for bits in range(10, 25)}
        sizes = {bits: rel(mdl, exact) for bits, mdl in models.items()}         # each model's error size
        promoted = limited_precision_matmul(qa.float(), qb.float(), 14, 128)
        row = {"k": K, "mn": m, "model_14bit_rel": rel(models[14], exact), "model_14bit_promoted_rel":
               rel(promoted, exact)}
        for fast in (False, True):
            hw = attempt(lambda: torch._scaled_mm(qa, qb.t(), scale_a=one, scale_b=one,  # noqa: B023
                                                  out_dtype=torch.float32, use_fast_accum=fast))  # noqa: B023
            key = "fast_accum" if fast else "default"
            if isinstance(hw, dict):
                row[key] = hw
                continue
            to = {bits: dist(hw, mdl, exact) for bits, mdl in models.items()}
            best = min(to, key=to.get)                       # element by element: the model closest to the hardware
            err = rel(hw, exact)
            # error size alone (a hardware that rounds to nearest errs less than one that truncates, with the same
            # bits): the model whose error is nearest on a log scale
            size = min(sizes, key=lambda b: abs(math.log(max(sizes[b], 1e-30) / max(err, 1e-30))))
            # bias: truncation toward zero shrinks |C|; the mean of sign(C) (C_hw - C) / |C| says which way it errs
            bias = float(((hw.double() - exact) * exact.sign()).sum() / exact.abs().sum())
            row[key] = {"rel_to_exact": err, "to_model_14bit": to[14], "best_bits": best,
                        "to_best_model": to[best], "model_14bit_closer_than_exact": to[14] < err,
                        "bits_of_same_error_size": size,
                        "signed_bias": bias}
        acc_rows.append(row)
        p.record("accumulator", acc_rows)


# ============================================================================ 3. throughput

def part_throughput(p: Part) -> None:
    from mtp_lab.fp8 import chunk_scales, quantize, scaled_matmul, scaled_mm_available
    from mtp_lab.fp8_linear import FP8Linear
    dev, S = p.device, p.sizes
    hw_ok = dev.type == "cpu" or scaled_mm_available(dev)
    rows = []
    for label, M, N, K in S["gemm_shapes"]:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(M, K, generator=g).to(dev), torch.randn(N, K, generator=g).to(dev)
        ab, bb = a.bfloat16(), b.bfloat16()
        qa_t, sa_t = quantize(a, "e4m3", "tensor")
        qb_t, sb_t = quantize(b, "e4m3", "tensor")
        qa, sa = quantize(a, "e4m3", "tile")
        qb, sb = quantize(b, "e4m3", "block")
        sbc = chunk_scales(sb, "block", N, K)
        runs = {"bf16 mm": lambda: ab @ bb.t(),  # noqa: B023 - each lambda is timed before the loop moves on
                "sim dequant (fp32)": lambda: scaled_matmul(qa, sa, qb, sbc, backend="dequant")}  # noqa: B023
        if hw_ok:
            runs.update({
                "fp8 tensor-wise": lambda: torch._scaled_mm(qa_t, qb_t.t(), scale_a=sa_t, scale_b=sb_t,  # noqa: B023
                                                            out_dtype=torch.bfloat16),
                "fp8 tensor-wise fast-accum": lambda: torch._scaled_mm(  # noqa: B023
                    qa_t, qb_t.t(), scale_a=sa_t, scale_b=sb_t, out_dtype=torch.bfloat16, use_fast_accum=True),  # noqa: B023
                "fp8 row-wise": lambda: torch._scaled_mm(  # noqa: B023
                    qa_t, qb_t.t(), scale_a=sa_t.expand(M, 1).contiguous(), scale_b=sb_t.expand(1, N).contiguous(),  # noqa: B023
                    out_dtype=torch.bfloat16),
                "fp8 block-wise (one call)": lambda: blockwise_scaled_mm(qa, sa, qb, sb)[0],  # noqa: B023
                "fp8 per-chunk (backend scaled_mm)": lambda: scaled_matmul(qa, sa, qb, sbc, backend="scaled_mm"),  # noqa: B023
            })
        row = {"shape": label, "mnk": [M, N, K]}
        for name, fn in runs.items():
            t = attempt(lambda: median_seconds(fn, dev, S["repeats"]))  # noqa: B023
            row[name] = t if isinstance(t, dict) else {"ms": 1e3 * t, "tflops": 2 * M * N * K / t / 1e12}
        bf = row["bf16 mm"]["ms"]
        for name in runs:
            if "ms" in row[name]:
                row[name]["speedup_over_bf16"] = bf / row[name]["ms"]
        rows.append(row)
        p.record("gemm", rows)
    lin_rows = []
    for label, M, K, N in S["linear_shapes"]:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(M, K, generator=g).to(dev).requires_grad_()
        dy = torch.randn(M, N, generator=g).to(dev)
        base = torch.nn.Linear(K, N, bias=False).to(dev)
        layers = {"bf16 nn.Linear (autocast)": base, "FP8Linear dequant (autocast)": FP8Linear.from_linear(base)}
        if hw_ok:
            layers["FP8Linear scaled_mm (autocast)"] = FP8Linear.from_linear(base, backend="scaled_mm")

        def step(layer, x=x, dy=dy):
            with torch.autocast(dev.type, torch.bfloat16):
                y = layer(x)
            torch.autograd.backward(y, dy.to(y.dtype))

        row = {"shape": label, "tokens_in_out": [M, K, N]}
        for name, layer in layers.items():
            t = attempt(lambda: median_seconds(lambda: step(layer), dev, S["repeats"]))  # noqa: B023
            row[name] = t if isinstance(t, dict) else {"ms": 1e3 * t, "tflops": 3 * 2 * M * K * N / t / 1e12}
        bf = row["bf16 nn.Linear (autocast)"].get("ms")
        for name in layers:
            if bf and "ms" in row[name]:
                row[name]["speedup_over_bf16"] = bf / row[name]["ms"]
        lin_rows.append(row)
        p.record("fp8_linear_fwd_bwd", lin_rows)
    p.record("note", "GEMM rows time the GEMM alone on inputs already quantized (quantization not included); "
             "FP8Linear rows include quantizing x, W and dy, and all three GEMMs. bf16 on a CPU without native "
             "bf16 is emulated. " + ("" if hw_ok else "No FP8 tensor cores: FP8 rows not run."))


# ============================================================================ 4. decoding

def part_decoding(p: Part) -> None:
    from mtp_lab import bench
    from mtp_lab.checkpoint import load_pretrained
    from mtp_lab.decoding import generate
    S, dev = p.sizes, p.device
    model, _ = load_pretrained(device=dev)
    cpu = json.loads(CPU_REPORT.read_text())["parts"].get("decoding", {}).get("result", {}) \
        if dev.type != "cpu" and CPU_REPORT.is_file() else {}
    if cpu.get("prompts"):
        prompts, source = cpu["prompts"], f"the {len(cpu['prompts'])} prompts of {CPU_REPORT.relative_to(ROOT)}"
    else:
        _, prompts, source = bench.heldout_prompts(None, S["prompts"], S["prompt_len"])
        source = f"{S['prompts']} windows of the test split (bench.heldout_prompts)"
    p.record("prompts_source", source)
    p.record("prompts", prompts)
    drafters = bench.build_drafters(model, ["mtp", "ngram"])
    torch.set_num_threads(1 if dev.type == "cpu" else torch.get_num_threads())
    keep = ("drafter", "k", "tau", "acceptance_rate", "per_position", "tokens_per_s", "speedup", "identical_to_ar",
            "c", "v", "ms_per_main_forward")
    with torch.inference_mode():
        rows = bench.run_bench(model, prompts, S["new_tokens"], S["ks"], drafters)
        p.record("rows", [{k: r[k] for k in keep} for r in rows])
        p.record("threads", torch.get_num_threads())
        ar_tokens = [generate(model, pr, S["new_tokens"]).tokens for pr in prompts]      # for the CPU/GPU comparison
        p.record("ar_tokens", ar_tokens)
    if cpu.get("rows"):
        tau_cpu = {(r["drafter"], r["k"]): r["tau"] for r in cpu["rows"]}
        p.record("vs_cpu", {
            "tau_equal": all(abs(r["tau"] - tau_cpu.get((r["drafter"], r["k"]), float("nan"))) < 1e-9 for r in rows),
            "tau_diff": {f"{r['drafter']} k={r['k']}": r["tau"] - tau_cpu.get((r["drafter"], r["k"]), float("nan"))
                         for r in rows},
            "ar_text_identical_prompts": sum(a == b for a, b in zip(ar_tokens, cpu.get("ar_tokens", []), strict=False)),
            "prompts": len(prompts)})


# ============================================================================ 5. training

EVAL_LINE = re.compile(r"step (\d+): val main=([\d.]+)")


def train_run(p: Part, name: str, extra: list[str], out: Path) -> dict:
    """One `mtp-lab train --preset course` run; its eval lines are timestamped as they arrive."""
    T = p.sizes["train"]
    cmd = [sys.executable, "-m", "mtp_lab.cli", "train", "--preset", "course", "--out", str(out), "--overwrite",
           "--steps", str(T["steps"]), "--batch-size", str(T["batch_size"]), "--seq-len", str(T["seq_len"]),
           "--eval-interval", str(T["eval_interval"]), "--save-interval", str(T["steps"]),
           "--warmup", str(max(1, T["steps"] // 10)), "--precision", "bf16", *extra]
    if p.device.type == "cpu":
        cmd += ["--threads", "1"]
    env = child_env()
    if p.device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0, curve, lines = time.perf_counter(), [], []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = EVAL_LINE.search(line)
            if m:
                curve.append({"step": int(m[1]), "val_main": float(m[2]), "t": time.perf_counter() - t0})
    if proc.returncode != 0 or len(curve) < 2:
        raise RuntimeError(f"{name}: `{' '.join(cmd[1:])}` exited {proc.returncode}:\n" + "\n".join(lines[-15:]))
    first, last = curve[0], curve[-1]
    tokens = (last["step"] - first["step"]) * T["batch_size"] * T["seq_len"]
    return {"command": "python " + " ".join(cmd[1:]).replace(str(out), "OUT"), "curve": curve,
            "tokens_per_s": tokens / (last["t"] - first["t"]), "seconds": time.perf_counter() - t0,
            "final_val_main": last["val_main"],
            "header": next((ln for ln in lines if ln.startswith("parameters")), None)}


def part_train(p: Part) -> None:
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("bf16 seed 1337", ["--seed", "1337"]),
                            ("fp8 seed 1337", ["--seed", "1337", "--fp8", "all"]),
                            ("bf16 seed 1338", ["--seed", "1338"])):
            runs[name] = train_run(p, name, extra, Path(tmp) / name.replace(" ", "_"))
            p.record("runs", runs)
    if len(runs) == 3:
        base, fp8, other = (runs[k]["curve"] for k in ("bf16 seed 1337", "fp8 seed 1337", "bf16 seed 1338"))
        gap = [abs(f["val_main"] - b["val_main"]) for f, b in zip(fp8, base, strict=True)]
        noise = [abs(o["val_main"] - b["val_main"]) for o, b in zip(other, base, strict=True)]
        p.record("comparison", {"fp8_vs_bf16_final_rel": gap[-1] / base[-1]["val_main"],
                                "seed_vs_seed_final_rel": noise[-1] / base[-1]["val_main"],
                                "fp8_gap_max": max(gap), "seed_gap_max": max(noise),
                                "within_seed_noise": gap[-1] <= noise[-1] or gap[-1] / base[-1]["val_main"] < 0.0025,
                                "fp8_tokens_per_s_over_bf16": runs["fp8 seed 1337"]["tokens_per_s"]
                                / runs["bf16 seed 1337"]["tokens_per_s"]})


# ============================================================================ 6. notebooks

DEVICE_WORDS = re.compile(r"\b(CPU|cores?|threads?|GPU|CUDA|seconds?|ms|minutes?|tok(?:ens)?/s|faster|slower|"
                          r"speed-?ups?|laptop|machine|wall[- ]clock)\b", re.IGNORECASE)


def device_sentences(src_dir: Path, only: list[str]) -> list[dict]:
    """Every markdown sentence of the sources that names a device, a time or a speed: what may be untrue on a
    GPU (for a reader to judge; the report lists them)."""
    import build_notebooks as bn
    out = []
    for src in sorted(src_dir.glob("*.py")):
        if only and not src.name.startswith(tuple(only)):
            continue
        nb = bn.jupytext.read(src, fmt="py:percent")
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "markdown":
                continue
            text = re.sub(r"\s+", " ", cell.source)
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z*(`])", text):
                if DEVICE_WORDS.search(sentence):
                    out.append({"notebook": src.stem, "cell": f"cell-{i:02d}", "sentence": sentence.strip()[:400]})
    return out


def sanitize(text: str) -> str:
    """tests/nbval_sanitize.cfg's replacements, so that only real differences count."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tests" / "nbval_sanitize.cfg")
    for sec in cfg.sections():
        text = re.sub(cfg[sec]["regex"], cfg[sec]["replace"], text)
    return text


def part_notebooks(p: Part) -> None:
    """Each notebook through tools/build_notebooks.py's own build() (its kernel, environment and checks), with
    the write switched off: the stored notebooks stay the CPU build's, and are what the outputs compare with."""
    import build_notebooks as bn
    import nbformat
    only = p.args.notebooks
    p.record("device_sentences", device_sentences(bn.SRC_DIR, only))
    executed, checks = {}, bn.clean

    def keep_executed(nb, name):             # build() calls clean(nb) before it writes: keep the run's outputs
        executed["nb"] = copy.deepcopy(nb)
        return checks(nb, name)

    bn.clean, bn.write_atomic = keep_executed, lambda nb, path: None
    results = []
    for src in sorted(bn.SRC_DIR.glob("*.py")):
        if only and not src.name.startswith(tuple(only)):
            continue
        executed.clear()
        t0 = time.perf_counter()
        try:
            bn.build(src, timeout=300, threads=1 if p.device.type == "cpu" else None)
            problems = []
        except bn.BuildError as e:                   # errors, wrong solutions, quotes no checked output shows
            problems = [line for line in str(e).splitlines() if line.strip()]
        seconds = time.perf_counter() - t0
        stored = nbformat.read(bn.NB_DIR / f"{src.stem}.ipynb", as_version=4)
        before = {c.id: sanitize(bn.output_text(c)) for c in stored.cells if c.cell_type == "code"}
        changed = []
        for cell in executed.get("nb", stored).cells:
            if cell.cell_type == "code" and bn.CHECK in cell.metadata.get("tags", []):
                now = sanitize(bn.output_text(cell))
                if now != before.get(cell.id):
                    old, new = before.get(cell.id, "").splitlines(), now.splitlines()
                    j = next((i for i, (u, v) in enumerate(zip(old, new, strict=False)) if u != v),
                             min(len(old), len(new)))                 # the first line that differs
                    changed.append({"cell": cell.id, "stored": old[j] if j < len(old) else "",
                                    "here": new[j] if j < len(new) else ""})
        results.append({"notebook": src.stem, "seconds": round(seconds, 1), "problems": problems,
                        "checked_outputs_changed": changed})
        p.record("notebooks", results)


# ============================================================================ driver

def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_part(name: str, args, report: dict) -> dict:
    """Run one part in a child process under its time budget; what it recorded is kept whatever happens."""
    budget = BUDGET_S[name] * args.budget_scale
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--child", name,
               "--child-out", str(out), *(["--notebooks", *args.notebooks] if args.notebooks else [])]
        t0 = time.perf_counter()
        # a session of its own: on timeout the whole group goes (pytest, a training run, a notebook kernel), so
        # nothing of this part keeps the GPU busy while the next part measures
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=child_env(), start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=budget)
            status = "ok" if proc.returncode == 0 else "failed"
            error = None if proc.returncode == 0 else (stderr or stdout)[-2500:]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            status, error = "timeout", f"stopped after its budget of {budget:.0f} s; what it finished is kept"
        result = json.loads(out.read_text()) if out.is_file() else {}
    return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "budget_s": budget,
            "error": error, "result": result}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (small sizes: proves the code paths)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--notebooks", nargs="*", default=[], help="only the notebooks whose names start with these")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    ap.add_argument("--out-dir", default=str(RESULTS), help="where the report goes (default docs/results)")
    ap.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or pass --device cpu for the small CPU run", file=sys.stderr)
        return 2
    if args.child:
        if device.type == "cpu":
            torch.set_num_threads(1)          # a shared 2-core machine: one thread, modest and steadier
        globals()[f"part_{args.child}"](Part(device, Path(args.child_out), args))
        return 0
    label = device_label(device)
    out_dir = Path(args.out_dir)
    report = {"label": label, "meta": meta(device), "parts": {}}
    if device.type == "cpu":
        report["note"] = ("CPU RUN: small sizes, run to prove that every code path of the GPU check works; "
                          "torch._scaled_mm on a CPU accumulates in FP32, so no number here describes a GPU")
    for name in args.parts:
        print(f"gpu_check: {name} (budget {BUDGET_S[name] * args.budget_scale:.0f} s) ...", flush=True)
        report["parts"][name] = run_part(name, args, report)
        r = report["parts"][name]
        print(f"gpu_check: {name} {r['status']} in {r['seconds']} s", flush=True)
        if r["error"]:
            print(r["error"][-800:], file=sys.stderr)
        atomic_write_json(out_dir / f"gpu_check_{label}.json", report, indent=1, default=str)
        (out_dir / f"gpu_check_{label}.md").write_text(markdown(report))
    print(f"gpu_check: wrote {out_dir / f'gpu_check_{label}.json'} and .md")
    return 0 if all(r["status"] == "ok" for r in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
