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
    model.config = type(model.config).from_dict(
        {**model.config.to_dict(), "attn_temperature_len": 1000})
    for layer in model.model.layers:
        layer.self_attn.cfg = model.config
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


def test_query_chunks_and_cache_offsets_give_the_same_logits(ckpt, monkeypatch):
    """Prefill longer than QUERY_CHUNK (the scores are built 128 queries at a time, each chunk
    masking only the keys after its queries), a prefill split in two cached pieces, and decode
    all equal one unchunked forward."""
    from app.engine import model as model_module

    model = load_model(ckpt, device="cpu", dtype=torch.float32)
    torch.manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (1, 300))
    chunked = model(ids)
    monkeypatch.setattr(model_module, "QUERY_CHUNK", 1000)
    whole = model(ids)
    assert torch.allclose(chunked, whole, atol=1e-5), (chunked - whole).abs().max()
    monkeypatch.setattr(model_module, "QUERY_CHUNK", 64)
    model.setup_cache(max_len=320)
    parts = [model(ids[:, :150], start_pos=0), model(ids[:, 150:297], start_pos=150)]
    parts += [model(ids[:, t:t + 1], start_pos=t) for t in range(297, 300)]
    cached = torch.cat(parts, dim=1)
    assert torch.allclose(cached, whole, atol=1e-5), (cached - whole).abs().max()


def test_cpu_rms_norm_in_bf16_gives_the_fp32_path_bits():
    """RMSNorm on the CPU calls the bf16 kernel directly; it must round exactly as fp32
    arithmetic rounded once (the casts it replaces), for any scale of input."""
    import torch.nn.functional as F

    from app.engine.model import RMSNorm

    torch.manual_seed(4)
    for dim in (64, 1024, 8192):
        norm = RMSNorm(dim, 1e-5)
        norm.weight.data = (1 + 0.2 * torch.randn(dim)).to(torch.bfloat16)
        for scale in (1e-3, 1.0, 30.0, 1e4):
            x = (torch.randn(3, 5, dim) * scale).to(torch.bfloat16)
            want = F.rms_norm(x.float(), (dim,), norm.weight.float(), 1e-5).to(torch.bfloat16)
            assert torch.equal(norm(x), want)


def test_cpu_gemv_switches_onednn_off_for_one_row_only():
    """Decode of one token skips oneDNN for bf16 matmuls (ATen's GEMV streams faster); the
    setting is restored after, also when the forward raises, and prefill keeps oneDNN."""
    import pytest

    from app.engine.model import cpu_gemv

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    before = torch.backends.mkldnn.enabled
    with cpu_gemv(True):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled == before
    with cpu_gemv(False):
        assert torch.backends.mkldnn.enabled == before
    with pytest.raises(RuntimeError), cpu_gemv(True):
        raise RuntimeError("a failing forward")
    assert torch.backends.mkldnn.enabled == before


def test_bf16_decode_agrees_with_the_bf16_forward(ckpt):
    """A bf16 model's one-token decode (ATen GEMV) and its full forward (oneDNN) differ only
    by summation order: logits agree to bf16 rounding, the greedy tokens are the same."""
    model = load_model(ckpt, device="cpu", dtype=torch.bfloat16)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]])
    full = model(ids)
    model.setup_cache(max_len=32)
    parts = [model(ids[:, :6], start_pos=0)]
    parts += [model(ids[:, t:t + 1], start_pos=t) for t in range(6, ids.shape[1])]
    cached = torch.cat(parts, dim=1)
    scale = full.abs().max()
    assert (cached - full).abs().max() < 0.03 * scale, (cached - full).abs().max() / scale
    assert torch.equal(cached.argmax(-1), full.argmax(-1))
