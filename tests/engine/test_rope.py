"""RoPE numerics: our cos/sin table bit-matches the one SGLang builds (docs/grok2.md#rope)."""

from __future__ import annotations

import torch

from app.engine.config import Grok2Config
from app.engine.model import apply_rope, rope_cos_sin

POSITIONS = [0, 1025, 32767, 100000]


def sglang_cos_sin_cache(head_dim: int, base: int, max_position: int) -> torch.Tensor:
    """The table as SGLang's rotary embedding computes it, written out here independently:
    float32 inverse frequencies from an int base, float32 positions, einsum, cos | sin."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    t = torch.arange(max_position, dtype=torch.float)
    freqs = torch.einsum("i,j -> ij", t, inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def float64_cos_sin(positions: list[int], head_dim: int, theta: float) -> torch.Tensor:
    """The table computed in float64 and rounded once (what the code did before)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.tensor(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float()


def test_table_bit_matches_sglang_at_long_positions():
    """cos/sin at positions 0, 1025, 32767 and 100000 equal SGLang's float32 table exactly."""
    cfg = Grok2Config()  # the real Grok-2 config: head_dim 128, theta 208533496, 131072 positions
    want = sglang_cos_sin_cache(cfg.head_dim, int(cfg.rope_theta), cfg.max_position_embeddings)
    cos, sin = rope_cos_sin(torch.tensor(POSITIONS), cfg.head_dim, cfg.rope_theta,
                            cfg.max_position_embeddings)
    assert cos.dtype == sin.dtype == torch.float32
    assert torch.equal(torch.cat((cos, sin), dim=-1), want[POSITIONS])


def test_float64_table_is_not_what_sglang_uses():
    """The check above can fail: a float64 table differs from SGLang's by ~1e-3 at 100000."""
    cfg = Grok2Config()
    want = sglang_cos_sin_cache(cfg.head_dim, int(cfg.rope_theta), cfg.max_position_embeddings)
    old = float64_cos_sin(POSITIONS, cfg.head_dim, cfg.rope_theta)
    diff = (old - want[POSITIONS]).abs().max(dim=-1).values
    assert diff[0] == 0  # position 0: cos 1, sin 0 either way
    assert diff[-1] > 1e-3


def test_positions_past_the_table_still_follow_the_float32_recipe():
    """A position beyond max_position_embeddings gets the same float32 values, not an error."""
    cos, sin = rope_cos_sin(torch.tensor([5, 40]), 16, 208533496.0, table_len=32)
    want = sglang_cos_sin_cache(16, 208533496, 64)
    assert torch.equal(torch.cat((cos, sin), dim=-1), want[[5, 40]])


def test_apply_rope_rotates_in_float32_and_rounds_once():
    """bf16 q/k are rotated in float32 with the float32 table and rounded back to bf16 once."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 16).to(torch.bfloat16)
    cos, sin = rope_cos_sin(torch.tensor([0, 1025, 3000]), 16, 208533496.0, table_len=4096)
    got = apply_rope(x, cos, sin)
    x1, x2 = x.float()[..., :8], x.float()[..., 8:]
    want = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    assert torch.equal(apply_rope(x, *rope_cos_sin(torch.tensor([0, 0, 0]), 16, 1e4, 8)), x)
