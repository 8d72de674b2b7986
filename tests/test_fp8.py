"""FP8 simulation: formats, fine-grained quantization, the scaled GEMM, accumulation, FP8Linear, recipe."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtp_lab import MTPModel, get_preset
from mtp_lab.fp8 import (
    FORMATS,
    MMA_K,
    accumulation_error_vs_k,
    compute_scale,
    dequantize,
    fake_quantize,
    fp8_matmul,
    limited_precision_matmul,
    quant_stats,
    quantize,
    round_to_bits,
    scaled_mm_available,
)
from mtp_lab.fp8_linear import BLOCK_LINEARS, FP8Linear, apply_fp8_recipe, fp8_layers, fp8_stats, record_fp8_stats


def all_finite_values(fmt):
    """Every finite value of the format, decoded from all 256 bit patterns by torch itself."""
    v = torch.arange(256, dtype=torch.uint8).view(FORMATS[fmt].dtype).float()
    return v[torch.isfinite(v)]


# ----------------------------------------------------------------------------- formats

def test_format_constants_match_the_spec():
    e4, e5 = FORMATS["e4m3"], FORMATS["e5m2"]
    assert (e4.max, e4.min_normal, e4.min_subnormal, e4.mantissa_bits) == (448.0, 2.0 ** -6, 2.0 ** -9, 3)
    assert (e5.max, e5.min_normal, e5.min_subnormal, e5.mantissa_bits) == (57344.0, 2.0 ** -14, 2.0 ** -16, 2)
    assert (e4.top_ulp, e5.top_ulp) == (32.0, 8192.0)
    for name, f in FORMATS.items():
        v = all_finite_values(name)
        assert v.max() == f.max and v[v > 0].min() == f.min_subnormal


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_representable_values_survive_exactly(fmt):
    v = all_finite_values(fmt)                                     # contains +-max, so amax scale = 1
    q, s = quantize(v, fmt, "tensor")
    assert float(s) == 1.0 and torch.equal(dequantize(q, s), v)
    # power-of-two scales keep every representable value exact, per tile too
    x = torch.stack([v * 2.0 ** e for e in (-12, -3, 0, 5)])       # (4, n): each row one tile scale
    q, s = quantize(x, fmt, "tile", scale="pow2")
    assert torch.equal(dequantize(q, s, "tile"), x)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_relative_error_within_format_bound(fmt, device):
    f = FORMATS[fmt]
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)).to(device)
    q, s = quantize(x, fmt, "tile")
    x_hat = dequantize(q, s, "tile")
    s_full = s.repeat_interleave(128, -1)
    normal = (x / s_full).abs() >= f.min_normal
    err = (x_hat - x).abs()
    # normal range: half an ulp relative; subnormal range: half the smallest step, absolute
    assert (err[normal] <= f.rel_error_bound * x[normal].abs() * (1 + 1e-6)).all()
    assert (err[~normal] <= 0.5 * f.min_subnormal * s_full[~normal] * (1 + 1e-6)).all()
    rms = float((x_hat - x).norm() / x.norm())
    assert rms < {"e4m3": 0.035, "e5m2": 0.07}[fmt]                 # facts: ~2.7% and ~5.3% per-tensor


def test_outlier_tile_beats_block_beats_tensor(device):
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(1)).to(device)
    x[3, 7] = 1e5                                                   # one activation outlier
    rest = torch.ones_like(x, dtype=torch.bool)
    rest[3, 7] = False
    err = {g: float((fake_quantize(x, "e4m3", g) - x)[rest].norm() / x[rest].norm())
           for g in ("tile", "block", "tensor")}
    assert err["tile"] < 0.03 < err["block"] < 0.08 < err["tensor"]
    # the outlier only coarsens its own group: outside its 128x128 block the error is the normal one
    rest[:128, :128] = False
    block_rest = (fake_quantize(x, "e4m3", "block") - x)[rest].norm() / x[rest].norm()
    assert block_rest < 0.03


def test_saturation_before_cast():
    x = torch.tensor([1.0, -3.0, 500.0, -1e6, 1e6])
    for fmt in ("e4m3", "e5m2"):
        f = FORMATS[fmt]
        q, s = quantize(x, fmt, scale=1.0)                          # a fixed scale, as with delayed scaling
        expect = torch.tensor([1.0, -3.0, {"e4m3": 448.0, "e5m2": 512.0}[fmt], -f.max, f.max])
        assert torch.equal(q.float(), expect)
        stats = quant_stats(x, q, s, "tensor", fmt=fmt)
        assert stats["saturated"] == pytest.approx(float((x.abs() > f.max + f.top_ulp / 2).float().mean()))
    assert torch.isinf(torch.tensor([1e6]).to(torch.float8_e5m2).float()).all()  # why the clamp is needed


def test_padding_uses_real_values_only():
    x = torch.randn(130, 200, generator=torch.Generator().manual_seed(2))
    q, s = quantize(x, "e4m3", "block")
    assert s.shape == (2, 2) and q.shape == x.shape
    padded = torch.zeros(256, 256)
    padded[:130, :200] = x
    q_ref, s_ref = quantize(padded, "e4m3", "block")
    assert torch.equal(s, s_ref) and torch.equal(q.float(), q_ref[:130, :200].float())
    assert float(s[1, 1]) == pytest.approx(float(x[128:, 128:].abs().max()) / 448.0)
    qt, st = quantize(x, "e4m3", "tile")
    assert st.shape == (130, 2)
    assert torch.allclose(st[:, 1], x[:, 128:].abs().amax(-1) / 448.0)


def test_all_zero_group_and_non_finite_input():
    x = torch.zeros(2, 256)
    x[1, :128] = torch.linspace(-1, 1, 128)
    q, s = quantize(x, "e4m3", "tile")
    assert torch.equal(s[0], torch.full((2,), 1e-4 / 448.0)) and float(s[1, 1]) == pytest.approx(1e-4 / 448.0)
    assert torch.equal(dequantize(q, s, "tile")[0], torch.zeros(256))
    for bad in (float("nan"), float("inf")):
        y = torch.ones(4, 128)
        y[2, 5] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            quantize(y, "e4m3", "tile")


@pytest.mark.parametrize("floor", [0, 0.0, -1e-4, float("nan"), float("inf"), 1e-45, 1e39, "1e-4", True])
def test_amax_floor_must_be_a_positive_normal_float32(floor):
    # amax_floor=0 used to give scale 0 and q = 0/0 = NaN for an all-zero group, silently
    with pytest.raises(ValueError, match="amax_floor must be a finite number >= 1.18e-38"):
        quantize(torch.zeros(2, 128), "e4m3", "tile", amax_floor=floor)
    q, s = quantize(torch.zeros(2, 128), "e4m3", "tile", amax_floor=1e-30)   # tiny but valid
    assert torch.isfinite(s).all() and (s > 0).all() and torch.equal(dequantize(q, s, "tile"), torch.zeros(2, 128))


def test_pow2_scale_is_the_next_power_of_two_up():
    """ue8m0: s = 2^ceil(log2(amax / 448)), the SMALLEST power of two with amax / s <= 448 (rounding down
    would saturate the group's largest values). Reference from math.frexp, not from log2."""
    amax = torch.tensor([448 * 2.0 ** e * m for e in (-20, -3, 0, 5) for m in (1.0, 1.1, 1.5, 1.99)])
    for a, got in zip(amax.tolist(), compute_scale(amax, "e4m3", "pow2").tolist(), strict=True):
        frac, e = math.frexp(a / 448)                     # a / 448 = frac 2^e, 0.5 <= frac < 1
        want = 2.0 ** (e - 1) if frac == 0.5 else 2.0 ** e
        assert got == want and 224 < a / got <= 448
    q, s = quantize(torch.tensor([[1.1 * 448, -3.0, 0.5]]), "e4m3", "tensor", scale="pow2")
    assert float(q.float().abs().max()) <= 448 and float(s) == 2.0


def test_bad_arguments_are_named():
    x = torch.ones(4, 128)
    with pytest.raises(ValueError, match="format"):
        quantize(x, "e3m4")
    with pytest.raises(ValueError, match="granularity"):
        quantize(x, granularity="row")
    with pytest.raises(ValueError, match="scale"):
        quantize(x, scale="max")
    with pytest.raises(ValueError, match="2-D"):
        quantize(torch.ones(2, 4, 128), granularity="block")
    with pytest.raises(ValueError, match="a @ b.T"):
        fp8_matmul(torch.ones(4, 128), torch.ones(128, 64))


# ----------------------------------------------------------------------------- the GEMM

def test_fp8_matmul_is_the_kernel_scheme(device):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 7, 300, generator=g).to(device), torch.randn(150, 300, generator=g).to(device)
    y = fp8_matmul(a, b)                                            # chunked: per-chunk partials in FP32
    assert y.shape == (3, 7, 150)
    qa, sa = quantize(a.reshape(21, 300), "e4m3", "tile")
    qb, sb = quantize(b, "e4m3", "block")
    ref = torch.zeros(21, 150, dtype=torch.float64, device=device)  # hand-written, in float64
    for c in range(3):
        cols = slice(128 * c, 128 * (c + 1))
        rows_b = sb[:, c].double().repeat_interleave(128)[:150]
        ref += sa[:, c, None].double() * rows_b[None, :] * (qa[:, cols].double() @ qb[:, cols].double().t())
    assert torch.allclose(y.reshape(21, 150).double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(fp8_matmul(a, b, backend="dequant"), y, rtol=1e-5, atol=1e-5)
    exact = a @ b.t()                                               # and it is close to the fp32 GEMM
    assert float((y - exact).norm() / exact.norm()) < 0.05


def test_scaled_mm_backend_matches_simulation(device):
    """torch._scaled_mm with unit tensor-wise scales exists on CPU (slow) and on FP8 GPUs: small shapes check the
    layout (padding to multiples of 16, column-major mat2) and FP8Linear's three GEMMs on that backend."""
    if device.type == "cuda" and not scaled_mm_available(device):
        pytest.skip("this GPU has no FP8 tensor cores (compute capability < 8.9)")
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(20, 200, generator=g).to(device), torch.randn(40, 200, generator=g).to(device)
    assert torch.allclose(fp8_matmul(a, b, backend="scaled_mm"), fp8_matmul(a, b), rtol=1e-5, atol=1e-5)
    # the whole FP8Linear (three GEMMs) on that backend
    lin = torch.nn.Linear(200, 40, bias=False).to(device)
    x = torch.randn(20, 200, generator=g).to(device).requires_grad_()
    grads = []
    for backend in ("scaled_mm", "dequant"):
        y = FP8Linear.from_linear(lin, backend=backend)(x)
        grads.append((y, *torch.autograd.grad(y.sum(), (x, lin.weight))))
    assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-5) for u, v in zip(*grads, strict=True))
    with pytest.raises(ValueError, match="backend"):
        FP8Linear(8, 8, backend="cuda")


