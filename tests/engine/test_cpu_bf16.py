"""The compiled bf16 decode step (app/engine/cpu_bf16.py): model.py's bf16 forward rounding
point by rounding point, so it agrees with the eager bf16 decode to bf16 rounding and is as
close to the float64 reference; it runs only where it should and refuses what it must."""

from __future__ import annotations

import logging
import math

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.engine import cpu_bf16
from app.engine.quantize import build_cpu_kernels
from app.engine.weights import load_model
from tests.engine.conftest import write_weights_only
from tests.engine.reference import reference_forward
from tests.engine.test_cpu_graph import IDS, refuses_decoding_past_the_cache
from tests.engine.test_model import merged_state_dict

pytestmark = pytest.mark.skipif(not cpu_bf16.available(), reason="needs numba")


def _model(folder, step: bool = True):
    """The checkpoint in bf16 with its step built (any size: min_bytes 0), or without."""
    m = load_model(folder, dtype=torch.bfloat16)
    if step:
        m.cpu_decode = cpu_bf16.build(m, min_bytes=0)
        assert m.cpu_decode is not None
    return m


def _decode(m, ids: list[int], prefill: int, max_len: int = 64) -> tuple[torch.Tensor, ...]:
    """Logits (T, V) float64 of an eager prefill then one token at a time (teacher-forced),
    and the cache's keys and values."""
    m.setup_cache(max_len=max_len)
    x = torch.tensor([ids])
    with torch.inference_mode():
        parts = [m(x[:, :prefill], start_pos=0)]
        parts += [m(x[:, t:t + 1], start_pos=t) for t in range(prefill, len(ids))]
    return torch.cat(parts, dim=1)[0].double(), m.cache.k.clone(), m.cache.v.clone()


def _folder(tmp_path, kv_heads: int = 1, seed: int = 0, **overrides):
    return write_weights_only(tmp_path / f"m{kv_heads}-{seed}", seed=seed,
                              num_key_value_heads=kv_heads, **overrides)


def _close_in_bf16(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """The share of elements that differ by more than one bf16 step (2^-7 relative) plus
    `floor`."""
    far = (a.float() - b.float()).abs() > 2.0 ** -7 * b.float().abs() + floor
    return far.float().mean().item()


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_step_decode_is_the_eager_bf16_decode_to_bf16_rounding(tmp_path, kv_heads):
    """Prefill eagerly, then each token through the step or through PyTorch's ops: logits
    agree to bf16 rounding with the same greedy tokens; the cached keys and values agree to
    one bf16 step (sums in another order only); and against the float64 reference on the
    same weights the step is as close as the eager decode."""
    folder = _folder(tmp_path, kv_heads)
    ids = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79]
    stepped = _model(folder)
    got, k1, v1 = _decode(stepped, ids, 6)
    assert stepped.cpu_decode is not None and stepped.cpu_decode.clock[1] > 0  # it ran
    eager, k2, v2 = _decode(_model(folder, step=False), ids, 6)
    scale = eager.abs().max()
    assert (got - eager).abs().max() < 0.03 * scale, (got - eager).abs().max() / scale
    assert torch.equal(got.argmax(-1), eager.argmax(-1))
    assert _close_in_bf16(k1, k2) < 0.01 and _close_in_bf16(v1, v2) < 0.01
    assert not torch.equal(k1[:, :, :, 6:len(ids)], torch.zeros_like(k1[:, :, :, 6:len(ids)]))
    want = reference_forward(merged_state_dict(folder), stepped.config, ids)
    err_step = (got[6:] - want[6:]).abs().max()
    err_eager = (eager[6:] - want[6:]).abs().max()
    assert err_step < 1.5 * err_eager + 1e-3, (err_step, err_eager)


def test_a_long_context_past_the_temperature_length(tmp_path):
    """300 tokens (two attention spans of 256) with the length temperature on from position
    4: the step stays with the eager decode."""
    folder = _folder(tmp_path, 2, seed=1)
    ids = [(7 * i + 3) % 300 for i in range(300)]
    got, *_ = _decode(_model(folder), ids, 280, max_len=320)
    eager, *_ = _decode(_model(folder, step=False), ids, 280, max_len=320)
    scale = eager.abs().max()
    assert (got - eager).abs().max() < 0.03 * scale, (got - eager).abs().max() / scale
    assert (got.argmax(-1) == eager.argmax(-1)).float().mean() >= 0.95


