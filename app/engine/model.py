"""The Grok-2 module tree and its forward pass (docs/grok2.md#forward-pass).

Module and parameter names equal the official checkpoint's tensor names, so a state dict from
the safetensors files loads without renaming (experts after merging their TP shards).
Numerics follow SGLang's CUDA path: residual stream in the weight dtype; norms, router,
attention softmax and logits in fp32. There is no placement logic here: offloading and
quantization are transforms of a built model (offload.py, quantize.py).

Shape letters: B batch, T new tokens, S key positions (cache + new), D hidden, H query heads,
K kv heads, G query heads per kv head (H = K*G), Dh head dim, E experts, V vocab.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.config import Grok2Config
from app.engine.cpu_graph import GENERATION, CpuGraph
from app.engine.quantize import gated_mlp_kernel, qkv_kernel

if TYPE_CHECKING:
    import numpy as np

    from app.engine.plan import Plan

QUERY_CHUNK = 128  # queries per attention block: bounds the fp32 score memory (plan.py counts it)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Inside, PyTorch's CPU ops use `n` threads (None: unchanged), restored after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpu_gemv(single_row: bool) -> Iterator[None]:
    """Inside, PyTorch's CPU bf16/fp16 matmuls skip oneDNN when `single_row` (decode of one
    token): for x (1, K) @ W^T, ATen's own GEMV streams the weight twice as fast as oneDNN's
    (bf16 4096x1024 weights read cold: 19.5 vs 9.8 GB/s on 1 thread, 28.0 vs 17.8 on 2), and
    oneDNN is far faster from M = 8 up (512 rows: 20 vs 196 ms), so prefill keeps it. Both
    accumulate in fp32 and round once to bf16 (sums in a different order: a last-bit
    difference, as between any two BLAS). The setting is process-wide; the engine runs one
    forward at a time. GPU matmuls are not affected."""
    if not single_row or not torch.backends.mkldnn.is_available():
        yield
        return
    before = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(before, None, None, None)


def soft_cap(x: Tensor, cap: float) -> Tensor:
    return cap * torch.tanh(x / cap)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w in fp32, cast back (no 1+w offset; docs/grok2.md#norms)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # F.rms_norm is this very formula (same ops, same bits: xf * rsqrt(mean(xf^2) + eps)
        # * w), with less dispatch per call. On the CPU its bf16 kernel computes in fp32 and
        # rounds once, the same bits as the casts around it (tests/engine/test_model.py), in
        # one op instead of four; elsewhere the casts stay (not checked on other kernels).
        if x.device.type == "cpu" and x.dtype == self.weight.dtype:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class KVCache(nn.Module):
    """Preallocated keys and values for every layer: (layers, B, K, max_len, Dh)."""

    k: Tensor  # buffers, registered in __init__
    v: Tensor

    def __init__(self, cfg: Grok2Config, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_len = max_len

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, K, T, Dh) at positions start..start+T; return all keys/values so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"context of {end} tokens exceeds the cache's {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def update_layers(self, first_layer: int, start: int, k: np.ndarray,
                      v: np.ndarray) -> None:
        """Write numpy float32 k/v (n_layers, K, T, Dh) for layers first_layer.. (batch 1) at
        positions start..start+T of this float32 CPU cache (cpu_graph.py's output), through
        numpy views of the cache: after a graph run has streamed the weights, a numpy
        assignment costs a few microseconds and PyTorch's indexing ~40."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"context of {end} tokens exceeds the cache's {self.max_len}")
        layers = slice(first_layer, first_layer + k.shape[0])
        self.k.numpy()[layers, 0, :, start:end] = k
        self.v.numpy()[layers, 0, :, start:end] = v


@functools.lru_cache(maxsize=4)
def rope_table(head_dim: int, theta: float, length: int,
               device: torch.device) -> tuple[Tensor, Tensor]:
    """cos, sin (length, Dh/2) float32 for positions 0..length-1, built exactly as SGLang builds
    its cos/sin cache: inverse frequencies, positions, angles, cos and sin all in float32, on the
    device the attention runs on, and kept in float32 (docs/grok2.md#rope). Cached per device."""
    with torch.inference_mode(False):  # a normal tensor, usable inside and outside inference mode
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
        inv_freq = 1.0 / (theta ** exponents)  # (Dh/2,)
        t = torch.arange(length, dtype=torch.float32, device=device)  # (length,)
        angles = torch.outer(t, inv_freq)  # (length, Dh/2)
        return angles.cos(), angles.sin()


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float,
                 table_len: int = 0, needed: int | None = None) -> tuple[Tensor, Tensor]:
    """cos/sin (T, Dh/2) float32 at `positions`: rows of `rope_table`, so every position gets the
    values SGLang's table holds (a table covers max_position_embeddings, like SGLang's). Plain,
    unscaled RoPE: rope_type "original" follows SGLang and vLLM (docs/grok2.md#rope).
    `needed`: the table length the positions need (max + 1), when the caller knows it; else it
    is read from `positions` (one device sync)."""
    if needed is None:
        needed = int(positions.max()) + 1 if positions.numel() else 0
    cos, sin = rope_table(head_dim, float(theta), table_length(needed, table_len),
                          positions.device)
    return cos[positions], sin[positions]