@pytest.mark.skipif(not scaled_mm_available(), reason="needs a CUDA GPU with FP8 tensor cores (cc >= 8.9)")
def test_real_fp8_gemm_matches_simulation_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(5)
    a = torch.randn(512, 1024, device="cuda", generator=g)
    b = torch.randn(768, 1024, device="cuda", generator=g)
    real, sim = fp8_matmul(a, b, backend="scaled_mm"), fp8_matmul(a, b, backend="chunked")
    assert float((real - sim).norm() / sim.norm()) < 1e-5


# ----------------------------------------------------------------------------- accumulation

def test_round_to_bits_truncates_toward_zero():
    x = torch.tensor([1 + 2 ** -14 + 2 ** -20, -(1 + 2 ** -13 + 2 ** -15), 3.0, 0.0, 2.0 ** -30 * 1.75],
                     dtype=torch.float64)
    expect = torch.tensor([1 + 2 ** -14, -(1 + 2 ** -13), 3.0, 0.0, 2.0 ** -30 * 1.75], dtype=torch.float64)
    assert torch.equal(round_to_bits(x, 14), expect)
    assert torch.equal(round_to_bits(torch.tensor([1.875], dtype=torch.float64), 1),
                       torch.tensor([1.5], dtype=torch.float64))


def truncate(x: float, bits: int) -> float:
    """x with 1 + bits significant bits, rounded toward zero (via math.frexp: independent of round_to_bits)."""
    if x == 0:
        return 0.0
    m, e = math.frexp(x)                                  # x = m 2^e, 0.5 <= |m| < 1
    return math.ldexp(math.trunc(m * 2 ** (bits + 1)), e - bits - 1)


