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

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.config import Grok2Config
from app.engine.quantize import gated_mlp_kernel

if TYPE_CHECKING:
    from app.engine.plan import Plan

QUERY_CHUNK = 128  # queries per attention block: bounds the fp32 score memory (plan.py counts it)


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
        # * w), with less dispatch per call
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
                 table_len: int = 0) -> tuple[Tensor, Tensor]:
    """cos/sin (T, Dh/2) float32 at `positions`: rows of `rope_table`, so every position gets the
    values SGLang's table holds (a table covers max_position_embeddings, like SGLang's). Plain,
    unscaled RoPE: rope_type "original" follows SGLang and vLLM (docs/grok2.md#rope)."""
    needed = int(positions.max()) + 1 if positions.numel() else 0
    length = table_len if needed <= table_len else 1 << (needed - 1).bit_length()
    cos, sin = rope_table(head_dim, float(theta), length, positions.device)
    return cos[positions], sin[positions]


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


class Attention(nn.Module):
    def __init__(self, cfg: Grok2Config, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d, h, k, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, h * dh, bias=False)
        self.k_proj = nn.Linear(d, k * dh, bias=False)
        self.v_proj = nn.Linear(d, k * dh, bias=False)
        self.o_proj = nn.Linear(h * dh, d, bias=False)

    def forward(self, x: Tensor, positions: Tensor, cache: KVCache | None) -> Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        K, G, Dh = cfg.num_key_value_heads, cfg.kv_groups, cfg.head_dim
        q = self.q_proj(x).view(B, T, K * G, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        cos, sin = rope_cos_sin(positions.to(x.device), Dh, cfg.rope_theta,
                                cfg.max_position_embeddings)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, int(positions[0]), k, v)  # (B, K, S, Dh)
        q = q.view(B, K, G, T, Dh)
        out = torch.empty(B, K, G, T, Dh, dtype=x.dtype, device=x.device)
        for i in range(0, T, QUERY_CHUNK):
            j = min(T, i + QUERY_CHUNK)
            out[:, :, :, i:j] = self._attend(q[:, :, :, i:j], k, v, positions[i:j])
        out = out.view(B, K * G, T, Dh).transpose(1, 2).reshape(B, T, K * G * Dh)
        return self.o_proj(out)  # (B, T, D)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor) -> Tensor:
        """q (B, K, G, t, Dh), k/v (B, K, S, Dh) -> (B, K, G, t, Dh). Scores in fp32."""
        cfg = self.cfg
        s = torch.matmul(q.float(), k.float()[:, :, None].transpose(-1, -2))  # (B, K, G, t, S)
        s = soft_cap(s * cfg.head_dim**-0.5, cfg.attn_logit_softcapping)
        # The length temperature comes after the cap in SGLang's Triton kernels (the reference);
        # its unified kernel and sglang-jax apply it before.
        s = s * length_temperature(q_pos, cfg.attn_temperature_len).to(s.device)[:, None]
        key_pos = torch.arange(k.shape[2], device=s.device)
        s = s.masked_fill(key_pos[None, :] > q_pos.to(s.device)[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1)
        return torch.matmul(p, v.float()[:, :, None]).to(q.dtype)


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

    def forward(self, h: Tensor, positions: Tensor, cache: KVCache | None) -> Tensor:
        h = h + self.post_attn_norm(self.self_attn(self.pre_attn_norm(h), positions, cache))
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

    def __init__(self, cfg: Grok2Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = Grok2Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # untied
        self.cache: KVCache | None = None

    def setup_cache(self, max_len: int, batch: int = 1) -> KVCache:
        layer = self.model.layers[0]
        assert isinstance(layer, DecoderLayer)  # nn.ModuleList items are typed as Module
        w = layer.self_attn.k_proj.weight
        dtype = w.dtype if w.dtype.is_floating_point else torch.bfloat16
        self.cache = KVCache(self.config, batch, max_len, dtype, w.device)
        return self.cache

    def forward(self, input_ids: Tensor, start_pos: int | None = None,
                last_only: bool = False) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V) fp32 (or (B, 1, V) with last_only).

        start_pos None: a plain forward over positions 0..T-1, no cache. Otherwise the tokens sit
        at start_pos.. and attend to the cache set up by setup_cache()."""
        cfg = self.config
        cache = None if start_pos is None else self.cache
        if start_pos is not None and cache is None:
            raise RuntimeError("call setup_cache() before cached decoding")
        first = start_pos or 0
        positions = torch.arange(first, first + input_ids.shape[1], device=input_ids.device)
        emb = self.model.embed_tokens
        h = emb(input_ids.to(emb.weight.device)) * cfg.embedding_multiplier_scale  # (B, T, D)
        for layer in self.model.layers:
            h = layer(h, positions, cache)
        if last_only:
            h = h[:, -1:]
        x = self.model.norm(h)
        # SGLang folds 0.5 into the bf16 lm_head weight; scaling by a power of two is exact, so
        # multiplying the fp32 logits is the same. Then the final soft cap, scale first
        # (docs/grok2.md#output-head).
        z = self.lm_head(x.to(self.lm_head.weight.device)).float() * cfg.output_multiplier_scale
        return soft_cap(z, cfg.final_logit_softcapping)  # (B, T, V)
