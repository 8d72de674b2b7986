"""tools/gpu_check.py on the CPU: the references it measures the hardware against, the accumulator fit, the test
outcome parsing, the notebook sentence scan, and the isolation of parts (a failing or hanging part is recorded,
the others still run, the report is still written)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtp_lab.fp8 import chunk_scales, fp8_matmul, quantize

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gc = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gc
spec.loader.exec_module(gc)

CPU = torch.device("cpu")


def operands(M=24, N=40, K=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    qa, sa = quantize(a, "e4m3", "tile")
    qb, sb = quantize(b, "e4m3", "block")
    return a, b, qa, sa, qb, sb, chunk_scales(sb, "block", N, K)


def test_kernel_exact_is_the_dequantized_product_in_float64():
    a, b, qa, sa, qb, sb, sbc = operands()
    exact = gc.kernel_exact(qa, sa, qb, sbc, 24, 40)
    # independent: every FP8 value times its own scale, as float64, then one float64 matmul
    a64 = qa.double() * sa.double().repeat_interleave(128, 1)[:, :300]
    b64 = qb.double() * sbc.double().repeat_interleave(128, 1)[:, :300]
    assert exact.dtype == torch.float64
    assert torch.allclose(exact, a64 @ b64.t(), rtol=1e-12, atol=1e-12)
    corner = gc.kernel_exact(qa, sa, qb, sbc, 5, 7)
    assert torch.equal(corner, exact[:5, :7])
    assert gc.rel(fp8_matmul(a, b), exact) < 1e-6          # the package's chunked GEMM: FP32 rounding only


def test_the_accumulation_model_of_the_kernel_scheme():
    _, _, qa, sa, qb, _, sbc = operands(seed=1)
    exact = gc.kernel_exact(qa, sa, qb, sbc, 24, 40)
    wide = gc.model_14bit(qa, sa, qb, sbc, 24, 40, bits=40)       # a 40-bit accumulator: FP32 rounding only
    assert gc.rel(wide, exact) < 1e-6
    err = {bits: gc.rel(gc.model_14bit(qa, sa, qb, sbc, 24, 40, bits=bits), exact) for bits in (10, 14)}
    assert 1e-6 < err[14] < 1e-3 and err[10] > 8 * err[14]       # truncation error halves per bit: ~2^4


def test_simulation_part_on_cpu(tmp_path, monkeypatch):
    """The CPU's scaled_mm accumulates in FP32: the per-chunk backend equals the simulation, and the accumulator
    fit must say the hardware keeps (nearly) FP32's 23 fraction bits, not 14; the 14-bit model is not closer."""
    monkeypatch.setitem(gc.SIZES, "cpu", {**gc.SIZES["cpu"], "sim_shapes": [(32, 48, 256)], "corner": 16,
                                          "acc_mn": 16, "acc_ks": [512]})
    p = gc.Part(CPU, tmp_path / "sim.json", SimpleNamespace())
    gc.part_simulation(p)
    saved = json.loads((tmp_path / "sim.json").read_text())
    row = saved["kernel_scheme"][0]
    assert row["shape"] == [32, 48, 256] and row["corner"] == [16, 16]
    assert row["hw per-chunk"]["to_sim_chunked"] < 1e-6 and row["hw per-chunk"]["model_closer_than_exact"] is False
    assert "error" in row["hw blockwise"]                       # block-wise scaled_mm is refused on CPU: recorded
    acc = saved["accumulator"][0]
    for key in ("default", "fast_accum"):
        assert acc[key]["best_bits"] >= 22 and acc[key]["model_14bit_closer_than_exact"] is False
        assert acc[key]["bits_of_same_error_size"] >= 22
        assert acc[key]["rel_to_exact"] < 1e-6
    assert acc["model_14bit_rel"] > 2 * acc["model_14bit_promoted_rel"]   # promotion helps at K = 512


