"""CPU int4 matmuls on AVX512-VNNI, compiled at run time by numba (LLVM): decode and prefill.
(The same kernel reads int8 codes, q + 128 with zero point 128 in the formula below: the
output head and int8 layers of cpu_step.py's compiled decode.)

The same arithmetic as onnxruntime's MatMulNBits at `accuracy_level=4` (MLAS "CompInt8",
cpu_kernels.py), on the same weights, streamed faster at one row (decode). Real-size expert
projections at one row, measured in one process against MatMulNBits
(`python bench/int4_kernels.py`): on two threads ~32-33 against ~23-24 GB/s (medians), on one
~24-25 against ~19-20; at 64 rows (prefill, compute-bound) MLAS is ~15% faster, both well
ahead of llama.cpp.

Weight semantics (exact, as MatMulNBits reads the operands cpu_kernels.int4_operands makes):
w[n, k] = (q[n, k] - zp[n, b]) * s[n, b], q and zp 4-bit unsigned, s fp32, b = k // 128.
Activations are quantized per token and block of 128 as MLAS does: scale a = max|x| / 127,
xq = round_half_even(x * (1/a)) int8 (0 for an all-zero block). Then per output

    y[m, n] = sum_b s[n, b] * a[m, b] * (sum_k q[n, k] * xq[m, k] - zp[n, b] * sum_k xq[m, k])

with the inner sums exact in int32 (VNNI `vpdpbusd`: unsigned 4-bit codes times signed int8)
and the outer sum in fp32 (within ~5e-7 relative of a float64 evaluation of this formula,
tests/engine/test_cpu_int4.py). MatMulNBits agrees to ~3e-7 at one row; its multi-row path
(16 rows and more of 8192-input weights) departs from the formula by ~1e-4.

Layout: rows in groups of ROWS = 4, each group's blocks interleaved (block, row, 64 bytes), so
the four rows a call computes are one sequential stream (separate streams per row read ~40%
slower); N is padded to a multiple of 4 with zero rows. Rows longer than CHUNK = 64 blocks are
stored and summed chunk by chunk (chunk, group, block, row, 64), so a pass's activations stay
in L1. Scales and zero points (one byte each, unpacked) follow the same order.

Threads: a call splits the row groups over `threads` numba threads (its OpenMP or TBB layer;
torch.get_num_threads() when the weight is built, as cpu_kernels' sessions take theirs).
Prefill computes TOKENS = 4 rows of x per pass over a group's weights (in L1/L2 by then).

`available()` is False without numba or without AVX512-VNNI (the kernel emits
llvm.x86.avx512.vpdpbusd.512), or when GROK_DESKTOP_INT4_KERNEL=mlas; cpu_kernels then uses
MatMulNBits. The kernels are compiled once per process, before the first weight is built
(`ready`, ~2 s; numba cannot cache a function that calls these intrinsics, so nothing is
written to disk); if that fails, int4 stays on MatMulNBits.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ROWS = 4  # weight rows per interleaved group (one sequential stream per kernel call)
CHUNK = 64  # blocks per chunk (8192 inputs): a longer row is summed in chunks, so the
# activations a pass reads stay in L1 (real-size 16384- and 32768-input rows on one thread:
# ~19 -> ~24 GB/s; the weights are stored chunk-major so each pass is one stream)
TOKENS = 4  # activation rows per pass over a group's weights (prefill)
BLOCK = 128  # weights per quantization block (the prepared int4 format's group)
ENV = "GROK_DESKTOP_INT4_KERNEL"  # "mlas": use onnxruntime's MatMulNBits instead

_LOCAL = threading.local()  # per Python thread: the numba thread count last set by use_threads
_AVAILABLE: list[bool] = []
_READY: list[bool] = []
_KERNELS: list[Any] = []


def available() -> bool:
    """Whether this kernel runs here: numba and llvmlite import, the CPU has AVX512F, BW and
    VNNI (as LLVM reports the host), and GROK_DESKTOP_INT4_KERNEL is not "mlas". Cached."""
    if os.environ.get(ENV, "").strip().lower() == "mlas":
        return False
    if not _AVAILABLE:
        try:
            from llvmlite import binding

            features = binding.get_host_cpu_features()
            ok = all(features.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))
            if ok:
                import numba  # noqa: F401
        except Exception:  # noqa: BLE001 - not installed, or a build without host queries
            ok = False
        _AVAILABLE.append(ok)
    return _AVAILABLE[0]


def ready() -> bool:
    """available(), and the kernels compiled and ran a tiny product (warm_up, ~2 s, once per
    process). A failure there (say, a bundle whose llvmlite cannot load its LLVM) is logged
    once and answers False, so int4 stays on MatMulNBits rather than failing the load."""
    if not available():
        return False
    if not _READY:
        try:
            warm_up()
            _READY.append(True)
        except Exception as exc:  # noqa: BLE001 - any compile or load failure: fall back
            log.warning("the AVX512-VNNI int4 kernel did not compile (%s: %s); int4 runs on "
                        "onnxruntime's MatMulNBits", type(exc).__name__, exc)
            _READY.append(False)
    return _READY[0]


def use_threads(n: int) -> None:
    """numba.set_num_threads(n) (at most numba's pool) for the calling thread, skipped when it
    is what this function last set on this thread: numba's count is per thread, and with the
    caches cold after a token's weights have streamed through them the call costs ~20 us."""
    if getattr(_LOCAL, "threads", None) != n:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        _LOCAL.threads = n


def supports(ops: tuple) -> bool:
    """Whether MatMulNBits operands `ops` (cpu_kernels.Operands) are int4 in blocks of 128
    with zero points: the form the per-matmul path (cpu_kernels) hands this kernel."""
    return len(ops) == 5 and ops[0] == 4 and ops[1] == BLOCK


def packs(ops: tuple) -> bool:
    """supports(ops), or int8 operands in blocks of 128 without zero points (cpu_kernels.
    int8_operands: codes q + 128, zero point 128): the forms PackedWeight and cpu_step read."""
    return supports(ops) or (len(ops) == 4 and ops[0] == 8 and ops[1] == BLOCK)


def pack(k: int, n: int, ops: tuple) -> tuple:
    """Repack MatMulNBits operands of an (N, K) weight for the kernel: (codes uint8, scales
    float32, zero points uint8 (one per row and block), groups = ceil(N / 4), blocks = K / 128,
    bits), the three arrays flat in the kernel's order (module docstring: chunk, group, block,
    row). int4 codes stay two per byte (64 bytes a block, low nibble the even k); int8 codes
    (q + 128, 128 bytes a block) are reordered within each block to the even k, then the odd
    k, as the activations are. Raises ValueError unless packs(ops) and K % 128 == 0."""
    if not packs(ops) or k % BLOCK:
        raise ValueError(f"the VNNI kernel takes int4 (with zero points) or int8 operands in "
                         f"blocks of {BLOCK}; got bits={ops[0]}, block={ops[1]}, K={k}")
    bits, blocks = ops[0], k // BLOCK
    if bits == 4:
        codes = np.asarray(ops[2]).reshape(n, blocks, BLOCK // 2)
        zp_bytes = np.asarray(ops[4]).reshape(n, -1)
        zp = np.empty((n, 2 * zp_bytes.shape[1]), np.uint8)
        zp[:, 0::2], zp[:, 1::2] = zp_bytes & 15, zp_bytes >> 4
        zp = zp[:, :blocks]
    else:
        c = np.asarray(ops[2]).reshape(n, blocks, BLOCK)
        codes = np.concatenate([c[..., 0::2], c[..., 1::2]], axis=-1)
        zp = np.full((n, blocks), 128, np.uint8)
    s = np.asarray(ops[3], dtype=np.float32).reshape(n, blocks)
    pad = -n % ROWS
    if pad:  # zero rows (scale 0): their outputs are dropped
        codes = np.concatenate([codes, np.zeros((pad, *codes.shape[1:]), np.uint8)])
        s = np.concatenate([s, np.zeros((pad, blocks), np.float32)])
        zp = np.concatenate([zp, np.zeros((pad, blocks), np.uint8)])
    groups = (n + pad) // ROWS

    def interleave(a: np.ndarray) -> np.ndarray:
        """(N, B, ...) -> flat, ordered (chunk of CHUNK blocks, group, block, row, ...)."""
        a = a.reshape(groups, ROWS, blocks, *a.shape[2:]).swapaxes(1, 2)
        return np.concatenate([a[:, c:c + CHUNK].reshape(-1)
                               for c in range(0, blocks, CHUNK)])

    return interleave(codes), interleave(s), interleave(zp), groups, blocks, bits


class PackedWeight:
    """One int4 (or int8) weight (N, K) repacked for the kernel; call with x (M, K) float32
    numpy -> y = x W^T (M, N) float32 numpy.

    Built from MatMulNBits operands: int4 (4, 128, packed (N, K/128, 64) uint8 low nibble
    first, scales fp32 (N*K/128,), zero points packed two per byte (N * ceil(K/256),)), or
    int8 (8, 128, codes q + 128 (N, K/128, 128) uint8, scales fp32 (N*K/128,)). Raises
    ValueError for any other form (`packs` says which), and a call raises ValueError for x
    that is not float32 of shape (M, K)."""

    def __init__(self, k: int, n: int, ops: tuple, threads: int | None = None) -> None:
        import torch

        self.codes, self.scales, self.zeros, self.groups, self.blocks, self.bits = pack(
            k, n, ops)
        self.k, self.n = k, n
        self.threads = max(1, threads if threads is not None else torch.get_num_threads())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        quantize, quantize_parallel, gemm = kernels()[:3]
        m = x.shape[0]
        if x.shape != (m, self.k) or x.dtype != np.float32:
            raise ValueError(f"expected float32 x of shape (M, {self.k}), got {x.dtype} "
                             f"{x.shape}")
        x = np.ascontiguousarray(x)
        xq = np.empty((m, self.k), np.int8)
        xscale = np.empty((m, self.blocks), np.float32)
        xsum = np.empty((m, self.blocks), np.float32)
        torch_threads = torch.get_num_threads()
        use_threads(self.threads)
        (quantize_parallel if m > 1 else quantize)(x, xq, xscale, xsum)
        y = np.zeros((m, self.groups * ROWS), np.float32)  # the chunks add into it
        gemm(self.codes, self.scales, self.zeros, xq, xscale, xsum, y, self.groups,
             self.bits)
        if torch.get_num_threads() != torch_threads:
            # numba's OpenMP layer shares PyTorch's OpenMP runtime, and starting its pool
            # can reset the calling thread's thread count (seen: 1 -> 2): put it back
            torch.set_num_threads(torch_threads)
        return y[:, :self.n] if y.shape[1] != self.n else y


def warm_up() -> None:
    """Compile the kernels now (a tiny weight at one and at two rows), so that the first
    token does not wait ~2 s for numba (`ready` calls it before the first weight is built).
    No-op when the kernel does not run here; raises what numba raises if compiling fails."""
    if not available():
        return
    rng = np.random.default_rng(0)
    ops = (4, BLOCK, rng.integers(0, 256, (4, 1, BLOCK // 2), dtype=np.uint8),
           np.ones(4, np.float32), np.zeros(4, np.uint8))
    weight = PackedWeight(BLOCK, 4, ops, threads=1)
    for m in (1, 2):
        weight(np.ones((m, BLOCK), np.float32))


def kernels() -> tuple:
    """(quantize, quantize_parallel, gemm, quantize_block, group_dot), compiled on first use
    (numba; ~2 s). quantize_block and group_dot are for other numba code (cpu_step.py)."""
    if not _KERNELS:
        _KERNELS.append(_build())
    return _KERNELS[0]


def _build() -> tuple:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
    v64i8, v16i32, v16f = ir.VectorType(i8, 64), ir.VectorType(i32, 16), ir.VectorType(f32, 16)

    def rows_dot(tokens: int, bits: int) -> Any:
        """An intrinsic adding ROWS outputs' share of `nblk` blocks for `tokens` activation
        rows of `bits`-bit codes (4: 64 bytes a block and row, 8: 128): args are addresses (int64) of the (chunk, group)'s codes, scales and zero
        points, of the first token's int8 activations at the chunk's first block (arranged as
        in quantize), activation scales and sums, and of y[m0, n0]; then the block count, y's
        row length N and the activations' blocks per token."""

        @intrinsic
        def dot(typingctx: Any, w: Any, s: Any, z: Any, x: Any, sx: Any, xs: Any, y: Any,
                nblk: Any, n: Any, xstride: Any) -> Any:
            sig = types.void(*([types.int64] * 10))

            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                w_a, s_a, z_a, x_a, sx_a, xs_a, y_a, nb_, n_, xst_ = args
                mod = builder.module
                vnni = cgutils.get_or_insert_function(
                    mod, ir.FunctionType(v16i32, [v16i32] * 3), "llvm.x86.avx512.vpdpbusd.512")
                hsum = cgutils.get_or_insert_function(
                    mod, ir.FunctionType(f32, [f32, v16f]), "llvm.vector.reduce.fadd.v16f32")
                fma = cgutils.get_or_insert_function(
                    mod, ir.FunctionType(v16f, [v16f] * 3), "llvm.fma.v16f32")

                def c(v: int) -> Any:
                    return ir.Constant(i64, v)

                wp = builder.inttoptr(w_a, v64i8.as_pointer())
                xp = builder.inttoptr(x_a, v64i8.as_pointer())
                sp = builder.inttoptr(s_a, f32.as_pointer())
                zp = builder.inttoptr(z_a, i8.as_pointer())
                sxp = builder.inttoptr(sx_a, f32.as_pointer())
                xsp = builder.inttoptr(xs_a, f32.as_pointer())
                yp = builder.inttoptr(y_a, f32.as_pointer())
                low, four = ir.Constant(v64i8, [15] * 64), ir.Constant(v64i8, [4] * 64)
                zero_i, zero_f = ir.Constant(v16i32, None), ir.Constant(v16f, None)
                lanes0 = ir.Constant(v16i32, [0] * 16)
                # per (row, token): a 16-lane fp32 sum of scaled block dots, and the zero
                # points' scalar term (promoted to registers by LLVM)
                acc = [[cgutils.alloca_once_value(builder, zero_f) for _ in range(tokens)]
                       for _ in range(ROWS)]
                corr = [[cgutils.alloca_once_value(builder, ir.Constant(f32, 0.0))
                         for _ in range(tokens)] for _ in range(ROWS)]
                with cgutils.for_range(builder, nb_) as loop:
                    b = loop.index
                    x_even, x_odd, a_s, a_sum = [], [], [], []
                    for t in range(tokens):
                        tb = builder.add(builder.mul(c(t), xst_), b)  # token t, block b
                        x_even.append(builder.bitcast(builder.load(
                            builder.gep(xp, [builder.mul(tb, c(2))]), align=1), v16i32))
                        x_odd.append(builder.bitcast(builder.load(
                            builder.gep(xp, [builder.add(builder.mul(tb, c(2)), c(1))]),
                            align=1), v16i32))
                        a_s.append(builder.load(builder.gep(sxp, [tb])))
                        a_sum.append(builder.load(builder.gep(xsp, [tb])))
                    for r in range(ROWS):
                        idx = builder.add(builder.mul(b, c(ROWS)), c(r))
                        if bits == 4:
                            packed = builder.load(builder.gep(wp, [idx]), align=1)  # 128 codes
                            lo = builder.bitcast(builder.and_(packed, low), v16i32)  # even k
                            hi = builder.bitcast(builder.lshr(packed, four), v16i32)  # odd k
                        else:  # 8 bits: the even k's 64 codes, then the odd k's
                            two = builder.mul(idx, c(2))
                            lo = builder.bitcast(builder.load(builder.gep(wp, [two]), align=1),
                                                 v16i32)
                            hi = builder.bitcast(builder.load(builder.gep(
                                wp, [builder.add(two, c(1))]), align=1), v16i32)
                        sw = builder.load(builder.gep(sp, [idx]))
                        szp = builder.fmul(sw, builder.uitofp(
                            builder.load(builder.gep(zp, [idx])), f32))
                        for t in range(tokens):
                            dot_i = builder.call(vnni, [zero_i, lo, x_even[t]])
                            dot_i = builder.call(vnni, [dot_i, hi, x_odd[t]])  # (16,) int32
                            scale = builder.insert_element(
                                ir.Constant(v16f, ir.Undefined),
                                builder.fmul(sw, a_s[t]), ir.Constant(i32, 0))
                            scale = builder.shuffle_vector(
                                scale, ir.Constant(v16f, ir.Undefined), lanes0)
                            builder.store(builder.call(fma, [
                                builder.sitofp(dot_i, v16f), scale,
                                builder.load(acc[r][t])]), acc[r][t])
                            builder.store(builder.fadd(builder.load(corr[r][t]), builder.fmul(
                                szp, builder.fmul(a_s[t], a_sum[t]))), corr[r][t])
                for r in range(ROWS):
                    for t in range(tokens):
                        total = builder.call(hsum, [ir.Constant(f32, 0.0),
                                                    builder.load(acc[r][t])])
                        out = builder.gep(yp, [builder.add(builder.mul(c(t), n_), c(r))])
                        builder.store(builder.fadd(builder.load(out), builder.fsub(
                            total, builder.load(corr[r][t]))), out)  # y += this chunk
                return context.get_dummy_value()

            return sig, codegen

        return dot

    dot1, dot_tokens = rows_dot(1, 4), rows_dot(TOKENS, 4)
    dot1_8, dot_tokens_8 = rows_dot(1, 8), rows_dot(TOKENS, 8)

    def quantize_body(x: Any, xq: Any, sx: Any, xs: Any, i: int) -> None:
        blocks = x.shape[1] // 128
        m = i // blocks
        b = i - m * blocks
        o = b * 128
        amax = np.float32(0)
        for j in range(128):
            amax = max(amax, abs(x[m, o + j]))
        scale = amax / np.float32(127)
        inv = np.float32(1) / scale if amax > 0 else np.float32(0)
        total = 0
        for j in range(64):  # block layout: the 64 even-k values, then the 64 odd-k ones
            q_even = np.int8(np.rint(x[m, o + 2 * j] * inv))
            q_odd = np.int8(np.rint(x[m, o + 2 * j + 1] * inv))
            xq[m, o + j] = q_even
            xq[m, o + 64 + j] = q_odd
            total += np.int32(q_even) + np.int32(q_odd)
        sx[m, b] = scale
        xs[m, b] = np.float32(total)

    body = njit(boundscheck=False)(quantize_body)

    @njit(boundscheck=False)
    def quantize(x: Any, xq: Any, sx: Any, xs: Any) -> None:
        for i in range(x.shape[0] * (x.shape[1] // 128)):
            body(x, xq, sx, xs, i)

    @njit(boundscheck=False, parallel=True)
    def quantize_parallel(x: Any, xq: Any, sx: Any, xs: Any) -> None:
        for i in prange(x.shape[0] * (x.shape[1] // 128)):
            body(x, xq, sx, xs, i)

    @njit(boundscheck=False)
    def group_dot(w0: int, s0: int, z0: int, x0: int, sx0: int, xs0: int, y0: int,
                  groups: int, blocks: int, bits: int, tokens: int, g0: int, g1: int) -> None:
        """Row groups g0..g1-1 of one packed weight (addresses w0, s0, z0) for `tokens`
        activation rows (x0, sx0, xs0 as quantize leaves them), added into y (address y0,
        tokens x groups * ROWS float32), chunk after chunk."""
        n = groups * ROWS
        width = 16 * bits  # bytes a block and row
        for c0 in range(0, blocks, CHUNK):
            span = min(CHUNK, blocks - c0)
            for g in range(g0, g1):
                r = g * ROWS
                e = (c0 * groups + g * span) * ROWS  # (chunk, group)'s first (block, row)
                wg, sg, zg = w0 + e * width, s0 + e * 4, z0 + e
                m = 0
                while m + TOKENS <= tokens:
                    o = m * blocks + c0
                    if bits == 4:
                        dot_tokens(wg, sg, zg, x0 + o * 128, sx0 + o * 4, xs0 + o * 4,
                                   y0 + (m * n + r) * 4, span, n, blocks)
                    else:
                        dot_tokens_8(wg, sg, zg, x0 + o * 128, sx0 + o * 4, xs0 + o * 4,
                                     y0 + (m * n + r) * 4, span, n, blocks)
                    m += TOKENS
                while m < tokens:
                    o = m * blocks + c0
                    if bits == 4:
                        dot1(wg, sg, zg, x0 + o * 128, sx0 + o * 4, xs0 + o * 4,
                             y0 + (m * n + r) * 4, span, n, blocks)
                    else:
                        dot1_8(wg, sg, zg, x0 + o * 128, sx0 + o * 4, xs0 + o * 4,
                               y0 + (m * n + r) * 4, span, n, blocks)
                    m += 1

    @njit(boundscheck=False, parallel=True)
    def gemm(w: Any, s: Any, z: Any, xq: Any, sx: Any, xs: Any, y: Any, groups: int,
             bits: int) -> None:
        threads = numba.get_num_threads()
        w0, s0, z0 = w.ctypes.data, s.ctypes.data, z.ctypes.data
        x0, sx0, xs0, y0 = xq.ctypes.data, sx.ctypes.data, xs.ctypes.data, y.ctypes.data
        for t in prange(threads):  # each thread: its row groups, chunk after chunk
            group_dot(w0, s0, z0, x0, sx0, xs0, y0, groups, sx.shape[1], bits, xq.shape[0],
                      t * groups // threads, (t + 1) * groups // threads)

    return quantize, quantize_parallel, gemm, body, group_dot