def grouped_reference(a, b, bits, promote_every, mma_k):
    """Scalar loops: per output, per promotion chunk, add each MMA slice's exact sum, then truncate."""
    K = a.shape[1]
    L = K if promote_every is None else promote_every
    out = []
    for row in a.tolist():
        out.append([])
        for col in b.tolist():
            total = 0.0
            for c0 in range(0, K, L):
                acc, c1 = 0.0, min(c0 + L, K)
                for g0 in range(c0, c1, mma_k):
                    acc = truncate(acc + math.fsum(row[t] * col[t] for t in range(g0, min(g0 + mma_k, c1))), bits)
                total += acc
            out[-1].append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_accumulation_adds_one_exact_mma_slice_at_a_time():
    """S_g = trunc(S_{g-1} + sum of the slice's products), restarted every promote_every; small integers keep
    every sum exact, so the model must match the loops bit for bit."""
    assert MMA_K == 32                                    # Hopper FP8 wgmma: K = 32 per instruction
    g = torch.Generator().manual_seed(9)
    a, b = torch.randint(-8, 9, (3, 100), generator=g).float(), torch.randint(-8, 9, (4, 100), generator=g).float()
    results = {}
    for mma_k, every in [(8, 40), (1, 40), (32, None), (16, 10)]:
        results[mma_k, every] = got = limited_precision_matmul(a, b, 4, every, mma_k)
        assert torch.equal(got.double(), grouped_reference(a, b, 4, every, mma_k)), (mma_k, every)
    assert not torch.equal(results[8, 40], results[1, 40])    # the grouping matters at 4 bits
    assert torch.equal(limited_precision_matmul(a, b, 4), limited_precision_matmul(a, b, 4, 128, 32))
    with pytest.raises(ValueError, match="mma_k must be a positive integer"):
        limited_precision_matmul(a, b, 14, 128, 0)


