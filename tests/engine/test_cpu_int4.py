"""cpu_int4's AVX512-VNNI kernel: the arithmetic MatMulNBits does (same weights, same int8
activations), at every shape the loops have tails for, deterministic across thread counts,
and chosen only where it runs and reads the weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine import cpu_int4, cpu_kernels, quantize
from app.engine.plan import Format
from app.engine.quantize import QuantLinear

pytestmark = pytest.mark.skipif(
    not cpu_int4.available(),
    reason=f"{cpu_int4.ENV}=mlas turns cpu_int4 off" if os.environ.get(cpu_int4.ENV)
    else "needs numba and an AVX512-VNNI CPU")


def random_ops(n: int, k: int, seed: int = 0) -> tuple:
    """MatMulNBits int4 operands in blocks of 128: random codes, scales and zero points (every
    nibble position of the packed zero points used)."""
    rng = np.random.default_rng(seed)
    blocks = k // 128
    codes = rng.integers(0, 256, (n, blocks, 64), dtype=np.uint8)
    scales = ((rng.random(n * blocks) + 0.5) * 0.01).astype(np.float32)
    zeros = rng.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8)
    return 4, 128, codes, scales, zeros


def random_int8_ops(n: int, k: int, seed: int = 0) -> tuple:
    """MatMulNBits int8 operands in blocks of 128 (cpu_kernels.int8_operands' form: codes
    q + 128, the row's scale repeated per block, zero point 128)."""
    rng = np.random.default_rng(seed)
    blocks = k // 128
    codes = rng.integers(0, 256, (n, blocks, 128), dtype=np.uint8)
    scales = np.repeat((rng.random(n) + 0.5) * 0.01, blocks).astype(np.float32)
    return 8, 128, codes, scales


def reference(x: np.ndarray, ops: tuple) -> np.ndarray:
    """The documented arithmetic in float64 from the operands: activations quantized per
    block of 128 (a = max|x| / 127, round half to even of x * (1/a) in float32), then
    sum_b s * a * (sum q * xq - zp * sum xq)."""
    codes, scales = ops[2], ops[3]
    n, blocks = codes.shape[:2]
    if ops[0] == 8:  # int8: codes q + 128, zero point 128
        q = codes.astype(np.float64)
        zp = np.full((n, blocks), 128.0)
    else:
        q = np.empty((n, blocks, 128), np.float64)
        q[..., 0::2], q[..., 1::2] = codes & 15, codes >> 4
        zp = np.empty((n, 2 * ops[4].size // n), np.float64)
        zb = ops[4].reshape(n, -1)
        zp[:, 0::2], zp[:, 1::2] = zb & 15, zb >> 4
        zp = zp[:, :blocks]
    s = scales.reshape(n, blocks).astype(np.float64)
    xb = x.reshape(x.shape[0], blocks, 128)
    a = (np.abs(xb).max(-1) / np.float32(127)).astype(np.float32)  # (M, B)
    inv = np.where(a > 0, np.float32(1) / np.where(a > 0, a, 1), 0).astype(np.float32)
    xq = np.rint(xb * inv[..., None]).astype(np.float64)  # (M, B, 128)
    dots = np.einsum("nbk,mbk->mnb", q, xq)  # exact integers
    sums = xq.sum(-1)  # (M, B)
    return np.einsum("nb,mb,mnb->mn", s, a.astype(np.float64),
                     dots - zp[None] * sums[:, None, :])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n,k,m", [(160, 256, 1), (163, 384, 5), (64, 1024, 9), (4, 128, 4),
                                   (12, 128 * 128, 1), (9, 128 * 67, 6)])
def test_matches_the_documented_arithmetic_and_matmulnbits(n, k, m, bits):
    """Against the float64 reference of the same arithmetic, and against onnxruntime's
    MatMulNBits (accuracy level 4) on the same operands: both to ~1e-6 (fp32 sums in another
    order). Shapes cover N not a multiple of 4, an odd number of blocks, token tails, and rows
    summed in chunks of 64 blocks (two full chunks; a full and a partial one). int4 with zero
    points, and int8 (what cpu_step reads for the output head and int8 models)."""
    ops = (random_ops if bits == 4 else random_int8_ops)(n, k, seed=n + k + m)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
    y = cpu_int4.PackedWeight(k, n, ops, threads=2)(x)
    assert y.shape == (m, n) and y.dtype == np.float32
    ref = reference(x, ops)
    assert np.abs(y - ref).max() <= 2e-6 * np.abs(ref).max()
    if cpu_kernels.available():
        inits: list = []
        session = cpu_kernels._session(
            [cpu_kernels._nbits_node(ops, k, n, "A", "Y", "w", inits)], inits, k, n)
        mlas = session.run(None, {"A": x})[0]
        assert np.abs(y - mlas).max() <= 2e-6 * np.abs(mlas).max()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 24), blocks=st.integers(1, 5), m=st.integers(1, 10),
       seed=st.integers(0, 2**16), bits=st.sampled_from([4, 8]))