def test_the_kernels_round_as_pytorch_does():
    """bf16(): PyTorch's float -> bfloat16 bits (ties to even, overflow to inf, NaN kept);
    gemv: bf16(W x) with fp32 sums, PyTorch's result or one bf16 step from it; gelu_mul:
    bf16(bf16(gelu(g)) * u) with the correctly rounded GELU for every bf16 g in +-[2^-10, 8]."""
    k = cpu_bf16.kernels()
    gen = torch.Generator().manual_seed(0)
    specials = torch.tensor([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 1.005859375,
                             3.3895e38, -3.3895e38, float("inf"), 1e-40, -1e-45],
                            dtype=torch.float32)
    xs = torch.cat([specials, torch.randn(5000, generator=gen) * 10.0 ** torch.randint(
        -30, 30, (5000,), generator=gen).float()])
    got = torch.tensor([k.bf16(np.float32(v)) for v in xs.tolist()], dtype=torch.float32)
    assert torch.equal(got.view(torch.int32), xs.to(torch.bfloat16).float().view(torch.int32))
    assert np.isnan(k.bf16(np.float32("nan")))

    w = torch.randn(96, 320, generator=gen).to(torch.bfloat16)
    x = torch.randn(320, generator=gen).to(torch.bfloat16)
    table = np.array([(w.data_ptr(), 64, 320), (w[64:].data_ptr(), 32, 320)], np.int64)
    y = np.empty(96, np.float32)
    k.gemv(table, 0, 2, x.float().numpy(), y)
    want = F.linear(x[None], w)[0].float()
    assert _close_in_bf16(torch.from_numpy(y), want) == 0
    assert (torch.from_numpy(y) == want).float().mean() > 0.9
    # rows over 4096 inputs are summed eight at a time (21 rows: groups and rows alone)
    w = torch.randn(21, 4352, generator=gen).to(torch.bfloat16)
    x = torch.randn(4352, generator=gen).to(torch.bfloat16)
    for threads in (1, 2):
        numba.set_num_threads(threads)
        y = np.empty(21, np.float32)
        k.gemv(np.array([(w.data_ptr(), 11, 4352), (w[11:].data_ptr(), 10, 4352)], np.int64),
               0, 2, x.float().numpy(), y)
        want = F.linear(x[None], w)[0].float()
        assert _close_in_bf16(torch.from_numpy(y), want) == 0
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    # GELU: every bf16 input from -8 to 8 (all 2 x 2^14 of them with |g| in [2^-10, 8]),
    # against the float64 erf GELU rounded to bf16 (what an accurate erf gives: SGLang's)
    bits = torch.arange(0x3A80, 0x4100, dtype=torch.int32)  # 2^-10 .. 8, positive
    g = torch.cat([bits, bits | 0x8000]).to(torch.int16).view(torch.bfloat16)
    u = torch.randn(g.numel(), generator=gen).to(torch.bfloat16)
    out = np.empty(g.numel(), np.float32)
    k.gelu_mul(torch.cat([g, u]).float().numpy(), g.numel(), out)
    gd = g.double()
    exact = (0.5 * gd * torch.special.erfc(-gd / math.sqrt(2))).to(torch.bfloat16)
    assert torch.equal(torch.from_numpy(out), (exact * u).float())
    ones = torch.ones_like(u)
    k.gelu_mul(torch.cat([g, ones]).float().numpy(), g.numel(), out)
    assert torch.equal(torch.from_numpy(out), exact.float())
    # PyTorch's own CPU GELU agrees at unit scale but for a few last bits
    g = torch.randn(20000, generator=gen).to(torch.bfloat16)
    out = np.empty(g.numel(), np.float32)
    k.gelu_mul(torch.cat([g, torch.ones_like(g)]).float().numpy(), g.numel(), out)
    assert (torch.from_numpy(out) == F.gelu(g).float()).float().mean() > 0.999


