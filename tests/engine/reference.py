"""A plain, obviously-correct float64 Grok-2 forward written from
docs/grok2.md#reference-pseudocode.

Loops over heads and tokens instead of batching, so it shares no code (and no bugs) with
app/engine/model.py. Takes a state dict with merged (unsharded) expert weights.
"""

from __future__ import annotations

import math

import torch


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def rope(x, pos, theta):
    """x: (Dh,) at position pos, half-split layout."""
    half = x.shape[0] // 2
    i = torch.arange(half, dtype=torch.float64)
    ang = pos * theta ** (-2.0 * i / x.shape[0])
    x1, x2 = x[:half], x[half:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()])


def reference_forward(sd: dict, cfg, ids: list[int]) -> torch.Tensor:
    """Logits (T, V) in float64 for one sequence."""
    w = {k: v.double() for k, v in sd.items()}
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps, T = cfg.rms_norm_eps, len(ids)
    h = w["model.embed_tokens.weight"][ids] * cfg.embedding_multiplier_scale
    for L in range(cfg.num_hidden_layers):
        p = f"model.layers.{L}."
        a = rms(h, w[p + "pre_attn_norm.weight"], eps)
        q = (a @ w[p + "self_attn.q_proj.weight"].T).view(T, H, Dh)
        k = (a @ w[p + "self_attn.k_proj.weight"].T).view(T, K, Dh)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).view(T, K, Dh)
        o = torch.zeros(T, H, Dh, dtype=torch.float64)
        for head in range(H):
            kv = head // (H // K)
            for i in range(T):
                qi = rope(q[i, head], i, cfg.rope_theta)
                s = torch.stack([qi @ rope(k[j, kv], j, cfg.rope_theta) for j in range(i + 1)])
                s = s / math.sqrt(Dh)
                s = 30.0 * torch.tanh(s / 30.0) if cfg.attn_logit_softcapping == 30.0 else \
                    cfg.attn_logit_softcapping * torch.tanh(s / cfg.attn_logit_softcapping)
                if i > cfg.attn_temperature_len:
                    s = s * math.log2(i) / math.log2(cfg.attn_temperature_len)
                pr = torch.softmax(s, dim=0)
                o[i, head] = (pr[:, None] * v[: i + 1, kv]).sum(0)
        attn = o.reshape(T, H * Dh) @ w[p + "self_attn.o_proj.weight"].T
        h = h + rms(attn, w[p + "post_attn_norm.weight"], eps)
        m = rms(h, w[p + "pre_moe_norm.weight"], eps)
        dense = (gelu_erf(m @ w[p + "mlp.gate_proj.weight"].T) * (m @ w[p + "mlp.up_proj.weight"].T)) \
            @ w[p + "mlp.down_proj.weight"].T
        cap = cfg.router_logit_softcapping
        r = cap * torch.tanh((m @ w[p + "block_sparse_moe.gate.weight"].T) / cap)
        P = torch.softmax(r, dim=-1)
        moe = torch.zeros_like(m)
        for t in range(T):
            for e in torch.topk(P[t], cfg.num_experts_per_tok).indices.tolist():
                ep = p + f"block_sparse_moe.experts.{e}."
                x = m[t]
                y = (gelu_erf(w[ep + "w1.weight"] @ x) * (w[ep + "w3.weight"] @ x))
                moe[t] += P[t, e] * (w[ep + "w2.weight"] @ y)  # no renormalisation
        h = h + rms((dense + moe) / math.sqrt(2.0), w[p + "post_moe_norm.weight"], eps)
    x = rms(h, w["model.norm.weight"], eps)
    z = (x @ w["lm_head.weight"].T) * cfg.output_multiplier_scale
    return cfg.final_logit_softcapping * torch.tanh(z / cfg.final_logit_softcapping)