def test_any_shape_matches_the_reference(n, blocks, m, seed, bits):
    """Every (N, K, M) small enough to enumerate tails: row padding, block count, token tile;
    int4 and int8."""
    k = 128 * blocks
    ops = (random_ops if bits == 4 else random_int8_ops)(n, k, seed)
    x = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32) * 3
    y = cpu_int4.PackedWeight(k, n, ops, threads=2)(x)
    ref = reference(x, ops)
    assert np.abs(y - ref).max() <= 2e-6 * max(np.abs(ref).max(), 1e-30)


def test_close_to_the_dequantized_weights():
    """Against x W^T with the stored weights (no activation rounding): within 2%, the int8
    activation error MatMulNBits has (tests/engine/test_cpu_kernels.py)."""
    torch.manual_seed(1)
    q = QuantLinear.from_weight(torch.randn(160, 256), Format("int4", 128))
    ops = cpu_kernels.int4_operands(quantize.unpack_int4_cpu(q.qweight, 160, 256), q.scales)
    assert ops is not None
    x = torch.randn(5, 256)
    exact = x.double() @ q.dequantized(torch.float64).T
    y = torch.from_numpy(cpu_int4.PackedWeight(256, 160, ops)(x.numpy()))
    assert (y.double() - exact).norm() / exact.norm() < 0.02


def test_zero_activations_give_zero():
    """An all-zero block has scale 0 and contributes exactly nothing (no 0/0); an all-zero
    row gives zeros."""
    ops = random_ops(8, 256)
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    x[0] = 0
    x[1, :128] = 0
    y = cpu_int4.PackedWeight(256, 8, ops)(x)
    assert np.all(np.isfinite(y)) and np.all(y[0] == 0)
    ref = reference(x, ops)
    assert np.abs(y[1] - ref[1]).max() <= 2e-6 * np.abs(ref[1]).max()


def test_same_bits_on_any_thread_count():
    """Each output is summed by one thread in one order: 1 and 2 threads agree bit for bit
    (the offload bit-identity tests rely on a kernel being deterministic)."""
    ops = random_ops(100, 512, seed=3)
    x = np.random.default_rng(3).standard_normal((6, 512)).astype(np.float32)
    one = cpu_int4.PackedWeight(512, 100, ops, threads=1)(x)
    two = cpu_int4.PackedWeight(512, 100, ops, threads=2)(x)
    assert np.array_equal(one, two)


def test_other_forms_and_bad_input_are_refused():
    """PackedWeight reads int4 with zero points and int8 without, in blocks of 128, and
    float32 (M, K); the per-matmul path (supports) hands it int4 only."""
    rng = np.random.default_rng(0)
    int8 = random_int8_ops(4, 128)
    assert cpu_int4.packs(int8) and not cpu_int4.supports(int8)
    block64 = (4, 64, rng.integers(0, 256, (4, 2, 32), dtype=np.uint8), np.ones(8, np.float32),
               np.zeros(4, np.uint8))
    int8_64 = (8, 64, rng.integers(0, 256, (4, 2, 64), dtype=np.uint8), np.ones(8, np.float32))
    int8_zp = (*int8, np.zeros(4, np.uint8))
    for ops in (block64, int8_64, int8_zp):
        assert not cpu_int4.supports(ops) and not cpu_int4.packs(ops)
        with pytest.raises(ValueError, match="blocks of 128"):
            cpu_int4.PackedWeight(128, 4, ops)
    w = cpu_int4.PackedWeight(128, 4, random_ops(4, 128))
    with pytest.raises(ValueError, match=r"shape \(M, 128\)"):
        w(np.ones((1, 256), np.float32))
    with pytest.raises(ValueError, match="float32"):
        w(np.ones((1, 128), np.float64))


