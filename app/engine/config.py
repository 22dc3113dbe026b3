"""Grok-2 configuration, read straight from the checkpoint's `config.json`.

Field names are the file's own. `transformers.AutoConfig` is not used: the file says
`model_type: "git"`, which AutoConfig maps to an unrelated image-captioning config
(docs/grok2.md#config).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from app.errors import ModelFileError

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class Grok2Config:
    vocab_size: int = 131072
    hidden_size: int = 8192
    num_hidden_layers: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 32768  # the shared (dense, residual) MLP
    moe_intermediate_size: int = 16384  # each routed expert
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    residual_moe: bool = True
    max_position_embeddings: int = 131072
    rope_theta: float = 208533496.0
    rope_type: str = "original"
    original_max_position_embeddings: int = 8192
    scaling_factor: float = 16.0
    extrapolation_factor: float = 1.0
    attn_factor: float = 1.0
    beta_fast: float = 8.0
    beta_slow: float = 1.0
    rms_norm_eps: float = 1e-5
    embedding_multiplier_scale: float = 90.50966799187809
    output_multiplier_scale: float = 0.5
    attn_logit_softcapping: float = 30.0
    router_logit_softcapping: float = 30.0
    final_logit_softcapping: float = 50.0
    attn_temperature_len: int = 1024
    sliding_window_size: int = -1
    global_attn_every_n: int = 1
    torch_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        problems = []
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_experts_per_tok > self.num_local_experts:
            problems.append("num_experts_per_tok exceeds num_local_experts")
        if self.head_dim % 2:
            problems.append("head_dim must be even for RoPE")
        # Anything other than plain RoPE, full attention and the residual MoE would silently
        # compute a different model, so refuse it rather than guess.
        if self.rope_type not in ("original", "default"):
            problems.append(f"rope_type {self.rope_type!r} is not supported (expected 'original')")
        if self.sliding_window_size not in (-1, 0, None):
            problems.append("sliding_window_size is not supported (expected -1)")
        if self.global_attn_every_n != 1:
            problems.append("global_attn_every_n other than 1 is not supported")
        if not self.residual_moe:
            problems.append("residual_moe=false is not supported (Grok-2 uses true)")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size",
                     "moe_intermediate_size", "num_local_experts", "num_experts_per_tok"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def moe_combine_scale(self) -> float:
        return 1.0 / math.sqrt(2.0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grok2Config:
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in known or value is None:
                continue  # unknown keys (architectures, model_type, ...) are ignored
            kwargs[key] = _coerce(key, value, known[key].type)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _coerce(key: str, value: Any, type_name: str) -> Any:
    expected = {"int": int, "float": float, "bool": bool, "str": str}[type_name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ValueError(f"{key} should be {type_name}, found {value!r}")
    return value


def load_config(folder: str | Path) -> Grok2Config:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ModelFileError(f"{path}: config.json is missing; point to the complete Grok-2 folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc}); download the file again") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object; download the file again")
    try:
        return Grok2Config.from_dict(data)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc


def config_hash(folder: str | Path) -> str:
    """First 16 hex digits of sha256(config.json): part of a stored message's model identity."""
    return hashlib.sha256((Path(folder) / CONFIG_NAME).read_bytes()).hexdigest()[:16]
