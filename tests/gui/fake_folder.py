"""A fake Grok-2 folder (valid headers, tiny sizes) for the folder-check tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def write_safetensors(path: Path, name: str, shape: list[int]) -> None:
    size = 2 * shape[0] * shape[1]
    header = json.dumps({name: {"dtype": "BF16", "shape": shape,
                                "data_offsets": [0, size]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * size)


def make_grok_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(  # complete: every shape field is required
        {"vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "intermediate_size": 96, "moe_intermediate_size": 16, "num_local_experts": 8,
         "num_experts_per_tok": 2, "max_position_embeddings": 4096}))
    (root / "tokenizer.tok.json").write_text("{}")
    write_safetensors(root / "pytorch_model-00000-TP-common.safetensors", "embed", [8, 4])
    expert = "model.layers.0.block_sparse_moe.experts.0.w1.weight"
    for rank in range(2):  # 16 rows cut into 2 shards of 8
        write_safetensors(root / f"pytorch_model-00006-TP-{rank:03d}.safetensors", expert, [8, 4])
    return root