@pytest.mark.skipif(not cpu_kernels.available(), reason="onnxruntime not installed")
def test_engine_picks_it_for_int4_128_only_and_the_variable_forces_mlas(monkeypatch):
    """NBitsMatMul / NBitsGatedMLP run int4 in blocks of 128 on this kernel; other blocks and
    int8 stay on MatMulNBits, and GROK_DESKTOP_INT4_KERNEL=mlas puts int4 back on it; the
    fused expert gives the same result either way."""
    ops = random_ops(256, 256, seed=5)
    assert cpu_kernels.NBitsMatMul(256, 256, ops).backend == "vnni"
    torch.manual_seed(0)
    q32 = QuantLinear.from_weight(torch.randn(64, 128), Format("int4", 32))
    ops32 = cpu_kernels.int4_operands(quantize.unpack_int4_cpu(q32.qweight, 64, 128), q32.scales)
    q8 = QuantLinear.from_weight(torch.randn(64, 128), Format("int8"))
    ops8 = cpu_kernels.int8_operands(q8.qweight, q8.scales)
    assert ops32 is not None and ops8 is not None
    assert cpu_kernels.NBitsMatMul(128, 64, ops32).backend == "mlas"
    assert cpu_kernels.NBitsMatMul(128, 64, ops8).backend == "mlas"
    gate, up, down = random_ops(512, 256, 6), random_ops(512, 256, 7), random_ops(256, 512, 8)
    fused = cpu_kernels.NBitsGatedMLP(256, 512, gate, up, down)
    x = torch.randn(3, 256)
    y = fused(x)
    monkeypatch.setenv(cpu_int4.ENV, "mlas")
    assert not cpu_int4.available()
    assert cpu_kernels.NBitsMatMul(256, 256, ops).backend == "mlas"
    mlas = cpu_kernels.NBitsGatedMLP(256, 512, gate, up, down)
    assert fused.backend == "vnni" and mlas.backend == "mlas"
    assert (y - mlas(x)).abs().max() <= 1e-5 * y.abs().max()


def test_compiled_before_the_first_weight_is_built(monkeypatch):
    """The kernels compile when the first weight on them is built (quantize.build_cpu_kernels
    at load), so the first token does not wait for numba."""
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "nbits")
    monkeypatch.setattr(cpu_int4, "_KERNELS", [])
    monkeypatch.setattr(cpu_int4, "_READY", [])
    torch.manual_seed(0)
    model = torch.nn.Sequential(QuantLinear.from_weight(torch.randn(64, 256), Format("int4", 128)))
    assert quantize.build_cpu_kernels(model) == 1
    assert cpu_int4._KERNELS, "not compiled at build time"
    assert quantize.nbits_kernel(model[0]).backend == "vnni"


@pytest.mark.skipif(not cpu_kernels.available(), reason="onnxruntime not installed")
def test_a_kernel_that_does_not_compile_falls_back_to_matmulnbits(monkeypatch, caplog):
    """If numba fails to compile the kernel (a broken install, a bundle without llvmlite's
    library), the weights run on MatMulNBits with one logged warning, not a failed load."""
    def broken() -> tuple:
        raise OSError("libllvmlite.so: cannot open shared object file")

    monkeypatch.setattr(cpu_int4, "_KERNELS", [])
    monkeypatch.setattr(cpu_int4, "_READY", [])
    monkeypatch.setattr(cpu_int4, "_build", broken)
    ops = random_ops(64, 256)
    with caplog.at_level("WARNING"):
        kernel = cpu_kernels.NBitsMatMul(256, 64, ops)
        again = cpu_kernels.NBitsMatMul(256, 64, ops)
    assert kernel.backend == again.backend == "mlas"
    warnings = [r for r in caplog.records if "did not compile" in r.getMessage()]
    assert len(warnings) == 1 and "libllvmlite.so" in warnings[0].getMessage()
    x = torch.randn(2, 256)
    assert torch.isfinite(kernel(x)).all()


def test_a_call_leaves_pytorchs_thread_count_alone():
    """numba's OpenMP layer shares PyTorch's OpenMP runtime, and its first parallel call reset
    the calling thread's count (1 -> 2: the model's glue ops then ran on two spinning threads).
    A fresh process, as the engine's: PyTorch at one thread stays at one."""
    code = (
        "import numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "from app.engine import cpu_int4\n"
        "rng = np.random.default_rng(0)\n"
        "ops = (4, 128, rng.integers(0, 256, (64, 2, 64), dtype=np.uint8),\n"
        "       np.ones(128, np.float32), np.zeros(64, np.uint8))\n"
        "w = cpu_int4.PackedWeight(256, 64, ops)\n"
        "for m in (64, 1, 5):\n"
        "    w(np.ones((m, 256), np.float32))\n"
        "    assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                         text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