def table_length(needed: int, table_len: int) -> int:
    """The RoPE table length for positions below `needed`: SGLang's max_position_embeddings
    (`table_len`) while that covers them, else the next power of two."""
    return table_len if needed <= table_len else 1 << (needed - 1).bit_length()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Half-split (NeoX) rotation over the full head_dim. x: (B, N, T, Dh). As SGLang's CUDA
    kernel: q/k are read as float32, rotated with the float32 table, rounded back to x.dtype."""
    half = x.shape[-1] // 2
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def length_temperature(positions: Tensor, length: int) -> Tensor:
    """log2(p)/log2(L) for 0-based query position p > L, else 1
    (docs/grok2.md#length-temperature)."""
    p = positions.to(torch.float32)
    scale = torch.log2(p.clamp(min=1.0)) / math.log2(length)
    return torch.where(p > length, scale, torch.ones_like(p))


@dataclass
class AttentionInputs:
    """What every layer's attention needs at these query positions, made once per forward
    (not once per layer): positions (T,) int64 first..first+T-1, their RoPE cos/sin (T, Dh/2)
    fp32, their length temperature (T,) fp32."""

    first: int
    positions: Tensor
    cos: Tensor
    sin: Tensor
    temperature: Tensor

    @classmethod
    def make(cls, cfg: Grok2Config, first: int, t: int,
             device: torch.device) -> AttentionInputs:
        positions = torch.arange(first, first + t, device=device)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta,
                                cfg.max_position_embeddings, needed=first + t)
        temperature = length_temperature(positions, cfg.attn_temperature_len)
        return cls(first, positions, cos, sin, temperature)

    def on(self, device: torch.device) -> AttentionInputs:
        """These inputs on `device` (layers of an offloaded model may sit on different
        devices); copies are made once per device and forward."""
        if self.positions.device == device:
            return self
        moved = self._moved.get(device)
        if moved is None:
            moved = AttentionInputs(self.first, self.positions.to(device),
                                    self.cos.to(device), self.sin.to(device),
                                    self.temperature.to(device))
            self._moved[device] = moved
        return moved

    _moved: dict = field(default_factory=dict, repr=False)