def test_limited_accumulation_exact_with_full_precision_and_worse_without_promotion(device):
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(8, 300, generator=g).to(device), torch.randn(5, 300, generator=g).to(device)
    exact = (a.double() @ b.double().t())
    assert torch.allclose(limited_precision_matmul(a, b, 52, None).double(), exact, rtol=1e-6, atol=1e-5)
    rows = {r["k"]: r for r in accumulation_error_vs_k(ks=(512, 4096), m=16, n=16)}
    r = rows[4096]
    assert r["limited"] > 5 * r["promoted"] and r["fp32"] < 1e-6
    assert rows[4096]["limited"] > 4 * rows[512]["limited"]           # grows with K without promotion
    assert rows[4096]["promoted"] < 2 * rows[512]["promoted"]         # flat with promotion


# ----------------------------------------------------------------------------- FP8Linear

def fq(x, granularity):
    return fake_quantize(x, "e4m3", granularity)


def test_fp8_linear_all_three_gemms(device):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 96, 200, generator=g).to(device).requires_grad_()   # M = 192 tokens, K = 200
    lin = torch.nn.Linear(200, 300, bias=True).to(device)
    fp8 = FP8Linear.from_linear(lin)
    assert fp8.weight is lin.weight and fp8.bias is lin.bias
    dy = torch.randn(2, 96, 300, generator=g).to(device)
    y = fp8(x)
    dx, dw, db = torch.autograd.grad(y, (x, lin.weight, lin.bias), dy)
    # independent reference of the recipe, written with fake quantization (float64 GEMMs)
    X, W, DY = x.detach().reshape(192, 200), lin.weight.detach(), dy.reshape(192, 300)
    y_ref = fq(X, "tile").double() @ fq(W, "block").double().t() + lin.bias.detach().double()
    dx_ref = fq(DY, "tile").double() @ fq(W, "block").double()
    dw_ref = fq(DY.t(), "tile").double() @ fq(fq(X, "tile").t(), "tile").double().t()

    def close(u, v):
        return torch.allclose(u.double().reshape(v.shape), v, rtol=1e-4, atol=1e-4)

    assert close(y, y_ref) and close(dx, dx_ref) and close(dw, dw_ref)
    assert torch.allclose(db, DY.sum(0))
    # and all three stay within E4M3's tolerance of the fp32 layer
    y32 = F.linear(x, lin.weight, lin.bias)
    dx32, dw32 = torch.autograd.grad(y32, (x, lin.weight), dy)

    def rel(u, v):
        return float((u - v).detach().norm() / v.detach().norm())

    tol = FORMATS["e4m3"].rel_error_bound                            # 2^-4: E4M3's worst per-element error
    assert rel(y, y32) < tol and rel(dx, dx32) < tol and rel(dw, dw32) < tol
    assert y.dtype == torch.float32 and torch.equal(fp8.weight, lin.weight)   # master weights stay FP32


def test_fp8_linear_stats():
    layer = FP8Linear(256, 128)
    layer.record_stats = True
    x = torch.randn(64, 256, requires_grad=True)
    layer(x).sum().backward()
    st = layer.stats
    assert set(st) == {"input", "weight", "output_rel_error", "grad_output"}
    assert st["input"]["amax"] == pytest.approx(float(x.detach().abs().max()))
    assert st["input"]["scale"].shape == (64, 2) and st["weight"]["scale"].shape == (1, 2)
    assert st["input"]["saturated"] == 0.0 and 0 <= st["weight"]["underflow"] < 0.01
    assert 0 < st["input"]["rel_error"] < 0.04 and 0 < st["output_rel_error"] < 0.04


