"""The tiny checkpoint is in the official layout: file names, tensor names, config, tokenizer."""

from __future__ import annotations

import json

from app.engine import load_tokenizer
from app.engine.tiny import write_tiny_checkpoint
from app.engine.weights import read_header


def test_official_file_layout(tmp_path):
    """15 common files + 3 expert files x 8 ranks, bf16, names as in
    docs/grok2.md#files-and-tensors."""
    folder = write_tiny_checkpoint(tmp_path / "m", n_merges=50)
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(files) == 39
    assert "pytorch_model-00000-TP-common.safetensors" in files
    assert "pytorch_model-00007-TP-007.safetensors" in files
    w2 = read_header(folder / "pytorch_model-00007-TP-003.safetensors")
    info = w2["model.layers.0.block_sparse_moe.experts.5.w2.weight"]
    cfg = json.loads((folder / "config.json").read_text())
    assert info.dtype == "BF16"
    assert info.shape == (cfg["hidden_size"], cfg["moe_intermediate_size"] // 8)
    assert cfg["model_type"] == "git" and cfg["architectures"] == ["Grok1ForCausalLM"]
    for key in ("rope_theta", "attn_temperature_len", "final_logit_softcapping",
                "router_logit_softcapping", "embedding_multiplier_scale", "residual_moe"):
        assert key in cfg


def test_tokenizer_file_format(tmp_path):
    """tokenizer.tok.json has regular/special token lists and loads with eos and separator."""
    folder = write_tiny_checkpoint(tmp_path / "m", n_merges=50)
    raw = json.loads((folder / "tokenizer.tok.json").read_text())
    assert raw["word_split"] == "V1"
    assert {"bytes", "token"} <= set(raw["regular_tokens"][0])
    tok = load_tokenizer(folder)
    assert tok.decode([tok.eos_id]) == "<|eos|>"
    assert tok.encode("<|separator|>") == [tok.separator_id]


def test_deterministic(tmp_path):
    """The same seed writes byte-identical weights."""
    a = write_tiny_checkpoint(tmp_path / "a", seed=3, n_merges=50)
    b = write_tiny_checkpoint(tmp_path / "b", seed=3, n_merges=50)
    name = "pytorch_model-00011-TP-common.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()


def test_bundled_demo_model_speaks_and_stops():
    """The bundled demo is the trained tiny model: it answers in words and ends its turn."""
    from app import paths
    from app.engine.engine import Engine
    from app.engine.generate import generate_text
    from app.engine.tiny import ensure_demo_checkpoint
    from app.messages import GenerationParams

    assert ensure_demo_checkpoint() == paths.resources_dir() / "demo_model"
    engine = Engine.demo()
    assert engine.info.is_demo and "not Grok-2" in engine.info.name
    text, _, done = generate_text(engine.stream_chat(
        [{"role": "user", "content": "How do I reverse a list in Python?"}],
        GenerationParams(temperature=0, max_tokens=200)))
    assert done.reason == "stop"
    assert "\ufffd" not in text and sum(c.isalpha() or c == " " for c in text) > 0.7 * len(text)