def test_threads_do_not_change_the_bits(tmp_path):
    """Rows and attention spans are split over the threads without changing any sum."""
    folder = _folder(tmp_path, 2, seed=2)
    ids = [(5 * i + 1) % 300 for i in range(270)]
    m = _model(folder)
    runs = []
    for threads in (1, 2):
        m.cpu_decode.threads = threads
        runs.append(_decode(m, ids, 262, max_len=288))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_bad_positions_and_ids_are_refused_and_leave_the_cache_alone(tmp_path):
    """A position past the cache: the eager path's one-line message; a token id outside the
    vocabulary or a negative position: one line too; the cache is not written."""
    m = _model(_folder(tmp_path))
    refuses_decoding_past_the_cache(m)
    step = m.cpu_decode
    m.setup_cache(max_len=8)
    before = m.cache.k.clone()
    with torch.inference_mode():
        with pytest.raises(ValueError, match="token id 300 is outside the vocabulary"):
            m(torch.tensor([[300]]), start_pos=0)
        with pytest.raises(ValueError, match="position -1 is negative"):
            step.decode_token(torch.tensor([[1]]), -1, m.cache, m.model.embed_tokens.weight,
                              m.config.embedding_multiplier_scale)
        with pytest.raises(ValueError, match="token ids must be integers"):
            step.run(np.zeros((1, 1), np.float32), 0, *step._views[1:])
        with pytest.raises(ValueError, match="cached keys must be writable C-contiguous"):
            step.run(np.zeros((1, 1), np.int64), 0, np.zeros((2, 1, 8, 16), np.float32),
                     *step._views[2:])
        frozen = step._views[1].copy()
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="cached keys must be writable"):
            step.run(np.zeros((1, 1), np.int64), 0, frozen, *step._views[2:])
        with pytest.raises(TypeError, match="the position must be an integer, got float"):
            step.run(np.zeros((1, 1), np.int64), 4.0, *step._views[1:])
        with pytest.raises(TypeError, match="got bool"):
            step.run(np.zeros((1, 1), np.int64), True, *step._views[1:])
    assert torch.equal(m.cache.k, before)


def test_replaced_weights_and_a_new_cache_are_followed(tmp_path):
    """After a weight is replaced (as the loader and offloading do: a new Parameter), decode
    runs eagerly on the new weight and the step is dropped; a new cache is written, not
    the old one."""
    folder = _folder(tmp_path)
    ids = IDS[:10]
    m = _model(folder)
    _decode(m, ids, 4)
    old_cache = m.cache
    _decode(m, ids, 4)
    assert m.cache is not old_cache and m._decode_fast[1] is m.cache

    q = m.model.layers[1].self_attn.q_proj
    q.weight = nn.Parameter(q.weight.detach() * 2, requires_grad=False)
    got, *_ = _decode(m, ids, 4)
    assert m.cpu_decode is None
    ref = _model(folder, step=False)
    ref.model.layers[1].self_attn.q_proj.weight = nn.Parameter(q.weight.detach().clone(),
                                                                 requires_grad=False)
    want, *_ = _decode(ref, ids, 4)
    assert torch.equal(got, want)


def test_only_an_all_bf16_cpu_model_large_enough_gets_a_step(tmp_path, ckpt, monkeypatch):
    """The demo-size checkpoint (under MIN_BYTES), a float32 or quantized model and the
    environment switch: no step, and nothing compiled; a model that gets one shows it."""
    def no_compile():
        raise AssertionError("compiled")

    m = load_model(ckpt, dtype=torch.bfloat16)
    with monkeypatch.context() as mp:
        mp.setattr(cpu_bf16, "kernels", no_compile)
        build_cpu_kernels(m)
        assert m.cpu_decode is None
        assert cpu_bf16.build(load_model(ckpt, dtype=torch.float32), min_bytes=0) is None
        from app.engine.quantize import quantize_model

        q = quantize_model(load_model(ckpt, dtype=torch.bfloat16), "int8")
        assert cpu_bf16.build(q, min_bytes=0) is None
        mp.setenv(cpu_bf16.ENV, "eager")
        assert cpu_bf16.build(load_model(ckpt, dtype=torch.bfloat16), min_bytes=0) is None
    m = _model(ckpt)
    assert "decode as one numba call (cpu_bf16)" in str(m)
    assert m.setup_cache(8).k.dtype == torch.bfloat16  # the eager path's own cache


def test_the_weights_keep_their_values_in_their_new_buffers(ckpt):
    """Building moves the matrices into huge-page-advised buffers: same values, so the eager
    path (prefill) computes what it did."""
    before = {n: p.detach().clone() for n, p in load_model(ckpt, dtype=torch.bfloat16)
              .state_dict().items()}
    m = _model(ckpt)
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    w = m.model.layers[0].self_attn.q_proj.weight
    assert not w.requires_grad and w.dtype == torch.bfloat16


