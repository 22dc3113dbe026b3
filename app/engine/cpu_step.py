"""A whole decode step (one token through a group of decoder layers, and the output head) as
one numba-compiled function, on cpu_int4's AVX512-VNNI kernels: what cpu_graph.CpuGraph runs
for a single new token where that kernel runs.

Why: the layer graph (cpu_graph.py) spends ~20-30% of a mid-size decode token outside its
matmuls, in ~450 onnxruntime nodes (a few microseconds each once the weights have streamed
through the caches) and 64 `If`s for the experts (bench/README.md, graph_share.py). Here the
same token is one call: the glue between the matmuls (norms, RoPE, attention over the KV cache,
router, top-k, GELU) is compiled loops, the matmuls are cpu_int4's kernels on numba's threads
(a parallel region costs ~1 us), and only the chosen experts' weights are touched, without a
node per expert.

Numerics: the graph's, step by step (so, model.py's and SGLang's formula with MatMulNBits'
arithmetic: exact weight semantics, activations quantized to int8 per block of 128 in the dot
products, cpu_int4.py), with every value between the matmuls in float32 as in the graph; the
norms' mean square and the softmaxes' sums are accumulated in float64; exp, tanh and GELU's
erf are the step's own vectorizable arithmetic (within 1e-9, 1e-9 and 3e-7). On the test models
the step and the graph agree to float32 rounding, except where a rounding difference moves an
activation across an int8 rounding boundary (tests/engine/test_cpu_step.py); the random
mid-size model amplifies any such difference, so there the next-token KL against bf16 is the
measure (bench/mid_kl.py: equal). Prefill (more than one token) stays on the graph, whose
MatMulNBits is faster for many rows (compute-bound). Compiling takes ~10 s when the graph is
built (docs/architecture.md, "CPU kernels": the costs).

Layout: every matrix of the group is packed (cpu_int4.pack) into one codes array, one scales
array and one zero-point array, with a table of offsets (`mats`, one row per matrix: codes,
scales and zero-point offsets, groups, blocks, bits); per layer, in this order: q|k|v stacked,
o, gate|up stacked, down, then per expert w1|w3 stacked and w2; the head last. Norm weights and
the router (already divided by its soft cap, as in the graph) are float32 in one array.
The KV cache is the model's float32 cache, read and written in place (numpy views).

Shapes: D hidden, H query heads, K kv heads, G = H/K, Dh head dim, E experts, V vocab.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# names from cpu_int4, not `from app.engine import cpu_int4`: that names the package, which
# imports the engine, which imports this module (tests/test_layering.py: no import cycles)
from app.engine.cpu_int4 import BLOCK, ROWS, pack, packs, ready, use_threads
from app.engine.cpu_int4 import available as int4_available
from app.engine.cpu_int4 import kernels as int4_kernels

ATTENTION_SPAN = 256  # cached keys per attention part (parts spread over the threads)
PER_LAYER = 4  # matrices before the experts' (qkv, o, gate|up, down); then 2 per expert
_STEP: list[Any] = []
_GLUE: list[Any] = []


def available() -> bool:
    """Whether a step can be built here: cpu_int4's kernels compile and run (cpu_int4.ready;
    the first call compiles them, ~2-3 s)."""
    return ready()


def readable(cfg: Any, ops: list[dict], head_ops: tuple | None) -> bool:
    """Whether every matrix of these layers (cpu_graph.layer_operands dicts) and the head is
    in a form the step's kernels read (cpu_int4.packs: int4 with zero points or int8, blocks
    of 128) with inputs a multiple of 128, on a CPU where they can run (cpu_int4.available).
    Cheap: nothing is compiled or copied, so a model that cannot use the step (the tiny demo
    model, hidden 64) pays nothing for it."""
    if not int4_available():
        return False
    inputs = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size,
              cfg.moe_intermediate_size)
    if any(k % BLOCK for k in inputs):
        return False
    parts = [o for layer in ops for o in layer.values()]
    parts += [head_ops] if head_ops is not None else []
    return all(o is not None and packs(o) for o in parts)


class DecodeStep:
    """Layers start..end-1 of a Grok2 (and, with head_ops, the final norm, output head and
    logit soft cap) for one token, from the MatMulNBits operands cpu_graph.layer_operands gives
    (`ops`, one dict per layer) and head_ops (cpu_graph.head_operands or None). Building it
    raises ValueError when some operand is not a form cpu_int4 packs (int4 in blocks of 128
    with zero points, int8 in blocks of 128; `readable` says so beforehand): callers then keep
    the graph. `threads`: numba threads of every call (at most numba's pool), fixed here as
    the graph's onnxruntime threads are.

    Call with h (D,) float32 numpy (the input hidden state), the token's position pos, the
    float32 KV cache as C-contiguous numpy (layers, K, max_len, Dh) keys and values (this
    group's layers are written at `pos`, positions 0..pos-1 read), and model.rope_table's
    cos/sin (P, Dh/2) float32 with P > pos -> logits (V,) float32 (soft-capped) with the head,
    else the output hidden state (D,) float32. A call raises ValueError for a position outside
    the cache (one line, as the eager path's) and for arrays of another shape, dtype or layout
    (checked before the compiled code reads them; nothing is written then)."""

    def __init__(self, model: Any, start: int, end: int, ops: list[dict],
                 head_ops: tuple | None, threads: int) -> None:
        from app.engine.cpu_kernels import stack_operands

        cfg = model.config
        layers = model.model.layers
        d, h, kv, dh = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                        cfg.head_dim)
        inter, moe_inter, e_ = (cfg.intermediate_size, cfg.moe_intermediate_size,
                                cfg.num_local_experts)
        # (K, N, operands) of every matrix, in the `mats` order (module docstring)
        mats: list[tuple[int, int, Any]] = []
        for layer_ops in ops:
            mats.append((d, (h + 2 * kv) * dh,
                         stack_operands([layer_ops["q"], layer_ops["k"], layer_ops["v"]])))
            mats.append((h * dh, d, layer_ops["o"]))
            mats.append((d, 2 * inter, stack_operands([layer_ops["gate"], layer_ops["up"]])))
            mats.append((inter, d, layer_ops["down"]))
            for e in range(e_):
                mats.append((d, 2 * moe_inter,
                             stack_operands([layer_ops[f"w1.{e}"], layer_ops[f"w3.{e}"]])))
                mats.append((moe_inter, d, layer_ops[f"w2.{e}"]))
        if head_ops is not None:
            mats.append((d, cfg.vocab_size, head_ops))
        for k, _, o in mats:
            if o is None or not packs(o) or k % BLOCK:
                raise ValueError("a matrix of this layer group is not in a form cpu_int4 packs")
        # sizes first, so the packed copies are written into one array each (the peak is
        # those arrays and one matrix's temporary repack, not twice the weights)
        table = np.zeros((len(mats), 6), np.int64)
        w_total = s_total = 0
        for i, (k, n, o) in enumerate(mats):
            groups, blocks, bits = -(-n // ROWS), k // BLOCK, o[0]
            cells = groups * ROWS * blocks  # (row, block) pairs, rows padded
            table[i] = (w_total, s_total, s_total, groups, blocks, bits)
            w_total += cells * 16 * bits
            s_total += cells
        self.codes = np.empty(w_total, np.uint8)
        self.scales = np.empty(s_total, np.float32)
        self.zeros = np.empty(s_total, np.uint8)
        for i, (k, n, o) in enumerate(mats):
            codes, scales, zeros, *_ = pack(k, n, o)
            w0, s0 = int(table[i, 0]), int(table[i, 1])
            self.codes[w0:w0 + codes.size] = codes
            self.scales[s0:s0 + scales.size] = scales
            self.zeros[s0:s0 + zeros.size] = zeros
            mats[i] = (k, n, None)  # drop the stacked operands as we go
        self.mats = table
        # norm weights and router, float32: per layer pre-attn, post-attn, pre-moe, post-moe
        # (D each), router (E, D) / its soft cap; then the final norm
        params, offsets, at = [], np.zeros((end - start + 1, 5), np.int64), 0
        cap = cfg.router_logit_softcapping
        for row, i in enumerate(range(start, end)):
            layer = layers[i]
            parts = [layer.pre_attn_norm.weight, layer.post_attn_norm.weight,
                     layer.pre_moe_norm.weight, layer.post_moe_norm.weight]
            arrays = [p.detach().float().numpy().reshape(-1) for p in parts]
            arrays.append((layer.block_sparse_moe.gate.weight.detach().float() / cap)
                          .numpy().reshape(-1))  # (E, D)
            for j, a in enumerate(arrays):
                offsets[row, j] = at
                params.append(a)
                at += a.size
        offsets[end - start, 0] = at
        params.append(model.model.norm.weight.detach().float().numpy().reshape(-1))
        self.params = np.concatenate(params).astype(np.float32)
        self.offsets = offsets
        # the compiled step's sizes and constants, read by index in decode(): ints =
        # [layers, D, H, K, Dh, dense hidden, expert hidden, E, top-k, temperature length,
        # has head, V]; floats = [norm eps, 1 / (sqrt(Dh) * attention cap), attention cap,
        # router cap, final cap, combine scale, output multiplier]
        self.ints = np.array([end - start, d, h, kv, dh, inter, moe_inter, e_,
                              cfg.num_experts_per_tok, cfg.attn_temperature_len,
                              int(head_ops is not None), cfg.vocab_size], np.int64)
        self.floats = np.array([cfg.rms_norm_eps, dh ** -0.5 / cfg.attn_logit_softcapping,
                                cfg.attn_logit_softcapping, cap, cfg.final_logit_softcapping,
                                cfg.moe_combine_scale, cfg.output_multiplier_scale],
                               np.float64)
        self.start = start
        self.out_size = cfg.vocab_size if head_ops is not None else d
        self.threads = max(1, threads)
        # CPU cycles, summed over calls: [in the matrix products, in the whole step] (the
        # products' share of a token: bench/step_share.py)
        self.clock = np.zeros(2, np.int64)
        self.embedding: Any = None  # embed_from
        self.embed_bits: np.ndarray | None = None
        self.embed_scale = 1.0
        self._checked: tuple = (None,) * 4  # the cache and RoPE arrays _check passed

    def __call__(self, h: np.ndarray, pos: int, cache_k: np.ndarray, cache_v: np.ndarray,
                 cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(h, np.float32)
        if h.shape != (int(self.ints[1]),):
            raise ValueError(f"the hidden state must be ({self.ints[1]},), got {h.shape}")
        return self._run(h, None, pos, cache_k, cache_v, cos, sin)

    def _check(self, pos: int, cache_k: np.ndarray, cache_v: np.ndarray, cos: np.ndarray,
               sin: np.ndarray) -> None:
        """ValueError unless the position is inside the cache and the RoPE tables, and the
        arrays are what the compiled code indexes without bounds checks. Arrays that passed
        are not checked again (after a token, each Python op costs microseconds)."""
        if not 0 <= pos < cache_k.shape[2]:
            raise ValueError(f"context of {pos + 1} tokens exceeds the cache's "
                             f"{cache_k.shape[2]}" if pos >= 0 else
                             f"position {pos} is negative")
        last = self._checked
        if not (last[0] is cache_k and last[1] is cache_v and last[2] is cos
                and last[3] is sin):
            layers, kv, dh = (self.start + int(self.ints[0]), int(self.ints[3]),
                              int(self.ints[4]))
            for name, c in (("keys", cache_k), ("values", cache_v)):
                if (c.dtype != np.float32 or not c.flags.c_contiguous or c.ndim != 4
                        or c.shape[0] < layers or c.shape[1:] != (kv, cache_k.shape[2], dh)):
                    raise ValueError(f"the cached {name} must be C-contiguous float32 (>= "
                                     f"{layers}, {kv}, max_len, {dh}), got {c.dtype} "
                                     f"{c.shape}")
            for name, t in (("cos", cos), ("sin", sin)):
                if (t.dtype != np.float32 or not t.flags.c_contiguous or t.ndim != 2
                        or t.shape != cos.shape or t.shape[1] != dh // 2):
                    raise ValueError(f"the RoPE {name} table must be C-contiguous float32 "
                                     f"(P, {dh // 2}), got {t.dtype} {t.shape}")
            self._checked = (cache_k, cache_v, cos, sin)
        if pos >= cos.shape[0]:
            raise ValueError(f"the RoPE table has {cos.shape[0]} positions; position {pos} "
                             "needs more")

    def embed_from(self, weight: Any, scale: float) -> bool:
        """Let `token` look up the hidden state itself from the embedding `weight` (V, D) (a
        CPU bf16 tensor; kept as a view, not copied): h = bf16(weight[id] * scale), rounded
        as PyTorch's bf16 product is (float32 product, round half to even). Returns whether
        it can (False for other dtypes and devices, or another vocabulary or width)."""
        import torch

        ok = (isinstance(weight, torch.Tensor) and weight.dtype == torch.bfloat16
              and weight.device.type == "cpu" and weight.dim() == 2
              and weight.shape[1] == self.ints[1] and weight.is_contiguous())
        self.embedding = weight if ok else None
        self.embed_bits = weight.detach().view(torch.int16).numpy() if ok else None
        self.embed_scale = float(scale)
        return ok

    def token(self, ids: np.ndarray, pos: int, cache_k: np.ndarray, cache_v: np.ndarray,
              cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """As a call, for token ids (1, 1) int64 (embedded in the step; embed_from first).
        Raises ValueError for an id outside the vocabulary."""
        assert self.embed_bits is not None
        if ids.shape != (1, 1) or ids.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers of shape (1, 1), got {ids.dtype} "
                             f"{ids.shape}")
        token = int(ids[0, 0])
        if not 0 <= token < self.embed_bits.shape[0]:
            raise ValueError(f"token id {token} is outside the vocabulary "
                             f"(0..{self.embed_bits.shape[0] - 1})")
        return self._run(None, token, pos, cache_k, cache_v, cos, sin)

    def _run(self, h: np.ndarray | None, token: int | None, pos: int, cache_k: np.ndarray,
             cache_v: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        import torch

        self._check(pos, cache_k, cache_v, cos, sin)
        out = np.empty(self.out_size, np.float32)
        torch_threads = torch.get_num_threads()
        use_threads(self.threads)
        compiled = kernels()
        args = (pos, self.start, self.codes, self.scales, self.zeros, self.mats, self.params,
                self.offsets, self.ints, self.floats, cache_k, cache_v, cos, sin, out,
                self.clock)
        if token is None:
            compiled.decode(h, *args)
        else:
            compiled.decode_token(token, self.embed_bits, self.embed_scale, *args)
        if torch.get_num_threads() != torch_threads:  # as cpu_int4.PackedWeight's call
            torch.set_num_threads(torch_threads)
        return out


def kernels() -> Any:
    """The compiled functions (numba dispatchers; compiled on first use, a few seconds), by
    name: decode (the step from a hidden state), decode_token (from a token id), matvec (one
    packed matrix times a vector), the helpers gelu_mul, exp, tanh (tested on their own),
    and counter() (the cycle counter DecodeStep.clock counts in)."""
    if not _STEP:
        _STEP.append(_build())
    return _STEP[0]


def glue() -> Any:
    """The compiled helpers the quantized step here and the bf16 step (cpu_bf16.py) share
    (numba dispatchers and intrinsics; each compiles on first use): cycles() (the cycle
    counter), pow2, f32_from_bits, bits_of_f32, widen (float32 of a float32 or of bf16 bits),
    bf16 (a float32 rounded to bf16 as PyTorch rounds), exp, tanh, rms_norm, router,
    softmax_top_k, attend (attention of one token over a float32 or bf16 KV cache) and
    counter() (cycles() from Python). Needs numba only (no AVX512-VNNI)."""
    if not _GLUE:
        _GLUE.append(_build_glue())
    return _GLUE[0]


def _build_glue() -> Any:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def lowered(codegen_of: Any) -> Any:
        """numba.extending.intrinsic (a function whose body is LLVM IR, inlined into the
        compiled code that calls it), typed Any for the type checker."""
        return intrinsic(codegen_of)

    @lowered
    def cycles(typingctx: Any) -> Any:
        """The CPU's cycle counter (llvm.readcyclecounter: rdtsc on x86), for `clock`."""
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.readcyclecounter")
            return builder.call(fn, [])

        return types.int64(), codegen

    @lowered
    def pow2(typingctx: Any, n: Any) -> Any:
        """2.0 ** n as float64 for an int64 n in -1022..1023, by building its bits."""
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i64 = ir.IntType(64)
            bits = builder.shl(builder.add(args[0], ir.Constant(i64, 1023)), ir.Constant(i64, 52))
            return builder.bitcast(bits, ir.DoubleType())

        return types.float64(types.int64), codegen

    @lowered
    def f32_from_bits(typingctx: Any, b: Any) -> Any:
        """The float32 whose bits are the int32 b."""
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    @lowered
    def bits_of_f32(typingctx: Any, x: Any) -> Any:
        """The bits of the float32 x, as an int32."""
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(types.float32), codegen

    @njit(boundscheck=False, error_model="numpy", fastmath={"contract"})
    def exp(x: float) -> float:
        """e ** x in float64 to ~1e-10 relative (x clamped to +-700): 2^n e^r, n the nearest
        integer to x / ln 2, |r| <= ln 2 / 2, e^r by its Taylor series to r^9. Plain
        arithmetic and bits, so loops calling it vectorize (libm's exp and tanh took ~13 ns a
        call: the soft-capped head alone ~0.2 ms a token); every result is used in float32."""
        x = min(max(x, -700.0), 700.0)
        n = np.floor(x * 1.4426950408889634 + 0.5)
        r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10  # ln 2, hi + lo
        p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
            1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880)))))))))
        return p * pow2(np.int64(n))

    @njit(boundscheck=False, error_model="numpy", fastmath={"contract"})
    def tanh(x: float) -> float:
        """tanh(x) = sign(x) (1 - 2 / (e^(2|x|) + 1)), float64 (exp's accuracy)."""
        t = 1.0 - 2.0 / (exp(2.0 * abs(x)) + 1.0)
        return t if x >= 0 else -t

    @lowered
    def widen(typingctx: Any, x: Any) -> Any:
        """x as float32: a float32 as is; an int16 or uint16 as the bf16 whose bits it holds
        (the bits shifted into a float32's upper half: exact). So the attention reads a
        float32 KV cache (the graph's) and a bf16 one (cpu_bf16.py, as int16 bits) alike."""
        if x == types.float32:
            return types.float32(x), lambda context, builder, signature, args: args[0]
        if x not in (types.int16, types.uint16):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i32 = ir.IntType(32)
            wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
            return builder.bitcast(wide, ir.FloatType())

        return types.float32(x), codegen

    @njit(boundscheck=False, error_model="numpy", inline="always")
    def bf16(x: Any) -> Any:
        """float32 x rounded half to even to bf16 (PyTorch's float -> bfloat16; NaN kept),
        as a float32."""
        if np.isnan(x):
            return np.float32(x)
        b = bits_of_f32(np.float32(x))
        return f32_from_bits(np.int32((b + 0x7FFF + ((b >> 16) & 1)) & -65536))

    @njit(boundscheck=False, error_model="numpy", fastmath={"reassoc", "contract"})
    def rms_norm(x: Any, p: Any, at: int, eps: float, out: Any) -> None:
        """out = x / sqrt(mean(x^2) + eps) * w, w = p[at:at+D] (model.RMSNorm)."""
        total = 0.0
        for i in range(x.size):
            total += np.float64(x[i]) * x[i]
        r = np.float32(1.0 / math.sqrt(total / x.size + eps))
        for i in range(x.size):
            out[i] = (x[i] * r) * p[at + i]

    @njit(boundscheck=False, error_model="numpy", fastmath={"reassoc", "contract"})
    def router(m: Any, p: Any, at: int, logits: Any) -> None:
        """logits[e] = m . R[e] in float32 (R = p[at:], (E, D) row-major, already / cap)."""
        d = m.size
        for e in range(logits.size):
            acc = np.float32(0.0)
            for i in range(d):
                acc += m[i] * p[at + e * d + i]
            logits[e] = acc

    @njit(boundscheck=False, error_model="numpy", fastmath={"reassoc", "contract"})
    def attend_span(q: Any, ck: Any, cv: Any, lay: int, kh: int, j0: int, j1: int, dh: int,
                    alpha: float, cap_temp: float, scores: Any, acc: Any, stats: Any) -> None:
        """One kv head's G queries q (G*Dh,) against its cached keys j0..j1-1 of cache layer
        `lay`: scores q.k * alpha, cap * temperature * tanh(.); per query its largest score
        m and sum l of exp(score - m) (stats (G, 2) float64) and acc (G*Dh,) = sum of
        exp(score - m) v. Each key and value is read once for the G queries; every inner loop
        is over contiguous float32 (or bf16 bits, widened), so it vectorizes."""
        g_ = stats.shape[0]
        n = j1 - j0
        for j in range(n):
            key = ck[lay, kh, j0 + j]  # (Dh,)
            for g in range(g_):
                dot = np.float32(0.0)
                for c in range(dh):
                    dot += q[g * dh + c] * widen(key[c])
                scores[g, j] = dot
        for g in range(g_):
            row = scores[g]
            for j in range(n):
                row[j] = np.float32(tanh(row[j] * alpha)) * np.float32(cap_temp)
            top = row[0]
            for j in range(1, n):
                top = max(top, row[j])
            total = 0.0
            for j in range(n):
                e = np.float32(exp(row[j] - top))
                row[j] = e
                total += e
            stats[g, 0], stats[g, 1] = top, total
        acc[:] = 0.0
        for j in range(n):
            value = cv[lay, kh, j0 + j]  # (Dh,)
            for g in range(g_):
                pj = scores[g, j]
                for c in range(dh):
                    acc[g * dh + c] += pj * widen(value[c])

    @njit(boundscheck=False, error_model="numpy", parallel=True)
    def attend(qkv: Any, pos: int, lay: int, ck: Any, cv: Any, heads: int, kv: int, dh: int,
               alpha: float, cap_temp: float, out: Any) -> None:
        """Attention of one token's q (heads in qkv, head h = kv head * G + g) to keys and
        values 0..pos of cache layer `lay` (RoPE'd keys written already): scores q.k * alpha
        (1/(sqrt(Dh) * cap)), cap * temperature * tanh(.), softmax, sum of p * v -> out
        (1, H*Dh). The keys are taken in spans of ATTENTION_SPAN, spread over the threads,
        and the spans' partial softmaxes merged in span order (as flash-decoding does); when
        there are fewer spans than threads (short contexts), each span's query heads are also
        split into two halves, each half reading the span's keys. Neither split changes any
        head's arithmetic (the spans depend on the position only), so the bits do not depend
        on the thread count."""
        g_ = heads // kv
        span = pos + 1
        parts = (span + ATTENTION_SPAN - 1) // ATTENTION_SPAN
        halves = 2 if kv * parts < numba.get_num_threads() and g_ % 2 == 0 else 1
        gs = g_ // halves  # query heads per task
        accs = np.empty((kv, parts, g_ * dh), np.float32)
        stats = np.empty((kv, parts, g_, 2), np.float64)
        for i in prange(kv * parts * halves):
            kh, rest = i // (parts * halves), i % (parts * halves)
            c, half = rest // halves, rest % halves
            j0, g0 = c * ATTENTION_SPAN, half * gs
            scores = np.empty((gs, ATTENTION_SPAN), np.float32)
            q0 = (kh * g_ + g0) * dh
            attend_span(qkv[q0:q0 + gs * dh], ck, cv, lay, kh, j0,
                        min(span, j0 + ATTENTION_SPAN), dh, alpha, cap_temp, scores,
                        accs[kh, c, g0 * dh:(g0 + gs) * dh], stats[kh, c, g0:g0 + gs])
        for kh in range(kv):
            for g in range(g_):
                top = stats[kh, 0, g, 0]
                for c in range(1, parts):
                    top = max(top, stats[kh, c, g, 0])
                total = 0.0
                for c in range(parts):
                    total += stats[kh, c, g, 1] * exp(stats[kh, c, g, 0] - top)
                o0 = (kh * g_ + g) * dh
                for i in range(dh):
                    out[0, o0 + i] = 0.0
                for c in range(parts):
                    weight = np.float32(exp(stats[kh, c, g, 0] - top) / total)
                    for i in range(dh):
                        out[0, o0 + i] += weight * accs[kh, c, g * dh + i]

    @njit(boundscheck=False, error_model="numpy")
    def softmax_top_k(probs: Any, top: float, top_k: int, picked: Any, chosen: Any) -> None:
        """probs (E,) float64, the router's capped logits, largest `top` -> in place their
        softmax (sums in float64, each probability rounded to float32); picked (E,) bool and
        chosen (E,) float32: the top_k largest (the lowest id on ties) and their
        probabilities, 0 elsewhere (not renormalised: SGLang)."""
        experts = probs.size
        total = 0.0
        for e in range(experts):
            probs[e] = exp(probs[e] - top)
            total += probs[e]
        for e in range(experts):
            probs[e] = np.float32(probs[e] / total)
            picked[e] = False
            chosen[e] = 0.0
        for _ in range(top_k):  # the largest not yet picked, lowest id on ties
            best = -1
            for e in range(experts):
                if not picked[e] and (best < 0 or probs[e] > probs[best]):
                    best = e
            picked[best] = True
            chosen[best] = np.float32(probs[best])

    @njit
    def counter() -> int:
        """The cycle counter the steps' `clock` counts in, read from Python
        (bench/step_share.py)."""
        return cycles()

    from types import SimpleNamespace

    return SimpleNamespace(cycles=cycles, pow2=pow2, f32_from_bits=f32_from_bits,
                           bits_of_f32=bits_of_f32, widen=widen, bf16=bf16, exp=exp,
                           tanh=tanh,
                           rms_norm=rms_norm, router=router, attend=attend,
                           softmax_top_k=softmax_top_k, counter=counter)


