"""The compiled decode step (app/engine/cpu_step.py): the layer graph's arithmetic for one
token, so its logits and KV cache are the graph's to float32 rounding and it tracks the
float64 reference exactly as well; it runs only where it should, and refuses what it must."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from app.engine import cpu_int4, cpu_kernels, cpu_step, quantize
from app.engine.quantize import build_cpu_kernels, quantize_model
from app.engine.weights import load_model
from tests.engine.conftest import write_weights_only
from tests.engine.reference import reference_forward
from tests.engine.test_cpu_graph import (
    IDS,
    _dequantized_state_dict,
    refuses_decoding_past_the_cache,
)

pytestmark = [
    pytest.mark.skipif(not cpu_kernels.available(), reason="onnxruntime not installed"),
    pytest.mark.skipif(
        not cpu_int4.available(),
        reason=f"{cpu_int4.ENV}=mlas turns cpu_int4 off" if os.environ.get(cpu_int4.ENV)
        else "needs numba and an AVX512-VNNI CPU"),
]

# every matmul input a multiple of 128 (the kernel's block): hidden 128, q heads 4 x 32
DIMS = {"hidden_size": 128, "num_attention_heads": 4, "head_dim": 32,
        "intermediate_size": 256, "moe_intermediate_size": 128}


@pytest.fixture(autouse=True)
def _nbits(monkeypatch):
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "nbits")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "nbits")


def _folder(tmp_path, kv_heads: int = 2, seed: int = 0):
    return write_weights_only(tmp_path / f"m{kv_heads}-{seed}", seed=seed,
                              num_key_value_heads=kv_heads, **DIMS)


def _model(folder, quant: str):
    m = quantize_model(load_model(folder, dtype=torch.bfloat16), quant)
    build_cpu_kernels(m)
    return m


def _run(m, ids: list[int], prefill: int, step: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (T, V) float64 of a prefill then one token at a time, and the KV cache's keys,
    with the graph's decode step on or off."""
    g = m.graphs()[0]
    saved = g.step
    if not step:
        g.step = None
    try:
        m.setup_cache(max_len=64)
        x = torch.tensor([ids])
        with torch.inference_mode():
            parts = [m(x[:, :prefill], start_pos=0)]
            parts += [m(x[:, t:t + 1], start_pos=t) for t in range(prefill, len(ids))]
    finally:
        g.step = saved
    return torch.cat(parts, dim=1)[0].double(), m.cache.k.clone()


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_decode_step_is_the_graph_to_float32_rounding(tmp_path, quant, kv_heads):
    """Prefill on the graph, then every decode token through the step: the logits and the
    cached keys are the graph's to ~1e-6 (measured 2.6e-7 to 4e-7 relative), except that
    now and then a rounding difference moves one int8 activation to the next integer
    (measured once in 12 models: 6e-4); against the float64 reference on the same
    dequantized weights the step is as close as the graph."""
    folder = _folder(tmp_path, kv_heads)
    m = _model(folder, quant)
    g = m.graphs()[0]
    assert g.step is not None and "decode: one numba call" in str(m)
    before = g.step.clock.copy()
    got, keys = _run(m, IDS, prefill=6, step=True)
    steps = g.step.clock - before
    assert steps[1] > steps[0] > 0  # the step ran (cycles in it, most in its products)
    graph, graph_keys = _run(m, IDS, prefill=6, step=False)
    assert ((got - graph).norm() / graph.norm()).item() < 1e-3
    assert (keys - graph_keys).abs().max().item() <= 1e-3 * graph_keys.abs().max().item()
    assert torch.equal(got.argmax(-1), graph.argmax(-1))
    want = reference_forward(_dequantized_state_dict(folder, m), m.config, IDS)
    err_step = ((got - want).norm() / want.norm()).item()
    err_graph = ((graph - want).norm() / want.norm()).item()
    assert err_step <= err_graph * 1.02 + 1e-6, (err_step, err_graph)


