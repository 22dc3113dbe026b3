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
# The fields that fix the tensor shapes: a config.json without one of them is incomplete, and
# guessing Grok-2's value would blame the weights for a broken config.
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "intermediate_size", "moe_intermediate_size",
            "num_local_experts", "num_experts_per_tok")


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
        problems = [f"{name} must be positive" for name in REQUIRED if getattr(self, name) <= 0]
        if problems:  # the checks below divide by these
            raise ValueError("; ".join(problems))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{f.name} must be a finite number, found {value}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            problems.append("rms_norm_eps and rope_theta must be positive")
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
            type_name = known[key].type
            assert isinstance(type_name, str)  # a string: `from __future__ import annotations`
            kwargs[key] = _coerce(key, value, type_name)
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


def check_folder(folder: str | Path) -> Path:
    """The model folder as a Path, or one ModelFileError: no such folder, not a folder, or a
    folder this user may not read (named with the fix)."""
    folder = Path(folder).expanduser()
    try:
        if not folder.exists():
            raise ModelFileError(f"{folder}: no such folder; choose the folder that holds "
                                 "config.json and the *.safetensors files")
        if not folder.is_dir():
            raise ModelFileError(f"{folder}: not a folder; choose the folder that holds "
                                 "config.json, not a file in it")
        next(folder.iterdir(), None)  # a folder without read permission fails here
    except PermissionError as exc:
        raise ModelFileError(f"{folder}: cannot be read (permission denied); give your user "
                             "read access to the folder and its files") from exc
    return folder


def load_config(folder: str | Path) -> Grok2Config:
    """Read and check `folder`/config.json. Raises ModelFileError naming the folder or the
    file, the key and the fix: no such folder, unreadable, not JSON, a shape field missing
    (REQUIRED), a wrong type, a non-finite or impossible value, or a variant we cannot run."""
    path = check_folder(folder) / CONFIG_NAME
    if not path.is_file():
        raise ModelFileError(f"{path.parent}: has no config.json; point to the complete "
                             "Grok-2 folder (config.json and the *.safetensors files)")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except PermissionError as exc:
        raise ModelFileError(f"{path}: cannot be read (permission denied); give your user read "
                             "access to it") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc}); download the file again") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object; download the file again")
    missing = [key for key in REQUIRED if data.get(key) is None]
    if missing:
        raise ModelFileError(f"{path}: {', '.join(missing)} missing; the file is incomplete: "
                             "download config.json again")
    try:
        return Grok2Config.from_dict(data)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}; fix the value or download config.json again") from exc


def config_hash(folder: str | Path) -> str:
    """First 16 hex digits of sha256(config.json): part of a stored message's model identity."""
    return hashlib.sha256((Path(folder) / CONFIG_NAME).read_bytes()).hexdigest()[:16]