def test_a_step_that_does_not_compile_leaves_decoding_eager(ckpt, monkeypatch, caplog):
    """A compile failure: one warning, no step, and decode works."""
    def broken():
        raise RuntimeError("LLVM is missing")

    monkeypatch.setattr(cpu_bf16, "kernels", broken)
    monkeypatch.setattr(cpu_bf16, "_FAILED", [])
    m = load_model(ckpt, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        assert cpu_bf16.build(m, min_bytes=0) is None
    assert "did not build (RuntimeError: LLVM is missing)" in caplog.text
    assert not cpu_bf16.available()  # not tried again in this process
    monkeypatch.setattr(cpu_bf16, "_FAILED", [])
    got, *_ = _decode(m, IDS[:8], 4)
    assert got.shape == (8, m.config.vocab_size)


def _layer(experts: int = 2):
    """One DecoderLayer with random bf16 weights at a size install_gemv takes (min_bytes 0)."""
    from app.engine.config import Grok2Config
    from app.engine.model import DecoderLayer
    from tests.engine.conftest import SMALL

    cfg = Grok2Config.from_dict({**SMALL, "hidden_size": 256, "intermediate_size": 4352,
                                 "moe_intermediate_size": 512, "num_local_experts": experts})
    torch.manual_seed(0)
    layer = DecoderLayer(cfg, 0).to(torch.bfloat16)
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer, cfg


def test_gemv_linears_decode_as_pytorch_does_and_prefill_with_it(tmp_path):
    """install_gemv swaps a layer's CPU bf16 Linears (not the router) for GemvLinear: it
    shows in print, the state dict is the same, one-row products agree with F.linear to one
    bf16 step (the down projection's 4352 inputs take the eight-row path), many rows are
    F.linear's own bits, and a whole layer's decode stays with the eager layer's."""
    from app.engine.cpu_bf16 import GemvLinear, install_gemv
    from app.engine.model import KVCache

    layer, cfg = _layer()
    plain, _ = _layer()
    before = {n: t.clone() for n, t in layer.state_dict().items()}
    assert install_gemv(layer, min_bytes=0) == 4 + 3 + 3 * cfg.num_local_experts
    assert isinstance(layer.mlp.down_proj, GemvLinear)
    assert type(layer.block_sparse_moe.gate) is torch.nn.Linear
    assert "one row: cpu_bf16 gemv" in str(layer)
    after = layer.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    down = layer.mlp.down_proj
    x = torch.randn(1, 1, 4352).to(torch.bfloat16)
    assert _close_in_bf16(down(x), F.linear(x, down.weight)) == 0
    xs = torch.randn(1, 7, 4352).to(torch.bfloat16)
    assert torch.equal(down(xs), F.linear(xs, down.weight))
    h = torch.randn(1, 9, 256).to(torch.bfloat16)
    outs = []
    for m in (layer, plain):
        cache = KVCache(cfg, 1, 16, torch.bfloat16, "cpu")
        with torch.inference_mode():
            m(h[:, :8], torch.arange(8), cache)
            outs.append(m(h[:, 8:], torch.tensor([8]), cache).float())
    got, want = outs
    assert (got - want).abs().max() <= 0.02 * want.abs().max()


def test_gemv_linears_only_where_they_help():
    """Below min_bytes, with the switch, or on float32 weights: nothing swapped."""
    from app.engine.cpu_bf16 import install_gemv

    layer, _ = _layer()
    assert install_gemv(layer) == 0  # far below MIN_BYTES
    assert install_gemv(layer.float(), min_bytes=0) == 0


def test_the_switch_turns_gemv_linears_off(monkeypatch):
    from app.engine.cpu_bf16 import install_gemv

    monkeypatch.setenv(cpu_bf16.ENV, "eager")
    layer, _ = _layer()
    assert install_gemv(layer, min_bytes=0) == 0


def test_storage_swapped_under_the_weights_never_crashes(tmp_path):
    """Storage replaced without registering anything (share_memory_(), `.data = ...`): the
    step keeps reading the buffers it was built on (the same logits), never freed memory;
    a GemvLinear follows its weight's new storage and refuses a weight of another shape
    to F.linear, whose answer it gives."""
    from app.engine.cpu_bf16 import install_gemv

    folder = _folder(tmp_path)
    m = _model(folder)
    before, *_ = _decode(m, IDS[:8], 4)
    m.share_memory()
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            mod.weight.data = mod.weight.data.clone()  # the old storage freed by PyTorch
    import gc

    gc.collect()
    after, *_ = _decode(m, IDS[:8], 4)
    assert torch.equal(before, after)

    layer, _ = _layer()
    install_gemv(layer, min_bytes=0)
    down = layer.mlp.down_proj
    x = torch.randn(1, 1, 4352).to(torch.bfloat16)
    down(x)  # memoized at the first weight's address
    down.weight.data = (down.weight.data * 2).contiguous()
    assert _close_in_bf16(down(x), F.linear(x, down.weight)) == 0
    down.weight = nn.Parameter(torch.randn(40, 4352).to(torch.bfloat16), requires_grad=False)
    assert torch.equal(down(x), F.linear(x, down.weight))  # (1, 1, 40): PyTorch's own