def test_a_long_context_is_the_graph_too(tmp_path):
    """Past ATTENTION_SPAN cached keys the step splits them into spans and merges their
    softmaxes: decoding after a 600-token prompt gives the graph's logits to float32
    rounding (measured 3.6e-7 relative)."""
    assert cpu_step.ATTENTION_SPAN < 300
    m = _model(_folder(tmp_path, kv_heads=1), "int4")
    ids = np.random.default_rng(3).integers(0, m.config.vocab_size, 606).tolist()
    results = []
    for on in (True, False):
        g = m.graphs()[0]
        saved = g.step
        if not on:
            g.step = None
        m.setup_cache(max_len=640)
        x = torch.tensor([ids])
        with torch.inference_mode():
            m(x[:, :600], start_pos=0)
            results.append(torch.cat([m(x[:, t:t + 1], start_pos=t)
                                      for t in range(600, 606)], dim=1)[0].double())
        g.step = saved
    step, graph = results
    assert ((step - graph).norm() / graph.norm()).item() < 1e-4


def test_layers_split_over_graphs_each_get_a_step(tmp_path, monkeypatch):
    """With room for one layer per graph: two graphs, each with its own step (the second
    hands its hidden state to the head's own kernel), whose logits are those of the same two
    graphs without steps (measured 2e-7 relative)."""
    from app.engine import cpu_graph

    folder = _folder(tmp_path)
    layer_bytes = cpu_graph._bytes(cpu_graph.layer_operands(
        _model(folder, "int8").model.layers[0], quantize.graph_operands))
    monkeypatch.setattr(cpu_graph, "MAX_GRAPH_BYTES", layer_bytes)
    m = _model(folder, "int8")
    graphs = m.graphs()
    assert [(g.start, g.end, g.head) for g in graphs] == [(0, 1, False), (1, 2, False)]
    assert all(g.step is not None for g in graphs)
    before = [g.step.clock[1] for g in graphs]
    split, _ = _run(m, IDS, prefill=6, step=True)
    assert all(g.step.clock[1] > b for g, b in zip(graphs, before, strict=True))
    steps = [g.step for g in graphs]
    for g in graphs:
        g.step = None
    graph, _ = _run(m, IDS, prefill=6, step=True)
    for g, step in zip(graphs, steps, strict=True):
        g.step = step
    assert ((split - graph).norm() / graph.norm()).item() < 1e-5


def _cache_copies(m):
    m.setup_cache(max_len=640)
    rng = np.random.default_rng(0)
    k = rng.standard_normal(m.cache.k[:, 0].shape).astype(np.float32)
    return k, k[::-1].copy()


