"""Decode of a bf16 model on the CPU as one numba-compiled call: the bf16 counterpart of
cpu_step.py (which runs the quantized layer graphs' decode).

Why: a bf16 model has no onnxruntime graph (onnxruntime has no bf16 CPU matmul), so its
decode ran eagerly: ~4,800 PyTorch ops a token on the mid-size bench model, a third of the
token outside the matmuls, and ATen's bf16 matrix-vector product streamed ~20 GB/s of a
core's ~26 (bench/README.md). Here a token is one call: the glue between the matmuls is
cpu_step's compiled helpers (norm, attention over the KV cache, router) and the matmuls are
plain loops over the model's own bf16 weights (read in place through their addresses: no
copy, no build time), which LLVM vectorizes (bf16 widened to float32 by a shift, fp32
multiply-add).

Numerics: model.py's bf16 forward, rounding point by rounding point (so SGLang's: the residual
stream and every matmul's output in bf16; norms, RoPE, attention scores and softmax, router,
the experts' weighted sum and the logits in fp32). Each value the eager path holds as a bf16
tensor is held here as a float32 rounded half to even to bf16 (`bf16`), and each fp32 op is
the same fp32 op. The matrix products multiply bf16 by bf16 (exact in fp32) and sum in fp32
in another order than ATen's GEMV, so a product's bf16 result may differ in its last bit, as
between any two BLAS; the same holds for the norms' mean square (summed in float64 here) and
for exp and tanh (cpu_step's own, within 1e-9 relative). GELU's 1 + erf comes from a fit of
erfc with relative error < 1.2e-7 (gelu_mul), so its bf16 GELU is the correctly rounded one,
as SGLang's CUDA erff gives; ATen's (Abramowitz & Stegun 7.1.26) misses that for ~1 in 10^4
inputs. On the test models the step and
the eager decode agree to bf16 rounding with the same greedy tokens, and both are as close to
the float64 reference (tests/engine/test_cpu_bf16.py).

The KV cache is the model's own bf16 cache (setup_cache), read and written in place as int16
bits, so eager prefill and compiled decode share it. A step is built (quantize.
build_cpu_kernels) for a Grok2 whose every layer, final norm, head and embedding are bf16
CPU tensors (not offloaded, not quantized) of at least MIN_BYTES; GROK_DESKTOP_BF16_DECODE=
eager turns it off (other values do nothing). Compiling takes ~8 s at load (numba cannot
cache functions that call LLVM intrinsics). Weights the model replaces by registering new
Parameters or modules (the loader, offloading) are followed (`current`); storage swapped under
a Parameter without registering (`.data = ...`, share_memory_()) is not seen: the step keeps
reading the buffers it was built on (never freed memory).

Shapes: D hidden, H query heads, K kv heads, G = H/K, Dh head dim, E experts, V vocab.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.engine.cpu_graph import GENERATION, module_parts
from app.engine.cpu_int4 import use_threads
from app.engine.cpu_step import glue

log = logging.getLogger(__name__)

ENV = "GROK_DESKTOP_BF16_DECODE"  # "eager": bf16 decode runs PyTorch's ops, not the step
MIN_BYTES = 64 * 2**20  # smaller bf16 models decode eagerly: the compile is not worth it
PER_LAYER = 7  # matrices per layer before the experts' (q, k, v, o, gate, up, down)
_KERNELS: list[Any] = []
_FAILED: list[bool] = []  # the step failed to compile in this process: not tried again


def available() -> bool:
    """Whether a bf16 step may be built here: numba imports and GROK_DESKTOP_BF16_DECODE is
    not "eager" (the loops vectorize for whatever the host has; no AVX512 needed)."""
    if os.environ.get(ENV, "").strip().lower() == "eager" or _FAILED:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _plain(w: Any) -> bool:
    """Whether w is a C-contiguous bf16 tensor in CPU memory (not meta)."""
    return (isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16
            and w.device.type == "cpu" and not w.is_meta and w.is_contiguous())


def _plain_linear(m: Any) -> bool:
    """Whether m is an nn.Linear itself (no subclass: not a QuantLinear, not a GemvLinear)
    without bias, its weight _plain: what the compiled products read."""
    return type(m) is nn.Linear and m.bias is None and _plain(m.weight)


def _linears(model: Any) -> list[list[nn.Linear]] | None:
    """Every matrix the step reads, grouped per layer, in its table's order (per layer q, k,
    v, o, gate, up, down, then per expert w1, w3, w2; the head alone last), when all are
    _plain_linear and the embedding and norms are _plain; else None."""
    out: list[list[nn.Linear]] = []
    for layer in model.model.layers:
        a, mlp = layer.self_attn, layer.mlp
        linears = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj,
                   mlp.down_proj]
        for e in layer.block_sparse_moe.experts:
            linears += [e.w1, e.w3, e.w2]
        norms = [layer.pre_attn_norm, layer.post_attn_norm, layer.pre_moe_norm,
                 layer.post_moe_norm, layer.block_sparse_moe.gate]
        if not all(map(_plain_linear, linears)) or not all(_plain(n.weight) for n in norms):
            return None
        out.append(linears)
    if not (_plain_linear(model.lm_head) and _plain(model.model.norm.weight)
            and _plain(model.model.embed_tokens.weight)):
        return None
    return [*out, [model.lm_head]]


def _into_buffers(groups: list[list[Any]]) -> list[np.ndarray]:
    """Move each group's weights (a layer's Linears; the head; the embedding) into one
    numpy-allocated buffer and make the modules' weights views of it: same values, same model, but memory numpy has
    advised the kernel to back with transparent huge pages (Linux), which a matrix-vector
    product streams faster (mid-size 4096 x 1024 bf16, one thread: ~21 -> ~26 GB/s; PyTorch's
    allocator does not advise them, and a checkpoint's weights may be file-backed). One group
    at a time, so the transient is one layer's weights. Returns the buffers: a step keeps
    them, so the memory it reads outlives whatever later happens to the Parameters."""
    buffers = []
    for linears in groups:
        sizes = [-(-m.weight.numel() // 32) * 32 for m in linears]  # 64-byte aligned starts
        buf = np.empty(sum(sizes), np.int16)
        at = 0
        for m, size in zip(linears, sizes, strict=True):
            w = m.weight
            view = buf[at:at + w.numel()]
            view[:] = w.detach().view(torch.int16).numpy().reshape(-1)
            t = torch.from_numpy(view).view(torch.bfloat16).view(w.shape)
            m.weight = nn.Parameter(t, requires_grad=w.requires_grad)
            at += size
        buffers.append(buf)
    return buffers


def build(model: Any, min_bytes: int = MIN_BYTES) -> Bf16Decode | None:
    """A compiled Bf16Decode for this Grok2 (compiled and run once on a scratch cache, so the
    first token does not wait), or None: not available(), a model that is not all bf16 on
    the CPU, smaller than `min_bytes`, or a compile failure (logged once; decode stays
    eager). Its matrices are moved into huge-page-advised buffers first (_into_buffers: the
    same values, so the eager path is unchanged too)."""
    if not available():
        return None
    groups = _linears(model)
    if groups is None or sum(m.weight.numel() * 2 for g in groups for m in g) < min_bytes:
        return None
    buffers = _into_buffers([*groups, [model.model.embed_tokens]])
    step = Bf16Decode(model, [m.weight for g in groups for m in g], torch.get_num_threads(),
                      buffers)
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, 1, cfg.head_dim)
    scratch = np.zeros(shape, np.int16)
    table = np.zeros((1, cfg.head_dim // 2), np.float32)
    try:  # compile now (seconds), not at the first token
        step.run(np.zeros((1, 1), np.int64), 0, scratch, scratch.copy(), table, table)
    except Exception as exc:  # noqa: BLE001 - any compile failure: decode eagerly
        log.warning("the compiled bf16 decode step did not build (%s: %s); bf16 decoding "
                    "runs PyTorch's ops", type(exc).__name__, exc)
        _FAILED.append(True)
        return None
    step.clock[:] = 0  # the warm-up's cycles are not a token's
    return step


class Bf16Decode(nn.Module):
    """One decode token of a bf16 Grok2 (embedding, every layer, final norm, head, soft cap)
    as one compiled call over the model's own weights (module docstring). Holds no
    parameters: it reads the model's bf16 matrices and embedding through their addresses in
    the numpy buffers `build` moved them into, holds those buffers (so the memory outlives
    any replacement) and is `current()` while the model still holds those very tensors and
    modules. Raises ValueError when a matrix or the embedding is not in `buffers`. `threads`: numba threads of every call, fixed
    here as the graphs' are. Shows in print(model) as the model's `cpu_decode`."""

    def __init__(self, model: Any, mats: list[torch.Tensor], threads: int,
                 buffers: list[np.ndarray]) -> None:
        super().__init__()
        cfg = model.config
        layers = model.model.layers
        # the numpy buffers the matrices live in (_into_buffers): held here, so the memory
        # the table points at stays this step's even if a Parameter's storage is later
        # swapped without registering anything (`.data = ...`, share_memory_()): the step
        # then reads the weights it was built from, never freed memory
        self._weight_buffers = buffers
        for w in mats:
            if not any(b.ctypes.data <= w.data_ptr() < b.ctypes.data + b.nbytes
                       for b in buffers):
                raise ValueError("a matrix of the step is not in its buffers")
        # per matrix: address, rows N, inputs K (row-major (N, K) bf16)
        self.table = np.array([(w.data_ptr(), w.shape[0], w.shape[1]) for w in mats],
                              np.int64)
        params, offsets, at = [], np.zeros((len(layers) + 1, 5), np.int64), 0
        for row, layer in enumerate(layers):
            parts = [layer.pre_attn_norm.weight, layer.post_attn_norm.weight,
                     layer.pre_moe_norm.weight, layer.post_moe_norm.weight,
                     layer.block_sparse_moe.gate.weight]  # 4 x (D,), router (E, D)
            for j, t in enumerate(parts):
                offsets[row, j] = at
                params.append(t.detach().float().numpy().reshape(-1))
                at += t.numel()
        offsets[len(layers), 0] = at
        params.append(model.model.norm.weight.detach().float().numpy().reshape(-1))
        # float32 copies of bf16 values (exact): the norms' and the router's weights, which
        # model.py reads as float32 too; a few MB. Replaced tensors make the step stale.
        self.params = np.concatenate(params).astype(np.float32)
        self.offsets = offsets
        self.ints = np.array([len(layers), cfg.hidden_size, cfg.num_attention_heads,
                              cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size,
                              cfg.moe_intermediate_size, cfg.num_local_experts,
                              cfg.num_experts_per_tok, cfg.attn_temperature_len,
                              cfg.vocab_size], np.int64)
        self.floats = np.array([cfg.rms_norm_eps,
                                cfg.head_dim ** -0.5 / cfg.attn_logit_softcapping,
                                cfg.attn_logit_softcapping, cfg.router_logit_softcapping,
                                cfg.final_logit_softcapping, cfg.moe_combine_scale,
                                cfg.output_multiplier_scale], np.float64)
        emb = model.model.embed_tokens.weight
        self._embedding = (emb,)  # a tuple: not registered as this module's parameter
        # (V, D) bf16 bits: a view of the embedding's own buffer (the last of `buffers`)
        self.embed_bits = buffers[-1][:emb.numel()].reshape(emb.shape)
        if self.embed_bits.ctypes.data != emb.data_ptr():
            raise ValueError("the embedding is not in the step's buffers")
        self.embed_scale = float(cfg.embedding_multiplier_scale)
        self.config = cfg
        self.threads = max(1, threads)
        self.parts = tuple(zip(*module_parts([*layers, model.model.norm, model.lm_head,
                                              model.model.embed_tokens]), strict=True))
        self._checked = GENERATION[0]
        # CPU cycles, summed over calls: [in the matrix products, in the whole step]
        self.clock = np.zeros(2, np.int64)
        self._views: tuple | None = None  # decode_token's (cache.k, bits views, cos, sin)
        self.nbytes = int(sum(w.numel() * 2 for w in mats))

    def current(self) -> bool:
        """Whether the model still holds the tensors and modules this step reads (as
        cpu_graph.CpuGraph.current: identity checks, redone only after some module anywhere
        registered a parameter, buffer or submodule)."""
        if GENERATION[0] == self._checked:
            return True
        tables, names, values = self.parts
        ok = all(t.get(n) is v for t, n, v in zip(tables, names, values, strict=True))
        if ok:
            self._checked = GENERATION[0]
        return ok

    def decode_token(self, input_ids: torch.Tensor, first: int, cache: Any,
                     embedding: torch.Tensor, scale: float,
                     rope: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> torch.Tensor | None:
        """Logits (1, 1, V) float32 (soft-capped) of the token input_ids (1, 1) int64 at
        position `first`, writing its keys and values into `cache` (model.KVCache, bf16,
        batch 1) and attending to positions 0..first. None (run the eager path) when the
        cache, embedding or scale are not the ones this step was built for, or when `rope`
        (model.rope_table's float32 cos/sin (P, Dh/2), P > first) is not given and the
        table kept from an earlier call does not reach `first` or belongs to another cache.
        The cache's bit views and the RoPE table are kept between tokens. Raises ValueError
        for a position outside the cache or a token id outside the vocabulary (nothing is
        written then)."""
        if (embedding is not self._embedding[0] or scale != self.embed_scale
                or cache.k.dtype != torch.bfloat16 or cache.k.shape[1] != 1):
            return None
        views = self._views
        if views is None or views[0] is not cache.k or first >= views[3].shape[0]:
            if rope is None:
                return None
            views = self._views = (cache.k, cache.k[:, 0].view(torch.int16).numpy(),
                                   cache.v[:, 0].view(torch.int16).numpy(),
                                   rope[0].numpy(), rope[1].numpy())
        out = self.run(input_ids.numpy(), first, *views[1:])
        return torch.from_numpy(out.reshape(1, 1, -1))

    def run(self, ids: np.ndarray, pos: int, cache_k: np.ndarray, cache_v: np.ndarray,
            cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """The compiled call: ids (1, 1) integer token id, pos its position, the cache's keys
        and values as int16 bits (layers, K, max_len, Dh) C-contiguous, RoPE cos/sin (P,
        Dh/2) float32 with P > pos -> logits (V,) float32. Raises ValueError (one line) for
        a position outside the cache or the tables, a token id outside the vocabulary or
        arrays of another shape, dtype or layout (or read-only caches), and TypeError for a
        position that is not an integer, before the compiled code reads anything."""
        n_layers, kv, dh, vocab = (int(self.ints[0]), int(self.ints[3]), int(self.ints[4]),
                                   int(self.ints[10]))
        if isinstance(pos, bool) or not isinstance(pos, int | np.integer):
            raise TypeError(f"the position must be an integer, got {type(pos).__name__} "
                            f"{pos!r}")
        pos = int(pos)
        if ids.shape != (1, 1) or ids.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers of shape (1, 1), got {ids.dtype} "
                             f"{ids.shape}")
        token = int(ids[0, 0])
        if not 0 <= token < vocab:
            raise ValueError(f"token id {token} is outside the vocabulary (0..{vocab - 1})")
        if not 0 <= pos < cache_k.shape[2]:
            raise ValueError(f"context of {pos + 1} tokens exceeds the cache's "
                             f"{cache_k.shape[2]}" if pos >= 0 else
                             f"position {pos} is negative")
        for name, c in (("keys", cache_k), ("values", cache_v)):
            if (c.dtype != np.int16 or not c.flags.c_contiguous or not c.flags.writeable
                    or c.ndim != 4 or c.shape != (n_layers, kv, cache_k.shape[2], dh)):
                raise ValueError(f"the cached {name} must be writable C-contiguous int16 "
                                 f"bf16 bits ({n_layers}, {kv}, max_len, {dh}), got "
                                 f"{c.dtype} {c.shape}")
        for name, t in (("cos", cos), ("sin", sin)):
            if (t.dtype != np.float32 or not t.flags.c_contiguous or t.ndim != 2
                    or t.shape != cos.shape or t.shape[1] != dh // 2 or pos >= t.shape[0]):
                raise ValueError(f"the RoPE {name} table must be C-contiguous float32 "
                                 f"(P > {pos}, {dh // 2}), got {t.dtype} {t.shape}")
        out = np.empty(vocab, np.float32)
        torch_threads = torch.get_num_threads()
        use_threads(self.threads)
        kernels().decode_token(token, self.embed_bits, self.embed_scale, pos, self.table,
                               self.params, self.offsets, self.ints, self.floats, cache_k,
                               cache_v, cos, sin, out, self.clock)
        if torch.get_num_threads() != torch_threads:  # numba's OpenMP may share torch's
            torch.set_num_threads(torch_threads)
        return out

    def extra_repr(self) -> str:
        return (f"layers 0..{int(self.ints[0]) - 1} + final norm, output head, soft cap: "
                f"decode as one numba call (cpu_bf16) over the bf16 weights in place "
                f"({self.nbytes / 2**20:.0f} MiB), {self.threads} thread(s)")


class GemvLinear(nn.Linear):
    """A CPU bf16 Linear whose one-row products (decode) run cpu_bf16's compiled
    matrix-vector product (`gemv`: bf16 weights and input, fp32 sums, the output rounded
    to bf16, as ATen's GEMV, in another summation order); more rows (prefill), other
    dtypes or devices: F.linear. For the layers a whole-model step does not cover (a
    real-size layer, the CPU part of an offloaded bf16 model): ATen streams a real-size
    bf16 weight at ~12-14 GB/s on one thread, this at ~20-24 (`install_gemv`)."""

    _memo: tuple | None = None  # (weight, its table row, its address then)
    threads = 0  # numba threads of a one-row product (install_gemv: torch's count then)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.numel() != self.in_features or x.dtype != torch.bfloat16 or self.bias is not None
                or x.device.type != "cpu" or w.device.type != "cpu"
                or w.dtype != torch.bfloat16 or not w.is_contiguous() or x.requires_grad
                or w.shape != (self.out_features, self.in_features)
                or w.requires_grad and torch.is_grad_enabled()):
            return F.linear(x, w, self.bias)  # anything else: PyTorch's own checks
        memo, at = self._memo, w.data_ptr()
        if memo is None or memo[0] is not w or memo[2] != at:  # a new weight or storage
            memo = self._memo = (w, np.array([(at, w.shape[0], w.shape[1])], np.int64), at)
        y = np.empty(self.out_features, np.float32)
        torch_threads = torch.get_num_threads()
        use_threads(self.threads or torch_threads)
        kernels().gemv(memo[1], 0, 1, x.reshape(-1).float().numpy(), y)
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        return torch.from_numpy(y).to(torch.bfloat16).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", one row: cpu_bf16 gemv"


def install_gemv(model: nn.Module, min_bytes: int = MIN_BYTES) -> int:
    """Swap every CPU bf16 nn.Linear of `model` (but MoE routers, read in fp32) for a
    GemvLinear holding the same weight, moved into a huge-page-advised buffer
    (_into_buffers), when they hold at least `min_bytes` together and available(); the
    kernels are compiled now (a few seconds), not at the first token. Returns how many were
    swapped (0 when the compile fails: logged once, F.linear stays)."""
    found = [(name, m) for name, m in model.named_modules()
             if _plain_linear(m) and not name.endswith("block_sparse_moe.gate")]
    if not available() or sum(m.weight.numel() * 2 for _, m in found) < min_bytes:
        return 0
    try:
        _warm_up()
    except Exception as exc:  # noqa: BLE001 - any compile failure: F.linear stays
        log.warning("the compiled bf16 matrix-vector product did not build (%s: %s); bf16 "
                    "decode runs PyTorch's", type(exc).__name__, exc)
        _FAILED.append(True)
        return 0
    for name, m in found:
        new = GemvLinear(m.in_features, m.out_features, bias=False, device="meta",
                         dtype=torch.bfloat16)
        new.weight = m.weight
        new.threads = torch.get_num_threads()
        _into_buffers([[new]])
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, new)
    return len(found)


def _warm_up() -> None:
    """Compile and run gemv once on a tiny matrix of each kind (short and long rows)."""
    for k in (128, 4224):
        w = torch.zeros(8, k, dtype=torch.bfloat16)
        kernels().gemv(np.array([(w.data_ptr(), 8, k)], np.int64), 0, 1,
                       np.zeros(k, np.float32), np.empty(8, np.float32))


def kernels() -> Any:
    """The compiled functions (numba dispatchers, compiled on first use): decode_token (the
    whole step), gemv (stacked bf16 matrices times a vector, rounded to bf16), bf16 (round
    a float32 half to even to bf16) and gelu_mul; tested on their own."""
    if not _KERNELS:
        _KERNELS.append(_build())
    return _KERNELS[0]


def _build() -> Any:
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    shared = glue()
    cycles, bits_of_f32, widen, bf16 = (shared.cycles, shared.bits_of_f32, shared.widen,
                                        shared.bf16)
    exp, tanh, rms_norm, router, attend = (shared.exp, shared.tanh, shared.rms_norm,
                                           shared.router, shared.attend)
    softmax_top_k = shared.softmax_top_k
    per_layer = PER_LAYER

    def lowered(codegen_of: Any) -> Any:
        return intrinsic(codegen_of)

    @lowered
    def u16_at(typingctx: Any, addr: Any) -> Any:
        """The int64 address as a uint16 pointer (a weight's bf16 bits)."""
        ptr = types.CPointer(types.uint16)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], ir.PointerType(ir.IntType(16)))

        return ptr(types.int64), codegen

    @njit(boundscheck=False, error_model="numpy", fastmath={"reassoc", "contract"})
    def dot_rows(w: Any, xb: Any, y: Any, r0: int, r1: int, out0: int) -> None:
        """y[out0 + n] = bf16(sum_k w[n, k] x[k]) for rows r0..r1-1 of w (N, K) bf16 bits,
        xb (K,) the bf16 bits of x: each product is exact in fp32, and only the fp32 sum's
        order (LLVM's vector lanes) differs from ATen's. x is kept as bf16 (half the bytes
        of float32, so more of it stays in L1 beside the streaming rows) and widened as it
        is read. Rows up to 4096 inputs are summed one at a time (one sequential stream);
        longer ones eight at a time, each x load serving eight rows (measured on one thread,
        GB/s one row / four / eight: 4096x1024 22.6 / 10.8 / -, 1024x4096 20.9 / 16.7 / -,
        16384x8192 20.3 / 22.7 / 23.8, 8192x8192 - / 22.0 / 24.5, 8192x32768 - / 26.6 /
        27.0)."""
        k_ = xb.size
        n = r0
        if k_ > 4096:
            while n + 8 <= r1:
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                for k in range(k_):
                    xk = widen(xb[k])
                    a0 += widen(w[n, k]) * xk
                    a1 += widen(w[n + 1, k]) * xk
                    a2 += widen(w[n + 2, k]) * xk
                    a3 += widen(w[n + 3, k]) * xk
                    a4 += widen(w[n + 4, k]) * xk
                    a5 += widen(w[n + 5, k]) * xk
                    a6 += widen(w[n + 6, k]) * xk
                    a7 += widen(w[n + 7, k]) * xk
                y[out0 + n] = bf16(a0)
                y[out0 + n + 1] = bf16(a1)
                y[out0 + n + 2] = bf16(a2)
                y[out0 + n + 3] = bf16(a3)
                y[out0 + n + 4] = bf16(a4)
                y[out0 + n + 5] = bf16(a5)
                y[out0 + n + 6] = bf16(a6)
                y[out0 + n + 7] = bf16(a7)
                n += 8
        while n < r1:
            acc = np.float32(0.0)
            for k in range(k_):
                acc += widen(w[n, k]) * widen(xb[k])
            y[out0 + n] = bf16(acc)
            n += 1

    @njit(boundscheck=False, error_model="numpy", parallel=True)
    def gemv(table: Any, i0: int, i1: int, x: Any, y: Any) -> None:
        """y = the matrices i0..i1-1 of `table` (same K, rows stacked) times x (K,) float32
        holding bf16 values, each output rounded to bf16; the stacked rows split evenly over
        numba's threads."""
        total = 0
        for i in range(i0, i1):
            total += table[i, 1]
        k_ = table[i0, 2]
        xb = np.empty(k_, np.int16)
        for i in range(k_):
            xb[i] = np.int16(bits_of_f32(x[i]) >> 16)
        threads = numba.get_num_threads()
        for t in prange(threads):
            r0, r1 = t * total // threads, (t + 1) * total // threads
            base = 0
            for i in range(i0, i1):
                n = table[i, 1]
                a, b = max(r0 - base, 0), min(r1 - base, n)
                if a < b:
                    w = numba.carray(u16_at(table[i, 0]), (n, k_))
                    dot_rows(w, xb, y, a, b, base)
                base += n

    @njit(boundscheck=False)
    def timed(table: Any, i0: int, i1: int, x: Any, y: Any, clock: Any) -> None:
        """gemv, its cycles added to clock[0]."""
        start = cycles()
        gemv(table, i0, i1, x, y)
        clock[0] += cycles() - start

    @njit(boundscheck=False, error_model="numpy")
    def norm_bf16(x: Any, p: Any, at: int, eps: float, out: Any) -> None:
        """out = bf16(rms_norm(x) * w) (model.RMSNorm on a bf16 tensor: fp32, rounded once)."""
        rms_norm(x, p, at, eps, out)
        for i in range(out.size):
            out[i] = bf16(out[i])

    @njit(boundscheck=False, error_model="numpy", fastmath={"contract"})
    def gelu_mul(gu: Any, hidden: int, out: Any) -> None:
        """out[:hidden] = bf16(bf16(gelu(gate)) * up) for gu = gate | up (bf16 values):
        F.gelu on a bf16 tensor (the erf GELU 0.5 g (1 + erf(g / sqrt 2)) in fp32, rounded),
        then the bf16 product. 1 + erf is 2 - erfc or erfc (negative g: no cancellation),
        erfc by the Chebyshev fit of Numerical Recipes' erfcc (relative error < 1.2e-7
        everywhere) with cpu_step's exp, in float64: bf16(gelu(g)) is the correctly rounded
        value for every bf16 g tested (tests/engine/test_cpu_bf16.py), as SGLang's CUDA
        erff gives; ATen's CPU GELU (Abramowitz & Stegun 7.1.26) misses it for ~1 in 10^4
        inputs of unit scale, so there the step and the eager path differ in a last bit."""
        for i in range(hidden):
            g = np.float64(gu[i])
            z = abs(g) * 0.7071067811865476
            t = 1.0 / (1.0 + 0.5 * z)
            erfc = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (
                0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (
                    1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            one_plus_erf = 2.0 - erfc if g >= 0 else erfc  # 1 + erf(g / sqrt 2)
            out[i] = bf16(bf16(np.float32(0.5 * g * one_plus_erf)) * gu[hidden + i])

    @njit(boundscheck=False, error_model="numpy")
    def decode_token(token: int, emb: Any, scale: float, pos: int, table: Any, p: Any,
                     offsets: Any, ints: Any, floats: Any, ck: Any, cv: Any, cos: Any,
                     sin: Any, out: Any, clock: Any) -> None:
        """One token (id `token`, position `pos`) through the whole model -> out (V,) float32
        logits, soft-capped. emb (V, D) int16: the embedding's bf16 bits, times `scale`.
        table (matrices, 3) int64: address, N, K of each bf16 (N, K) matrix, per layer q,
        k, v, o, gate, up, down, then w1, w3, w2 per expert; the head last. p float32: per
        layer the four norm weights (D each) and the router (E, D), then the final norm; its
        offsets (layers + 1, 5). ints: [layers, D, H, K, Dh, dense hidden, expert hidden, E,
        top-k, temperature length, V]; floats: [norm eps, 1 / (sqrt(Dh) * attention cap),
        attention cap, router cap, final cap, combine scale, output multiplier] (both made
        in Bf16Decode.__init__). ck/cv (layers, K, max_len, Dh) int16 bf16 bits: the KV
        cache, written at pos. cos/sin (P, Dh/2) float32. clock[0] += cycles in the
        products, clock[1] += cycles of the call. No bounds checks: Bf16Decode.run checks
        every argument first."""
        start = cycles()
        n_layers, d, heads, kv, dh = ints[0], ints[1], ints[2], ints[3], ints[4]
        inter, moe_inter, experts, top_k, temp_len, vocab = (ints[5], ints[6], ints[7],
                                                             ints[8], ints[9], ints[10])
        eps, alpha, attn_cap, router_cap, final_cap, combine, out_mult = (
            floats[0], floats[1], floats[2], floats[3], floats[4], floats[5], floats[6])
        half = dh // 2
        layer_mats = per_layer + 3 * experts
        q_rows = heads * dh
        # h = bf16(emb[token] * scale): the bf16 table times a Python float, in fp32
        resid = np.empty(d, np.float32)
        sc = np.float32(scale)
        for i in range(d):
            resid[i] = bf16(widen(emb[token, i]) * sc)
        # length temperature (model.length_temperature: log2 p / log2 L, float32)
        temp = 1.0
        if pos > temp_len:
            temp = np.float64(np.float32(math.log2(max(pos, 1)))
                              / np.float32(math.log2(np.float32(temp_len))))
        cap_temp = np.float32(np.float32(temp) * np.float32(attn_cap))
        x = np.empty(d, np.float32)
        qkv = np.empty((heads + 2 * kv) * dh, np.float32)
        att = np.empty((1, heads * dh), np.float32)
        narrow = np.empty(d, np.float32)
        addend = np.empty(d, np.float32)
        m = np.empty(d, np.float32)
        wide = np.empty(2 * max(inter, moe_inter), np.float32)
        prod = np.empty(max(inter, moe_inter), np.float32)
        dense = np.empty(d, np.float32)
        routed = np.empty(d, np.float32)
        logits = np.empty(experts, np.float32)
        probs = np.empty(experts, np.float64)
        chosen = np.zeros(experts, np.float32)
        picked = np.zeros(experts, np.bool_)
        for layer in range(n_layers):
            base = layer * layer_mats
            # ---- attention: h + post_attn_norm(o(attend(rope(q, k), v))) ----------------
            norm_bf16(resid, p, offsets[layer, 0], eps, x)
            timed(table, base, base + 3, x, qkv, clock)  # q | k | v, bf16 values
            for hh in range(heads + kv):  # RoPE on q and k: fp32 table, rounded to bf16
                o0 = hh * dh
                for i in range(half):
                    x1, x2 = qkv[o0 + i], qkv[o0 + half + i]
                    c, sn = cos[pos, i], sin[pos, i]
                    qkv[o0 + i] = bf16(x1 * c - x2 * sn)
                    qkv[o0 + half + i] = bf16(x2 * c + x1 * sn)
            for kh in range(kv):  # the cache holds the bf16 bits
                k0, v0 = q_rows + kh * dh, q_rows + (kv + kh) * dh
                for c in range(dh):
                    ck[layer, kh, pos, c] = np.int16(bits_of_f32(qkv[k0 + c]) >> 16)
                    cv[layer, kh, pos, c] = np.int16(bits_of_f32(qkv[v0 + c]) >> 16)
            attend(qkv, pos, layer, ck, cv, heads, kv, dh, alpha, cap_temp, att)
            for i in range(heads * dh):
                att[0, i] = bf16(att[0, i])
            timed(table, base + 3, base + 4, att[0], narrow, clock)  # o
            norm_bf16(narrow, p, offsets[layer, 1], eps, addend)
            for i in range(d):
                resid[i] = bf16(resid[i] + addend[i])
            norm_bf16(resid, p, offsets[layer, 2], eps, m)
            # ---- shared MLP ---------------------------------------------------------------
            timed(table, base + 4, base + 6, m, wide, clock)  # gate | up
            gelu_mul(wide, inter, prod)
            timed(table, base + 6, base + 7, prod[:inter], dense, clock)  # down
            # ---- router: softmax(cap * tanh(m R^T / cap)) in fp32, top-k, not renormalised
            router(m, p, offsets[layer, 4], logits)
            top = -np.inf
            for e in range(experts):
                probs[e] = np.float32(np.float32(tanh(np.float32(logits[e] / np.float32(
                    router_cap)))) * np.float32(router_cap))
                top = max(top, probs[e])
            softmax_top_k(probs, top, top_k, picked, chosen)
            # ---- the chosen experts, ascending id, weighted and summed in fp32 ------------
            first = True
            for e in range(experts):
                if not picked[e]:
                    continue
                w0 = base + per_layer + 3 * e
                timed(table, w0, w0 + 2, m, wide, clock)  # w1 | w3
                gelu_mul(wide, moe_inter, prod)
                timed(table, w0 + 2, w0 + 3, prod[:moe_inter], narrow, clock)  # w2
                for i in range(d):
                    y = narrow[i] * chosen[e]
                    routed[i] = y if first else routed[i] + y
                first = False
            # (dense + bf16(routed)) * combine in fp32, rounded: ResidualMoE
            cs = np.float32(combine)
            for i in range(d):
                narrow[i] = bf16((dense[i] + bf16(routed[i])) * cs)
            norm_bf16(narrow, p, offsets[layer, 3], eps, addend)
            for i in range(d):
                resid[i] = bf16(resid[i] + addend[i])
        # ---- final norm, head, z * output multiplier, soft cap ----------------------------
        norm_bf16(resid, p, offsets[n_layers, 0], eps, x)
        head = np.empty(vocab, np.float32)
        timed(table, n_layers * layer_mats, n_layers * layer_mats + 1, x, head, clock)
        cap = np.float32(final_cap)
        for i in range(vocab):
            out[i] = cap * np.float32(tanh((head[i] * np.float32(out_mult)) / cap))
        clock[1] += cycles() - start

    from types import SimpleNamespace

    return SimpleNamespace(decode_token=decode_token, gemv=gemv, bf16=bf16,
                           gelu_mul=gelu_mul)
