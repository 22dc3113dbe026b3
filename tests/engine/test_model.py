"""The model file against the float64 reference written from docs/grok2.md."""

from __future__ import annotations

import torch

from app.engine import load_model
from app.engine.weights import CheckpointIndex, _Reader, index_folder, read_tensor
from tests.engine.reference import reference_forward

# float32 model vs float64 reference on the same (bf16-stored) weights; logits are O(1..10)
ATOL = 2e-4


def merged_state_dict(folder) -> dict[str, torch.Tensor]:
    index: CheckpointIndex = index_folder(folder)
    reader = _Reader()
    names = list(index.full) + list(index.shards)
    return {n: read_tensor(index, reader, n) for n in names}


def test_forward_matches_reference_past_temperature_len(ckpt):
    """Logits match the float64 reference, including query positions past attn_temperature_len."""
    model = load_model(ckpt, device="cpu", dtype=torch.float32)
    ids = [5, 17, 250, 3, 99, 42, 7, 7, 7, 120, 1, 64]  # 12 > attn_temperature_len=4
    got = model(torch.tensor([ids]))[0].double()
    want = reference_forward(merged_state_dict(ckpt), model.config, ids)
    assert got.shape == (len(ids), model.config.vocab_size)
    assert torch.allclose(got, want, atol=ATOL), (got - want).abs().max()


def test_temperature_changes_logits(ckpt):
    """The length temperature is live: turning it off changes logits only past its length."""
    model = load_model(ckpt, device="cpu", dtype=torch.float32)
    ids = torch.tensor([list(range(10, 22))])
    base = model(ids)
    for layer in model.model.layers:
        layer.self_attn.cfg = type(layer.self_attn.cfg).from_dict(
            {**layer.self_attn.cfg.to_dict(), "attn_temperature_len": 1000})
    off = model(ids)
    assert torch.allclose(base[0, :5], off[0, :5], atol=1e-6)  # positions <= 4 unaffected
    assert not torch.allclose(base[0, 5:], off[0, 5:], atol=1e-4)


def test_cached_decode_equals_full_forward(ckpt):
    """Prefill then token-by-token decode with the KV cache gives the full forward's logits."""
    model = load_model(ckpt, device="cpu", dtype=torch.float32)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
    full = model(ids)
    model.setup_cache(max_len=32)
    parts = [model(ids[:, :4], start_pos=0)]
    for t in range(4, ids.shape[1]):
        parts.append(model(ids[:, t : t + 1], start_pos=t))
    cached = torch.cat(parts, dim=1)
    assert torch.allclose(cached, full, atol=1e-5), (cached - full).abs().max()


def test_last_only_and_batch(ckpt):
    """last_only returns the last position; batched rows equal single-row forwards."""
    model = load_model(ckpt, device="cpu", dtype=torch.float32)
    a, b = [1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4]
    batch = model(torch.tensor([a, b]))
    assert torch.allclose(batch[1], model(torch.tensor([b]))[0], atol=1e-5)
    last = model(torch.tensor([a]), last_only=True)
    assert last.shape[1] == 1 and torch.allclose(last[0, 0], batch[0, -1], atol=1e-5)


def test_router_is_not_renormalised(ckpt):
    """Top-2 weights are the softmax over all experts, summing to less than one."""
    model = load_model(ckpt, device="cpu", dtype=torch.float32)
    moe = model.model.layers[0].block_sparse_moe
    weights, ids = moe.route(torch.randn(16, model.config.hidden_size))
    assert ids.shape == (16, 2)
    assert (weights.sum(-1) < 1 - 1e-6).all()


def test_single_token_moe_equals_the_general_dispatch():
    """Decode's direct indexing of the k chosen experts gives the same bits as the general
    (unique / nonzero / index_add_) loop: same experts, same order, same fp32 sums."""
    from app.engine.config import Grok2Config
    from app.engine.model import SparseMoE

    cfg = Grok2Config.from_dict({"hidden_size": 64, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "num_key_value_heads": 1,
                                 "head_dim": 32, "intermediate_size": 128,
                                 "moe_intermediate_size": 96, "vocab_size": 64,
                                 "num_local_experts": 8, "num_experts_per_tok": 2})
    torch.manual_seed(0)
    moe = SparseMoE(cfg).to(torch.bfloat16)
    for _ in range(5):
        x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
        fast = moe(x)
        flat = x.reshape(1, 64)
        weights, ids = moe.route(flat)
        out = torch.zeros(flat.shape, dtype=torch.float32)
        for e in ids.unique().tolist():
            rows, slot = (ids == e).nonzero(as_tuple=True)
            out.index_add_(0, rows, moe.experts[e](flat[rows]).float() * weights[rows, slot, None])
        assert torch.equal(fast, out.to(x.dtype).view(x.shape))