@pytest.mark.slow                      # a pytest run in a subprocess
def test_tests_part_counts_outcomes(tmp_path, monkeypatch):
    (tmp_path / "conftest.py").write_text(
        "def pytest_addoption(parser):\n    parser.addoption('--torch-device', default='cpu')\n")
    (tmp_path / "test_fake.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2, 'one is not two'\n\n"
        "@pytest.mark.skip(reason='not here')\ndef test_skip():\n    pass\n")
    monkeypatch.setattr(gc, "TEST_FILES", (str(tmp_path / "test_fake.py"),))
    p = gc.Part(CPU, tmp_path / "tests.json", SimpleNamespace())
    gc.part_tests(p)
    t = json.loads((tmp_path / "tests.json").read_text())["tests"]
    assert (t["passed"], t["failed"], t["skipped"], t["error"]) == (1, 1, 1, 0) and t["exit_code"] == 1
    assert t["failures"][0]["test"].endswith("test_bad") and "one is not two" in t["failures"][0]["message"]
    assert t["skips"][0]["reason"].endswith("not here")


def test_device_sentences_and_sanitize(tmp_path):
    (tmp_path / "07_x.py").write_text(
        "# %% [markdown]\n# # Title\n# A plain sentence. It runs in 10 s on 2 CPU cores.\n\n"
        "# %%\nprint(1)\n\n# %% [markdown]\n# The speed-up is 1.6x here. Nothing else.\n")
    (tmp_path / "08_y.py").write_text("# %% [markdown]\n# # Other\n# On a GPU it differs.\n")
    found = gc.device_sentences(tmp_path, ["07"])
    assert [(f["notebook"], f["cell"], f["sentence"]) for f in found] == [
        ("07_x", "cell-00", "It runs in 10 s on 2 CPU cores."), ("07_x", "cell-02", "The speed-up is 1.6x here.")]
    assert gc.sanitize("<obj at 0x7f3a2b1c9d00> -0.0000") == "<obj at 0xADDRESS> 0.0000"


def fake_python(tmp_path, body):
    """An 'interpreter' for the part processes: a shell script that finds --child-out and does `body`."""
    path = tmp_path / "python"
    path.write_text('#!/bin/sh\nwhile [ "$#" -gt 0 ]; do [ "$1" = --child-out ] && OUT="$2"; shift; done\n' + body)
    path.chmod(0o755)
    return str(path)


def test_a_failing_or_hanging_part_is_recorded_and_the_report_still_written(tmp_path, monkeypatch):
    # one part records a result, then fails; the next hangs past its budget, with a child of its own (a pytest,
    # a notebook kernel) that must not outlive it
    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setattr(sys, "executable", fake_python(tmp_path, (
        'case "$OUT" in *simulation*) echo \'{"hardware": "half done"}\' > "$OUT"; '
        f'echo "RuntimeError: the part broke" >&2; exit 3;; *) sleep 30 & echo $! > {pid_file}; wait;; esac\n')))
    monkeypatch.setitem(gc.BUDGET_S, "decoding", 0.5)
    rc = gc.main(["--device", "cpu", "--parts", "simulation", "decoding", "--out-dir", str(tmp_path)])
    assert rc == 1
    report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    sim, dec = report["parts"]["simulation"], report["parts"]["decoding"]
    assert sim["status"] == "failed" and "the part broke" in sim["error"] and sim["result"] == {"hardware": "half done"}
    assert dec["status"] == "timeout" and dec["seconds"] < 4
    status = Path(f"/proc/{pid_file.read_text().strip()}/status")
    assert not status.exists() or "zombie" in status.read_text()      # the whole process group was killed
    md = (tmp_path / "gpu_check_cpu.md").read_text()
    assert "CPU RUN" in md and "Status: **failed**" in md and "the part broke" in md and "Status: **timeout**" in md


def test_no_cuda_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gc.main(["--parts", "simulation"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.slow                      # a pytest run in a subprocess
def test_unusable_test_device_stops_pytest_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_model.py", "-q", "-k", "one_token",
                           "--torch-device", "nosuchdevice", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 4
    assert "--torch-device 'nosuchdevice' (or $MTP_LAB_TEST_DEVICE) is not usable here" in proc.stdout + proc.stderr