def _build() -> Any:
    import numba
    from numba import njit, prange

    shared = glue()
    cycles, widen, bf16 = shared.cycles, shared.widen, shared.bf16
    exp, tanh, rms_norm, router, attend = (shared.exp, shared.tanh, shared.rms_norm,
                                           shared.router, shared.attend)
    softmax_top_k = shared.softmax_top_k
    quantize_block, group_dot = int4_kernels()[3:]
    rows = ROWS

    @njit(boundscheck=False, parallel=True)
    def matvec(w: Any, s: Any, z: Any, mat: Any, x: Any, y: Any) -> None:
        """y[:N'] = W x for the packed matrix `mat` (a row of the offsets table), x (1, K)
        float32; y has room for the padded rows N' = groups * 4."""
        groups, blocks, bits = mat[3], mat[4], mat[5]
        xq = np.empty((1, blocks * 128), np.int8)
        sx = np.empty((1, blocks), np.float32)
        xs = np.empty((1, blocks), np.float32)
        for b in range(blocks):
            quantize_block(x, xq, sx, xs, b)
        w0 = w.ctypes.data + mat[0]
        s0 = s.ctypes.data + mat[1] * 4
        z0 = z.ctypes.data + mat[2]
        x0, sx0, xs0, y0 = xq.ctypes.data, sx.ctypes.data, xs.ctypes.data, y.ctypes.data
        threads = numba.get_num_threads()
        for t in prange(threads):
            g0, g1 = t * groups // threads, (t + 1) * groups // threads
            for r in range(g0 * rows, g1 * rows):
                y[r] = 0.0
            group_dot(w0, s0, z0, x0, sx0, xs0, y0, groups, blocks, bits, 1, g0, g1)

    @njit(boundscheck=False)
    def timed(w: Any, s: Any, z: Any, mat: Any, x: Any, y: Any, clock: Any) -> None:
        """matvec, its cycles added to clock[0]."""
        start = cycles()
        matvec(w, s, z, mat, x, y)
        clock[0] += cycles() - start

    @njit(boundscheck=False, error_model="numpy", fastmath={"contract"})
    def gelu_mul(gu: Any, hidden: int, out: Any) -> None:
        """out[0, :hidden] = gelu(gate) * up, gu = gate | up (hidden each), with the erf GELU
        0.5 g (1 + erf(g / sqrt 2)). erf by Abramowitz & Stegun 7.1.28 in float64, |error| <=
        3e-7 (tests/engine/test_cpu_step.py): no exp, so the loop vectorizes (libm's erf made
        GELU ~6% of a mid-size token); the result is rounded to float32 and then quantized
        to int8 per block of 128 by the next product, whose step is ~1/254 of the block's
        largest value."""
        for i in range(hidden):
            g = np.float64(gu[i])
            t = abs(g) * 0.7071067811865476
            poly = 1.0 + t * (0.0705230784 + t * (0.0422820123 + t * (0.0092705272 + t * (
                0.0001520143 + t * (0.0002765672 + t * 0.0000430638)))))
            p2 = poly * poly
            p4 = p2 * p2
            p8 = p4 * p4
            erf = 1.0 - 1.0 / (p8 * p8)  # erf(|g| / sqrt 2)
            if g < 0:
                erf = -erf
            out[0, i] = np.float32(0.5 * g * (1.0 + erf)) * gu[hidden + i]

    @njit(boundscheck=False, error_model="numpy")
    def decode(h: Any, pos: int, first_layer: int, w: Any, s: Any, z: Any, mats: Any,
               p: Any, offsets: Any, ints: Any, floats: Any, ck: Any, cv: Any, cos: Any,
               sin: Any, out: Any, clock: Any) -> None:
        start = cycles()
        n_layers, d, heads, kv, dh = ints[0], ints[1], ints[2], ints[3], ints[4]
        inter, moe_inter, experts, top_k, temp_len, head = (ints[5], ints[6], ints[7],
                                                            ints[8], ints[9], ints[10])
        vocab = ints[11]
        eps, alpha, attn_cap, router_cap, final_cap, combine, out_mult = (
            floats[0], floats[1], floats[2], floats[3], floats[4], floats[5], floats[6])
        half = dh // 2
        per_layer = PER_LAYER + 2 * experts
        # length temperature (model.length_temperature, as the graph: ln / ln, float32)
        temp = 1.0
        if pos > temp_len:
            temp = np.float64(np.float32(math.log(max(pos, 1)))
                              / np.float32(math.log(np.float32(temp_len))))
        cap_temp = np.float32(np.float32(temp) * np.float32(attn_cap))
        resid = h.copy()  # (D,)
        addend = np.zeros(d, np.float32)
        x = np.empty((1, max(d, heads * dh, inter, moe_inter)), np.float32)  # matvec inputs
        qkv = np.empty(((heads + 2 * kv) * dh + 4,), np.float32)
        wide = np.empty((2 * max(inter, moe_inter) + 4,), np.float32)
        narrow = np.empty((d + 4,), np.float32)
        routed = np.empty(d, np.float32)
        m = np.empty((1, d), np.float32)
        probs = np.empty(experts, np.float64)
        chosen = np.zeros(experts, np.float32)  # the chosen experts' weights, 0 elsewhere
        picked = np.zeros(experts, np.bool_)
        for layer in range(n_layers):
            lay = first_layer + layer
            base = layer * per_layer
            if layer > 0:  # h = h1 + post_moe_norm(ff) of the layer before
                for i in range(d):
                    resid[i] += addend[i]
            # ---- attention ---------------------------------------------------------
            xv = x[:, :d]
            rms_norm(resid, p, offsets[layer, 0], eps, xv[0])
            timed(w, s, z, mats[base], xv, qkv, clock)  # q | k | v: (H + 2K) * Dh
            for hh in range(heads + kv):  # RoPE on q and k (NeoX halves, fp32 table)
                o0 = hh * dh
                for i in range(half):
                    x1, x2 = qkv[o0 + i], qkv[o0 + half + i]
                    c, sn = cos[pos, i], sin[pos, i]
                    qkv[o0 + i] = x1 * c - x2 * sn
                    qkv[o0 + half + i] = x2 * c + x1 * sn
            for kh in range(kv):
                k0, v0 = (heads + kh) * dh, (heads + kv + kh) * dh
                for c in range(dh):
                    ck[lay, kh, pos, c] = qkv[k0 + c]
                    cv[lay, kh, pos, c] = qkv[v0 + c]
            ov = x[:, :heads * dh]
            attend(qkv, pos, lay, ck, cv, heads, kv, dh, alpha, cap_temp, ov)
            timed(w, s, z, mats[base + 1], ov, narrow, clock)  # o: (D,)
            rms_norm(narrow[:d], p, offsets[layer, 1], eps, addend)
            for i in range(d):  # h1 = h + post_attn_norm(a)
                resid[i] += addend[i]
            rms_norm(resid, p, offsets[layer, 2], eps, m[0])
            # ---- shared MLP -----------------------------------------------------------
            timed(w, s, z, mats[base + 2], m, wide, clock)  # gate | up
            gelu_mul(wide, inter, x)
            timed(w, s, z, mats[base + 3], x[:, :inter], narrow, clock)  # down
            for i in range(d):
                routed[i] = narrow[i]
            # ---- router: softmax(cap * tanh(m R^T / cap)), top-k, not renormalised -------
            router(m[0], p, offsets[layer, 4], probs)  # m R^T / cap
            top = -np.inf
            for e in range(experts):
                probs[e] = np.float32(tanh(probs[e])) * np.float32(router_cap)
                top = max(top, probs[e])
            softmax_top_k(probs, top, top_k, picked, chosen)
            # ---- the chosen experts, ascending id, added onto the shared MLP's output -----
            for e in range(experts):
                if not picked[e]:
                    continue
                timed(w, s, z, mats[base + 4 + 2 * e], m, wide, clock)  # w1 | w3
                gelu_mul(wide, moe_inter, x)
                timed(w, s, z, mats[base + 5 + 2 * e], x[:, :moe_inter], narrow,
                      clock)  # w2
                for i in range(d):
                    routed[i] += narrow[i] * chosen[e]
            for i in range(d):
                routed[i] *= np.float32(combine)
            rms_norm(routed, p, offsets[layer, 3], eps, addend)  # post_moe_norm(ff)
        for i in range(d):
            resid[i] += addend[i]
        if head == 0:
            for i in range(d):
                out[i] = resid[i]
            clock[1] += cycles() - start
            return
        xv = x[:, :d]
        rms_norm(resid, p, offsets[n_layers, 0], eps, xv[0])
        logits = np.empty(vocab + 4, np.float32)
        timed(w, s, z, mats[n_layers * per_layer], xv, logits, clock)
        cap = np.float32(final_cap)
        for i in range(vocab):
            out[i] = cap * np.float32(tanh((logits[i] * np.float32(out_mult)) / cap))
        clock[1] += cycles() - start

    @njit(boundscheck=False, error_model="numpy")
    def decode_token(token: int, emb: Any, scale: float, pos: int, first_layer: int, w: Any,
                     s: Any, z: Any, mats: Any, p: Any, offsets: Any, ints: Any, floats: Any,
                     ck: Any, cv: Any, cos: Any, sin: Any, out: Any, clock: Any) -> None:
        """decode() after the embedding: h = bf16(float32(emb[token]) * float32(scale)),
        emb the bf16 table's bits (V, D) int16; the product rounded half to even to bf16
        (Grok2.forward's emb(ids) * embedding_multiplier_scale, in bf16)."""
        d = emb.shape[1]
        h = np.empty(d, np.float32)
        sc = np.float32(scale)
        for i in range(d):
            h[i] = bf16(widen(emb[token, i]) * sc)
        decode(h, pos, first_layer, w, s, z, mats, p, offsets, ints, floats, ck, cv, cos,
               sin, out, clock)

    from types import SimpleNamespace

    return SimpleNamespace(decode=decode, decode_token=decode_token, matvec=matvec,
                           gelu_mul=gelu_mul, exp=exp, tanh=tanh, counter=shared.counter)