def test_token_ids_embed_as_pytorch_does_and_threads_do_not_change_bits(tmp_path):
    """The step from a token id (embedding in the step, bf16 product rounded half to even)
    gives the very bits of the step from PyTorch's emb(ids) * scale; on one or two threads
    the same bits (each output is summed by one thread, the attention's key spans depend on
    the position only), at a short and a long context (three spans of keys); the cache is
    written at the position only."""
    m = _model(_folder(tmp_path), "int4")
    step = m.graphs()[0].step
    cfg = m.config
    emb = m.model.embed_tokens.weight
    assert step.embed_from(emb, cfg.embedding_multiplier_scale)
    from app.engine.model import rope_table

    cos, sin = (t.numpy() for t in rope_table(cfg.head_dim, float(cfg.rope_theta), 1024,
                                               torch.device("cpu")))
    k0, v0 = _cache_copies(m)
    for token, pos in ((0, 9), (5, 600), (250, 9), (cfg.vocab_size - 1, 600)):
        h = (emb[token] * cfg.embedding_multiplier_scale).float().numpy()
        outs = []
        for threads, by_id in ((2, True), (2, False), (1, True)):
            k, v = k0.copy(), v0.copy()
            step.threads = threads
            if by_id:
                out = step.token(np.array([[token]]), pos, k, v, cos, sin)
            else:
                out = step(h, pos, k, v, cos, sin)
            unchanged = np.ones(k.shape[2], bool)
            unchanged[pos] = False
            assert np.array_equal(k[:, :, unchanged], k0[:, :, unchanged])
            assert not np.array_equal(k[:, :, pos], k0[:, :, pos])
            outs.append(out)
        assert outs[0].shape == (cfg.vocab_size,)
        assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_bad_positions_and_ids_are_refused_and_leave_the_cache_alone(tmp_path):
    """Past the cache: the eager path's message, through the model; an id outside the
    vocabulary: one line naming it. Nothing is written in either case."""
    m = _model(_folder(tmp_path), "int4")
    refuses_decoding_past_the_cache(m)
    before = m.cache.k.clone()
    step = m.graphs()[0].step
    k, v = m.cache.k[:, 0].numpy(), m.cache.v[:, 0].numpy()
    table = np.zeros((8, m.config.head_dim // 2), np.float32)
    with pytest.raises(ValueError, match="token id 300 is outside the vocabulary"):
        step.token(np.array([[300]]), 3, k, v, table, table)
    assert torch.equal(m.cache.k, before)


def test_replaced_weights_are_seen(tmp_path):
    """A replaced layer weight makes the graph stale: the forward runs eagerly (the eager
    model's bits), never the step's stale copy; a replaced embedding is read anew."""
    folder = _folder(tmp_path)
    m, eager = _model(folder, "int8"), quantize_model(
        load_model(folder, dtype=torch.bfloat16), "int8")
    build_cpu_kernels(eager, layer_graphs=False)
    for model in (m, eager):
        norm = model.model.layers[1].post_moe_norm
        norm.weight = torch.nn.Parameter(norm.weight.detach() * 1.5)
    for model in (m, eager):
        model.setup_cache(max_len=16)
    x = torch.tensor([IDS[:6]])
    with torch.inference_mode():
        for model in (m, eager):
            model(x[:, :5], start_pos=0)
        assert torch.equal(m(x[:, 5:6], start_pos=5), eager(x[:, 5:6], start_pos=5))
    fresh = _model(folder, "int8")
    step = fresh.graphs()[0].step
    fresh.setup_cache(max_len=16)
    with torch.inference_mode():
        fresh(x[:, :5], start_pos=0)
        first = fresh(x[:, 5:6], start_pos=5)
        emb = fresh.model.embed_tokens
        emb.weight = torch.nn.Parameter(emb.weight.detach().flip(0))
        second = fresh(x[:, 5:6], start_pos=5)
    assert step.embedding is emb.weight and not torch.equal(first, second)


def test_the_variable_that_forces_matmulnbits_turns_the_step_off(tmp_path, monkeypatch):
    monkeypatch.setenv(cpu_int4.ENV, "mlas")
    m = _model(_folder(tmp_path), "int4")
    assert m.graphs()[0].step is None and "numba" not in str(m)


def test_layers_whose_inputs_are_not_multiples_of_128_keep_the_graph(ckpt):
    """The tiny test model (hidden 64): no step, the graph decodes."""
    m = _model(ckpt, "int4")
    assert m.graphs() and m.graphs()[0].step is None


def test_gelu_exp_and_tanh_are_accurate():
    """The step's own erf GELU (Abramowitz & Stegun 7.1.28), exp and tanh, against float64:
    GELU within 0.5 |g| 3e-7 plus float32 rounding, exp within 1e-9 relative, tanh 1e-9."""
    f = cpu_step.kernels()
    rng = np.random.default_rng(0)
    g = np.concatenate([rng.standard_normal(4000) * 3, [0, 1e-6, -1e-6, 5, -5, 10, -10, 40,
                                                        -40, 1e-30]]).astype(np.float32)
    gu = np.concatenate([g, np.ones_like(g)])
    out = np.empty((1, g.size), np.float32)
    f.gelu_mul(gu, g.size, out)
    want = torch.nn.functional.gelu(torch.from_numpy(g).double()).numpy()
    assert np.all(np.abs(out[0] - want) <= 0.5 * np.abs(g) * 3e-7 + np.abs(want) * 6e-8 + 1e-40)
    for x in np.concatenate([np.linspace(-80, 80, 2001), [0.0, 1e-12, -1e-12, 700, -700]]):
        assert abs(f.exp(x) - np.exp(x)) <= 1e-9 * np.exp(x)
        assert abs(f.tanh(x) - np.tanh(x)) <= 1e-9


def test_the_decode_shortcut_follows_a_new_cache_and_new_weights(tmp_path):
    """Grok2.forward's shortcut to the step (kept after the first decode token passed its
    checks) is dropped when anything registers a tensor or module: a new cache is read, not
    the old one, and replaced weights are seen (the same bits as a fresh model's)."""
    folder = _folder(tmp_path)
    m, fresh = _model(folder, "int4"), _model(folder, "int4")
    _run(m, IDS, prefill=6, step=True)
    assert m._decode_fast is not None
    other = IDS[::-1]
    got, _ = _run(m, other, prefill=6, step=True)  # setup_cache: a new cache
    assert m._decode_fast[1] is m.cache
    want, _ = _run(fresh, other, prefill=6, step=True)
    assert torch.equal(got, want)
    for model in (m, fresh):
        emb = model.model.embed_tokens
        emb.weight = torch.nn.Parameter(emb.weight.detach() * 0.5)
    model_cache = m.cache
    with torch.inference_mode():
        x = torch.tensor([[IDS[3]]])
        fresh.setup_cache(max_len=64)
        fresh.cache.k.copy_(model_cache.k)
        fresh.cache.v.copy_(model_cache.v)
        assert torch.equal(m(x, start_pos=20), fresh(x, start_pos=20))


def test_a_model_that_cannot_use_the_step_compiles_nothing(ckpt, monkeypatch):
    """The tiny model (hidden 64) gets no step, and building it does not even compile the
    kernels (readable says no first: cpu_step.available() is never asked)."""
    asked = []
    monkeypatch.setattr(cpu_step, "available", lambda: asked.append(1) or True)
    m = _model(ckpt, "int4")
    assert m.graphs() and m.graphs()[0].step is None and not asked


def test_wrong_arrays_and_negative_positions_are_refused_before_anything_runs(tmp_path):
    """The compiled code indexes without bounds checks, so a call checks first: a negative
    position, a cache of the wrong dtype, layer count or layout, a RoPE table too short or
    of another width, a hidden state of another size, float token ids: one ValueError each,
    nothing written."""
    m = _model(_folder(tmp_path), "int4")
    step = m.graphs()[0].step
    cfg = m.config
    step.embed_from(m.model.embed_tokens.weight, cfg.embedding_multiplier_scale)
    k0, v0 = _cache_copies(m)
    table = np.zeros((640, cfg.head_dim // 2), np.float32)
    h = np.zeros(cfg.hidden_size, np.float32)
    ids = np.array([[5]])
    bad = [
        ({"pos": -1}, "position -1 is negative"),
        ({"k": k0.astype(np.float64)}, "cached keys must be C-contiguous float32"),
        ({"k": k0[:1]}, r"cached keys must be .* \(>= 2,"),
        ({"v": np.asfortranarray(v0)}, "cached values must be C-contiguous"),
        ({"cos": table[:9], "sin": table[:9]}, "the RoPE table has 9 positions"),
        ({"cos": table[:, :4]}, "RoPE cos table must be"),
        ({"h": np.zeros(cfg.hidden_size + 1, np.float32)}, "the hidden state must be"),
        ({"ids": np.array([[5.7]])}, "token ids must be integers"),
    ]
    for change, message in bad:
        args = {"pos": 20, "k": k0.copy(), "v": v0.copy(), "cos": table, "sin": table, "h": h,
                "ids": ids}
        args.update(change)
        with pytest.raises(ValueError, match=message):
            if "h" in change:
                step(args["h"], args["pos"], args["k"], args["v"], args["cos"], args["sin"])
            else:
                step.token(args["ids"], args["pos"], args["k"], args["v"], args["cos"],
                           args["sin"])
        assert np.array_equal(args["k"], k0) or "k" in change
    with torch.inference_mode():  # through the model: the same one line
        m.setup_cache(max_len=16)
        m(torch.tensor([IDS[:3]]), start_pos=0)
        with pytest.raises(ValueError, match="position -1 is negative"):
            m(torch.tensor([[5]]), start_pos=-1)


def test_a_step_that_does_not_compile_leaves_decoding_on_the_graph(tmp_path, monkeypatch,
                                                                   caplog):
    """A compile failure (say, a numba that cannot lower this code) is one warning; the
    graph decodes; the model loads."""
    from app.engine import cpu_graph

    def broken(*args, **kwargs):
        raise RuntimeError("no lowering for this")

    monkeypatch.setattr(cpu_step.DecodeStep, "_run", broken)
    monkeypatch.setattr(cpu_graph, "_STEP_FAILED", [])
    with caplog.at_level("WARNING"):
        m = _model(_folder(tmp_path), "int4")
    assert m.graphs()[0].step is None
    assert "the compiled decode step did not build (RuntimeError: no lowering" in caplog.text
    logits, _ = _run(m, IDS, prefill=6, step=True)
    assert torch.isfinite(logits).all()
