"""A tiny Grok-2 checkpoint in exactly the official layout (random, or trained for the demo).

Same file names (`pytorch_model-000NN-TP-common.safetensors`, expert shards
`-TP-000..007`), tensor names, bf16 storage, config.json fields and tokenizer.tok.json format
as xai-org/grok-2 (docs/grok2.md#files-and-tensors), at toy sizes. The tests and the demo mode
use it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from app import paths
from app.engine.config import Grok2Config

TP = 8
DEMO_VERSION = "2"  # bump when the demo checkpoint's recipe changes

TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "moe_intermediate_size": 64,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096,
    "embedding_multiplier_scale": 8.0,
    "attn_temperature_len": 1024,
}

# file number -> tensor name pattern (docs/grok2.md#files-and-tensors); {i} layer, {e} expert
COMMON_FILES = {
    0: ["model.embed_tokens.weight"],
    1: ["lm_head.weight"],
    2: ["model.norm.weight"],
    3: ["model.layers.{i}.mlp.gate_proj.weight"],
    4: ["model.layers.{i}.mlp.down_proj.weight"],
    5: ["model.layers.{i}.mlp.up_proj.weight"],
    9: ["model.layers.{i}.self_attn.k_proj.weight"],
    10: ["model.layers.{i}.self_attn.o_proj.weight"],
    11: ["model.layers.{i}.self_attn.q_proj.weight"],
    12: ["model.layers.{i}.self_attn.v_proj.weight"],
    13: ["model.layers.{i}.pre_attn_norm.weight"],
    14: ["model.layers.{i}.post_attn_norm.weight"],
    15: ["model.layers.{i}.pre_moe_norm.weight"],
    16: ["model.layers.{i}.post_moe_norm.weight"],
    17: ["model.layers.{i}.block_sparse_moe.gate.weight"],
}
EXPERT_FILES = {6: "w1", 7: "w2", 8: "w3"}


def common_name(n: int) -> str:
    return f"pytorch_model-{n:05d}-TP-common.safetensors"


def shard_name(n: int, rank: int) -> str:
    return f"pytorch_model-{n:05d}-TP-{rank:03d}.safetensors"


def _random_weights(cfg: Grok2Config, seed: int) -> dict[str, torch.Tensor]:
    """Random weights scaled so activations stay O(1) and routing/attention are not uniform."""
    from app.engine.weights import build_meta_model

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in build_meta_model(cfg).state_dict(keep_vars=True).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
        elif name.endswith("embed_tokens.weight"):
            t = torch.randn(p.shape, generator=gen) / cfg.embedding_multiplier_scale
        else:
            gain = 4.0 if name.endswith("gate.weight") else 1.0
            t = gain * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
        out[name] = t.to(torch.bfloat16)
    return out


def _layer_names(pattern: str, cfg: Grok2Config) -> list[str]:
    if "{i}" not in pattern:
        return [pattern]
    return [pattern.format(i=i) for i in range(cfg.num_hidden_layers)]


def _expert_names(w: str, cfg: Grok2Config) -> list[str]:
    return [f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"
            for i in range(cfg.num_hidden_layers) for e in range(cfg.num_local_experts)]


def write_weights(folder: Path, cfg: Grok2Config, weights: dict[str, torch.Tensor],
                  sharded: bool = True) -> None:
    """Write `weights` in the official file layout (experts TP-8 sharded unless told not to)."""
    meta = {"format": "pt"}
    for n, patterns in COMMON_FILES.items():
        names = [name for pat in patterns for name in _layer_names(pat, cfg)]
        save_file({k: weights[k].contiguous() for k in names}, folder / common_name(n), meta)
    for n, w in EXPERT_FILES.items():
        names = _expert_names(w, cfg)
        if not sharded:
            save_file({k: weights[k].contiguous() for k in names}, folder / common_name(n), meta)
            continue
        dim = 1 if w == "w2" else 0
        for rank in range(TP):
            part = {k: weights[k].chunk(TP, dim=dim)[rank].contiguous() for k in names}
            save_file(part, folder / shard_name(n, rank), meta)


def config_json(cfg: Grok2Config) -> dict[str, Any]:
    data = {"architectures": ["Grok1ForCausalLM"], "model_type": "git"}
    data.update(cfg.to_dict())
    return data


def write_tiny_checkpoint(folder: str | Path, seed: int = 0, *, sharded: bool = True,
                          n_merges: int = 400, **overrides: Any) -> Path:
    """Write config.json, tokenizer.tok.json and the weights; return the folder."""
    from app.engine.tok_train import build_tok_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = (paths.resources_dir() / "demo-corpus.txt").read_text(encoding="utf-8")
    tok = build_tok_json(corpus, n_merges)
    n_ids = 1 + max(t["token"] for t in tok["regular_tokens"] + tok["special_tokens"])
    fields = {**TINY_CONFIG, "vocab_size": n_ids, **overrides}
    cfg = Grok2Config.from_dict(fields)
    if sharded and cfg.moe_intermediate_size % TP:
        raise ValueError(f"moe_intermediate_size must be a multiple of {TP} for TP shards")
    (folder / "tokenizer.tok.json").write_text(json.dumps(tok), encoding="utf-8")
    write_weights(folder, cfg, _random_weights(cfg, seed), sharded=sharded)
    (folder / "config.json").write_text(json.dumps(config_json(cfg), indent=2), encoding="utf-8")
    return folder


def train_demo(folder: Path, steps: int = 300, seed: int = 0) -> float:
    """Teach a tiny checkpoint the demo corpus (next-token cross-entropy, AdamW), so the demo
    answers in words rather than noise; returns the final loss. About 15 s on two cores."""
    from app.engine.tokenizer import load_tokenizer
    from app.engine.weights import load_model

    ids = torch.tensor(load_tokenizer(folder).encode(
        (paths.resources_dir() / "demo-corpus.txt").read_text(encoding="utf-8")))
    model = load_model(folder, dtype=torch.float32).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen, span, batch, loss = torch.Generator().manual_seed(seed), 64, 16, torch.tensor(0.0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - span - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + span] for s in starts])  # (B, T)
        y = torch.stack([ids[s + 1 : s + span + 1] for s in starts])  # (B, T)
        logits = model(x)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()}
    write_weights(folder, model.config, weights)
    return float(loss.detach())


def write_demo_checkpoint(folder: str | Path) -> Path:
    """The demo model: the tiny checkpoint trained on resources/demo-corpus.txt."""
    folder = write_tiny_checkpoint(folder, seed=1234, n_merges=1000)
    train_demo(folder)
    (folder / "DEMO_VERSION").write_text(DEMO_VERSION)
    return folder


def ensure_demo_checkpoint() -> Path:
    """The built-in demo model: bundled in resources/demo_model (read-only is fine), or, in a
    checkout without it, written once to the cache folder."""
    bundled = paths.resources_dir() / "demo_model"
    if (bundled / "DEMO_VERSION").is_file():
        return bundled
    folder = paths.demo_model_dir()
    marker = folder / "DEMO_VERSION"
    if marker.is_file() and marker.read_text().strip() == DEMO_VERSION:
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_demo_checkpoint(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


if __name__ == "__main__":  # python -m app.engine.tiny: rebuild the bundled demo model
    target = Path(__file__).resolve().parents[2] / "resources" / "demo_model"
    if target.exists():
        shutil.rmtree(target)
    print(f"wrote {write_demo_checkpoint(target)}")