# ----------------------------------------------------------------------------- the recipe

def expected_names(cfg, scope, eh_proj=False):
    main = [f"layers.{i}.{n}" for i in range(cfg.n_layers) for n in BLOCK_LINEARS]
    mtp = [f"mtp.{k}.{n}" for k in range(cfg.mtp_depth)
           for n in (["eh_proj"] if eh_proj else []) + [f"block.{b}" for b in BLOCK_LINEARS]]
    return set({"main": main, "mtp": mtp, "all": main + mtp}[scope])


@pytest.mark.parametrize("scope", ["main", "mtp", "all"])
def test_recipe_converts_exactly_the_intended_modules(scope):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = MTPModel(cfg)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    apply_fp8_recipe(model, scope)
    assert set(fp8_layers(model)) == expected_names(cfg, scope)
    assert model.config.fp8 == scope
    assert type(model.head) is torch.nn.Linear and type(model.embed) is torch.nn.Embedding
    assert list(model.state_dict()) == keys                          # checkpoints unaffected
    assert all(p is params[n] for n, p in model.named_parameters())  # same master weights
    built = MTPModel(cfg.replace(fp8=scope))                         # the config flag does the same
    assert set(fp8_layers(built)) == expected_names(cfg, scope)


def test_recipe_keeps_eh_proj_in_high_precision_unless_asked():
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = apply_fp8_recipe(MTPModel(cfg), "mtp")
    assert all(type(m.eh_proj) is torch.nn.Linear for m in model.mtp)   # BF16 in the released checkpoint
    both = apply_fp8_recipe(MTPModel(cfg), "all", eh_proj_fp8=True)     # what the report's recipe implies
    assert set(fp8_layers(both)) == expected_names(cfg, "all", eh_proj=True)
    assert all(isinstance(m.eh_proj, FP8Linear) for m in both.mtp) and both.config.fp8 == "all"
    with pytest.raises(ValueError, match="eh_proj_fp8 must be True or False"):
        apply_fp8_recipe(MTPModel(cfg), "mtp", eh_proj_fp8="yes")


def test_recipe_copy_forward_and_errors(device):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = MTPModel(cfg).to(device).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 24)).to(device)
    drafter = apply_fp8_recipe(model, "mtp", inplace=False)
    assert not fp8_layers(model) and model.config.fp8 == "none"
    with torch.no_grad():
        ref, out = model(tokens), drafter(tokens)
    assert torch.equal(out.logits, ref.logits)                       # main model untouched
    for a, b in zip(out.mtp_logits, ref.mtp_logits, strict=True):
        assert not torch.equal(a, b) and float((a - b).norm() / b.norm()) < 0.05
    apply_fp8_recipe(drafter, "main")
    assert drafter.config.fp8 == "all"
    with pytest.raises(ValueError, match="scope"):
        apply_fp8_recipe(model, "head")
    with pytest.raises(ValueError, match="fp8"):
        cfg.replace(fp8="bf16")


def test_model_stats_collection(device):
    cfg = get_preset("tiny", fp8="all")
    torch.manual_seed(0)
    model = MTPModel(cfg).to(device)
    assert record_fp8_stats(model) == len(expected_names(cfg, "all"))
    tokens = torch.randint(0, cfg.vocab_size, (2, 16)).to(device)
    model(tokens).logits.sum().backward()
    stats = fp8_stats(model)
    assert set(stats) == expected_names(cfg, "all")
    assert all(0 < s["input"]["rel_error"] < 0.1 for s in stats.values())
    record_fp8_stats(model, enabled=False)
    assert fp8_stats(model) == {}


# ----------------------------------------------------------------------------- the benchmark command

def test_fp8_bench_command(tmp_path, capsys):
    from mtp_lab.cli import main
    out = tmp_path / "fp8.json"
    assert main(["fp8-bench", "--parts", "quantization", "--json", str(out)]) == 0
    import json
    rows = json.loads(out.read_text())["quantization"]
    by = {(r["format"], r["granularity"]): r for r in rows}
    assert by["e4m3", "tile"]["rel_error_100000.0"] < by["e4m3", "block"]["rel_error_100000.0"] \
        < by["e4m3", "tensor"]["rel_error_100000.0"]
    assert "| e4m3 | tile |" in capsys.readouterr().out
    assert main(["fp8-bench", "--parts", "quantisation"]) == 2