class Attention(nn.Module):
    def __init__(self, cfg: Grok2Config, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d, h, k, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, h * dh, bias=False)
        self.k_proj = nn.Linear(d, k * dh, bias=False)
        self.v_proj = nn.Linear(d, k * dh, bias=False)
        self.o_proj = nn.Linear(h * dh, d, bias=False)

    def forward(self, x: Tensor, positions: Tensor, cache: KVCache | None,
                inputs: AttentionInputs | None = None) -> Tensor:
        """x (B, T, D) at `positions` (T,) -> (B, T, D); with a cache, keys and values are
        written at positions[0].. and all cached ones are attended to. `inputs`: the
        per-forward values (made here when not given)."""
        cfg = self.cfg
        B, T, _ = x.shape
        K, G, Dh = cfg.num_key_value_heads, cfg.kv_groups, cfg.head_dim
        H = K * G
        if inputs is None:
            inputs = AttentionInputs.make(cfg, int(positions[0]), T, x.device)
        inputs = inputs.on(x.device)
        fused = qkv_kernel(self.q_proj, self.k_proj, self.v_proj)
        if fused is not None:  # quantized on the CPU: one onnxruntime call (quantize.py)
            qkv = fused(x.reshape(B * T, -1)).to(x.dtype).view(B, T, H + 2 * K, Dh)
            qk, v = qkv[:, :, :H + K], qkv[:, :, H + K:]  # (B, T, H+K, Dh), (B, T, K, Dh)
        else:
            qk = torch.cat([self.q_proj(x).view(B, T, H, Dh),
                            self.k_proj(x).view(B, T, K, Dh)], dim=2)  # (B, T, H+K, Dh)
            v = self.v_proj(x).view(B, T, K, Dh)
        # RoPE on q and k at once: the same per-element rotation and rounding, half the ops
        qk = apply_rope(qk, inputs.cos[:, None], inputs.sin[:, None]).transpose(1, 2)
        q, k, v = qk[:, :H], qk[:, H:], v.transpose(1, 2)  # (B, H|K|K, T, Dh)
        if cache is not None:
            k, v = cache.update(self.layer_idx, inputs.first, k, v)  # (B, K, S, Dh)
        q = q.reshape(B, K, G, T, Dh)
        if T <= QUERY_CHUNK:
            out = self._attend(q, k, v, inputs, 0, T)
        else:
            out = torch.empty(B, K, G, T, Dh, dtype=x.dtype, device=x.device)
            for i in range(0, T, QUERY_CHUNK):
                j = min(T, i + QUERY_CHUNK)
                out[:, :, :, i:j] = self._attend(q[:, :, :, i:j], k, v, inputs, i, j)
        out = out.view(B, K * G, T, Dh).transpose(1, 2).reshape(B, T, K * G * Dh)
        return self.o_proj(out)  # (B, T, D)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, inputs: AttentionInputs, i: int,
                j: int) -> Tensor:
        """Queries i..j-1 of this forward: q (B, K, G, t, Dh), k/v (B, K, S, Dh) ->
        (B, K, G, t, Dh). Scores in fp32."""
        cfg = self.cfg
        B, K, G, t, Dh = q.shape
        S = k.shape[2]
        # one batched matmul per kv head over its G query heads: (B*K, G*t, Dh) @ (B*K, Dh, S)
        s = torch.bmm(q.reshape(B * K, G * t, Dh).float(),
                      k.reshape(B * K, S, Dh).float().transpose(1, 2)).view(B, K, G, t, S)
        s = soft_cap(s * cfg.head_dim**-0.5, cfg.attn_logit_softcapping)
        # The length temperature comes after the cap in SGLang's Triton kernels (the reference);
        # its unified kernel and sglang-jax apply it before.
        s = s * inputs.temperature[i:j, None]
        if k.shape[2] - 1 > inputs.first + i:  # some key lies after the chunk's first query
            key_pos = torch.arange(k.shape[2], device=s.device)
            s = s.masked_fill(key_pos[None, :] > inputs.positions[i:j, None], float("-inf"))
        p = torch.softmax(s, dim=-1).view(B * K, G * t, S)
        return torch.bmm(p, v.reshape(B * K, S, Dh).float()).view(B, K, G, t, Dh).to(q.dtype)


def _device_of(linear: nn.Module) -> torch.device:
    """Where a Linear's (or QuantLinear's) weight lives."""
    w = linear.weight
    assert isinstance(w, Tensor)
    return w.device


class GatedMLP(nn.Module):
    """down(gelu_erf(gate(x)) * up(x)): the shared dense MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        fused = gated_mlp_kernel(self.gate_proj, self.up_proj, self.down_proj)
        if fused is not None:  # quantized on the CPU: one onnxruntime call (quantize.py)
            return fused(x.reshape(-1, x.shape[-1])).to(x.dtype).view(x.shape)
        return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))


class Expert(nn.Module):
    """w2(gelu_erf(w1(x)) * w3(x)): w1 gate, w3 up, w2 down (docs/grok2.md#experts). Exact-erf
    GELU as on SGLang's CUDA path; its NPU path, sglang-jax and llama.cpp use the tanh
    approximation."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        fused = gated_mlp_kernel(self.w1, self.w3, self.w2)
        if fused is not None:  # quantized on the CPU: one onnxruntime call (quantize.py)
            return fused(x.reshape(-1, x.shape[-1])).to(x.dtype).view(x.shape)
        return self.w2(F.gelu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    def __init__(self, cfg: Grok2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_local_experts, bias=False)
        self.experts = nn.ModuleList(
            Expert(cfg.hidden_size, cfg.moe_intermediate_size)
            for _ in range(cfg.num_local_experts)
        )

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, D) -> weights (N, k) fp32, expert ids (N, k). Router in fp32 with its soft cap;
        softmax over all experts; top-k probabilities are NOT renormalised (SGLang; llama.cpp
        renormalises and skips the cap, a deviation)."""
        logits = F.linear(x.float(), self.gate.weight.float())  # (N, E)
        probs = torch.softmax(soft_cap(logits, self.cfg.router_logit_softcapping), dim=-1)
        return torch.topk(probs, self.cfg.num_experts_per_tok, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        weights, ids = self.route(x)  # (N, k), (N, k)
        if x.shape[0] == 1 and x.device.type == "cpu":  # decode: index the k experts directly
            return self._one_token(x, weights[0], ids[0].tolist()).to(x.dtype).view(shape)
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in ids.unique().tolist():
            rows, slot = (ids == e).nonzero(as_tuple=True)
            y = self.experts[e](x[rows]).float()  # (n_e, D)
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return out.to(x.dtype).view(shape)


    def _one_token(self, x: Tensor, weights: Tensor, ids: list[int]) -> Tensor:
        """The sum of forward()'s loop for one token (N = 1), in the same order (ascending
        expert id, fp32, starting from zero: the same bits) without its index tensors."""
        out = None
        for slot, e in sorted(enumerate(ids), key=lambda item: item[1]):
            y = self.experts[e](x).float() * weights[slot]
            out = y if out is None else out + y
        assert out is not None  # num_experts_per_tok >= 1
        return out


class ResidualMoE(nn.Module):
    """The layer's feed-forward: (dense + moe) * combine_scale, combine_scale = 1/sqrt(2)
    (residual_moe, docs/grok2.md#dense-mlp-and-the-combination). It holds no parameters: the shared MLP and the routed experts stay
    children of the layer under the checkpoint's names (`mlp`, `block_sparse_moe`) and are
    passed in. This module only says how they combine and where they run: offloading swaps it
    for `offload.HybridFeedForward`, which shows the placement in `print(model)`."""

    def __init__(self, combine_scale: float) -> None:
        super().__init__()
        self.combine_scale = combine_scale

    def forward(self, m: Tensor, mlp: GatedMLP, moe: SparseMoE) -> Tensor:
        """m (B, T, D) -> (B, T, D), summed in fp32, returned in m's dtype."""
        dense = mlp(m).float()
        routed = moe(m).float()
        return ((dense + routed) * self.combine_scale).to(m.dtype)

    def extra_repr(self) -> str:
        return f"(mlp + block_sparse_moe) * {self.combine_scale:.6g}"


class DecoderLayer(nn.Module):
    """Sandwich norms: four RMSNorms per layer (docs/grok2.md#decoder-layer)."""

    def __init__(self, cfg: Grok2Config, layer_idx: int) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = GatedMLP(d, cfg.intermediate_size)
        self.block_sparse_moe = SparseMoE(cfg)
        self.feed_forward: nn.Module = ResidualMoE(cfg.moe_combine_scale)  # offloading swaps it
        self.pre_attn_norm = RMSNorm(d, eps)
        self.post_attn_norm = RMSNorm(d, eps)
        self.pre_moe_norm = RMSNorm(d, eps)
        self.post_moe_norm = RMSNorm(d, eps)

    def forward(self, h: Tensor, positions: Tensor, cache: KVCache | None,
                inputs: AttentionInputs | None = None) -> Tensor:
        """h (B, T, D) at `positions` (T,) -> (B, T, D); `inputs` as Attention.forward."""
        h = h + self.post_attn_norm(self.self_attn(self.pre_attn_norm(h), positions, cache,
                                                   inputs))
        m = self.pre_moe_norm(h)
        return h + self.post_moe_norm(self.feed_forward(m, self.mlp, self.block_sparse_moe))


class Grok2Body(nn.Module):
    def __init__(self, cfg: Grok2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Grok2(nn.Module):
    offload_plan: Plan  # set by app.engine.offload.install on an offloaded model
    # Threads for PyTorch's own CPU ops inside forward (None: torch's setting). 1 when
    # onnxruntime runs every CPU matmul on its own pools (quantize.build_cpu_kernels): the
    # glue ops between them are too small to share, and OpenMP threads spinning after them
    # took the cores onnxruntime's threads were woken for (mid-size int4, 2 threads, 512-token
    # prefill 392-407 -> 436-459 tokens/s, decode 17.4-18.8 -> 16.5-17.6 ms).
    torch_threads: int | None = None

    def __init__(self, cfg: Grok2Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = Grok2Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # untied
        self.cache: KVCache | None = None
        # Set by quantize.build_cpu_kernels: onnxruntime graphs of whole decoder layers
        # (cpu_graph.py, CPU-resident quantized layers); they show in print(model).
        self.cpu_graphs: nn.ModuleList | None = None
        # Set by quantize.build_cpu_kernels on an all-bf16 CPU model: its decode as one
        # compiled call over the weights in place (cpu_bf16.py); shows in print(model).
        self.cpu_decode: nn.Module | None = None
        self._graph_list: tuple[Any, list[CpuGraph]] = (None, [])  # graphs()' memo
        self._decode_fast: tuple | None = None  # forward's decode shortcut (graph, cache,
        # embedding weight, scale, the GENERATION it was checked at)

    def graphs(self) -> list[CpuGraph]:
        """The onnxruntime graphs of whole layers (cpu_graph.py), first layer first (the
        list is kept while cpu_graphs is the same ModuleList)."""
        held = self.cpu_graphs
        if self._graph_list[0] is not held:
            self._graph_list = (held, [g for g in held or () if isinstance(g, CpuGraph)])
        return self._graph_list[1]

    def setup_cache(self, max_len: int, batch: int = 1) -> KVCache:
        layer = self.model.layers[0]
        assert isinstance(layer, DecoderLayer)  # nn.ModuleList items are typed as Module
        w = layer.self_attn.k_proj.weight
        dtype = w.dtype if w.dtype.is_floating_point else torch.bfloat16
        if self.cpu_graphs is not None:  # graphs read and write float32 keys and values
            dtype = torch.float32
        self.cache = KVCache(self.config, batch, max_len, dtype, w.device)
        return self.cache

    def forward(self, input_ids: Tensor, start_pos: int | None = None,
                last_only: bool = False) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V) fp32 (or (B, 1, V) with last_only).

        start_pos None: a plain forward over positions 0..T-1, no cache. Otherwise the tokens sit
        at start_pos.. and attend to the cache set up by setup_cache()."""
        fast = self._decode_fast
        if (fast is not None and start_pos is not None and fast[4] == GENERATION[0]
                and input_ids.shape == (1, 1) and input_ids.is_cpu):
            # a decode token, nothing registered anywhere since the checks below passed for
            # this graph and cache: straight to the compiled step (cpu_step.py). After a
            # token has streamed the weights every Python op here costs 5-25 us, so the
            # checks are what the path below established, kept (~0.15 ms a token saved).
            logits = fast[0].decode_token(input_ids, start_pos, *fast[1:4])
            if logits is not None:
                return logits  # (1, 1, V)
        cfg = self.config
        cache = None if start_pos is None else self.cache
        if start_pos is not None and cache is None:
            raise RuntimeError("call setup_cache() before cached decoding")
        first = start_pos or 0
        emb = self.model.embed_tokens
        step: Any = self.cpu_decode
        if (step is not None and cache is not None and input_ids.shape == (1, 1)
                and input_ids.device.type == "cpu"):
            if not step.current():  # weights or modules replaced (offloading, a reload)
                self.cpu_decode = step = None  # eager from now on; its references dropped
            else:
                table = rope_table(cfg.head_dim, float(cfg.rope_theta), table_length(
                    max(first + 1, cache.max_len), cfg.max_position_embeddings),
                    torch.device("cpu"))  # the whole cache's positions: made once
                logits = step.decode_token(input_ids, first, cache, emb.weight,
                                           cfg.embedding_multiplier_scale, table)
                if logits is not None:  # the next decode tokens take the shortcut above
                    self._decode_fast = (step, cache, emb.weight,
                                         cfg.embedding_multiplier_scale, GENERATION[0])
                    return logits  # (1, 1, V)
        graphs = self.graphs()
        if graphs and (cache is None or input_ids.shape[0] != 1
                       or cache.k.dtype != torch.float32
                       or not all(g.current() for g in graphs)):
            graphs = []  # batches, uncached forwards, replaced weights, a cache set up before
            # the graphs were built (bf16): the eager layers
        rope: tuple[Tensor, Tensor] | None = None
        if graphs:
            rope = rope_table(cfg.head_dim, float(cfg.rope_theta), table_length(
                first + input_ids.shape[1], cfg.max_position_embeddings), torch.device("cpu"))
        if graphs and input_ids.shape[1] == 1 and input_ids.device.type == "cpu":
            # decode: embedding and all layers in one compiled call where it runs (one graph
            # of every layer and the head with a step: decode_token checks, else None; and
            # nothing else here: after a token, every host op costs tens of microseconds)
            logits = graphs[0].decode_token(input_ids, first, cache, emb.weight,
                                            cfg.embedding_multiplier_scale, rope)
            if logits is not None:
                # the graph, cache and embedding just passed every check: until any module
                # registers a parameter, buffer or submodule (GENERATION moves), the next
                # decode token may skip them (above; decode_token answers None there when
                # its RoPE table does not reach the position)
                self._decode_fast = (graphs[0], cache, emb.weight,
                                     cfg.embedding_multiplier_scale, GENERATION[0])
                return logits  # (1, 1, V)
        # One graph runs the whole model: skip AttentionInputs and the thread contexts (after
        # a run has streamed the weights, every host op between runs costs several times more)
        if len(graphs) == 1 and graphs[0].start == 0 and graphs[0].head:
            assert rope is not None and cache is not None
            h = emb(input_ids) * cfg.embedding_multiplier_scale  # (1, T, D)
            return graphs[0](h, first, cache, rope, last_only, QUERY_CHUNK)  # (1, T|1, V)
        layer0 = self.model.layers[0]
        assert isinstance(layer0, DecoderLayer)
        inputs = AttentionInputs.make(cfg, first, input_ids.shape[1],
                                      _device_of(layer0.self_attn.o_proj))
        with torch_threads(self.torch_threads), cpu_gemv(input_ids.numel() == 1):
            h = emb(input_ids.to(emb.weight.device)) * cfg.embedding_multiplier_scale  # (B, T, D)
            by_start = {g.start: g for g in graphs}
            i, layers = 0, self.model.layers
            while i < len(layers):
                g = by_start.get(i)
                if g is None:  # an eager layer (after a graph's float32, in the weights' dtype)
                    layer = layers[i]
                    assert isinstance(layer, DecoderLayer)  # nn.ModuleList items are Modules
                    h = layer(h.to(layer.pre_attn_norm.weight.dtype), inputs.positions, cache,
                              inputs)
                    i += 1
                    continue
                h = g(h, first, cache, rope, last_only, QUERY_CHUNK)  # layers g.start..end-1
                if g.head:
                    return h  # logits, soft-capped: (1, T, V) or (1, 1, V)
                i = g.end
            if last_only:
                h = h[:, -1:]
            x = self.model.norm(h)
            # SGLang folds 0.5 into the bf16 lm_head weight; scaling by a power of two is
            # exact, so multiplying the fp32 logits is the same. Then the final soft cap,
            # scale first (docs/grok2.md#output-head).
            z = self.lm_head(x.to(self.lm_head.weight.device)).float()
        return soft_cap(z * cfg.output_multiplier_scale, cfg.final_logit_softcapping)  # (B, T, V)
