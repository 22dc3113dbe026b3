"""Offloaded execution, simulated with CPU-only devices, equals the plain forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.engine.model import ResidualMoE
from app.engine.offload import HybridFeedForward, place_model
from app.engine.plan import GB, make_plan
from app.engine.quantize import quantize_model
from app.engine.weights import load_model
from tests.engine.conftest import write_weights_only

IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])


@pytest.fixture
def ckpt3(tmp_path):
    return write_weights_only(tmp_path / "m", num_hidden_layers=3)


def _plan(model, quant="float32", **changes):
    plan = make_plan(model.config, quant, 48 * GB, 256 * GB, context=64)
    defaults = {"gpu_mlp_layers": (0,), "embed_on_gpu": False, "stream_slots": 2,
                "gpu_expert_layers": ()}
    return dataclasses.replace(plan, **(defaults | changes))


def _pair(folder, quant=None, threshold=1 << 30, **changes):
    plain = load_model(folder, dtype=torch.float32)
    off = load_model(folder, dtype=torch.float32)
    if quant:
        quantize_model(plain, quant)
        quantize_model(off, quant)
    place_model(off, _plan(off, quant or "float32", **changes), "cpu", threshold=threshold)
    return plain, off


@torch.inference_mode()
def test_hybrid_decode_equals_plain(ckpt3):
    """Experts on the CPU tier, 2 of 3 shared MLPs there too, embedding on CPU: same logits,
    for the full forward and for prefill + cached decode."""
    plain, off = _pair(ckpt3)
    assert isinstance(off.model.layers[1].feed_forward, HybridFeedForward)
    assert torch.equal(off(IDS), plain(IDS))
    plain.setup_cache(32)
    off.setup_cache(32)
    assert torch.equal(off(IDS[:, :6], start_pos=0), plain(IDS[:, :6], start_pos=0))
    for t in range(6, 10):
        assert torch.equal(off(IDS[:, t:t + 1], start_pos=t), plain(IDS[:, t:t + 1], start_pos=t))


@torch.inference_mode()
@pytest.mark.parametrize("slots", [2, 16])
def test_prefill_streaming_equals_plain(ckpt3, slots):
    """Above the threshold experts are copied into rotating buffers (an expert or a layer
    ahead) and computed there: same logits."""
    plain, off = _pair(ckpt3, threshold=4, stream_slots=slots)
    assert torch.equal(off(IDS), plain(IDS))


@torch.inference_mode()
def test_quantized_offload_equals_quantized_plain(ckpt3):
    """The int4 model placed hybrid computes exactly what the int4 model computes unplaced."""
    plain, off = _pair(ckpt3, quant="int4", gpu_mlp_layers=(0, 2))
    assert torch.equal(off(IDS), plain(IDS))


@torch.inference_mode()
def test_streaming_out_of_memory_falls_back_to_cpu_experts(ckpt3, monkeypatch):
    """CUDA OOM in the streaming path disables streaming and the CPU path answers."""
    plain, off = _pair(ckpt3, threshold=4)
    streamer = off.model.layers[0].feed_forward.streamer

    def oom(*_args):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(streamer, "run", oom)
    assert torch.equal(off(IDS), plain(IDS))
    assert not streamer.enabled and streamer.threshold > 1 << 40


@torch.inference_mode()
def test_cpu_only_plan_keeps_plain_feed_forward(ckpt3):
    """With no GPU budget nothing is hooked beyond device moves; output unchanged."""
    plain = load_model(ckpt3, dtype=torch.float32)
    off = load_model(ckpt3, dtype=torch.float32)
    place_model(off, make_plan(off.config, "float32", 0, 64 * GB, context=64), "cuda")
    assert all(type(layer.feed_forward) is ResidualMoE for layer in off.model.layers)
    assert torch.equal(off(IDS), plain(IDS))


@torch.inference_mode()
def test_swap_keeps_checkpoint_state_dict(ckpt3):
    """The hybrid feed-forward is a module in the tree that owns no tensors: the state dict
    keeps the official checkpoint's names and tensors."""
    plain = load_model(ckpt3, dtype=torch.float32)
    off = load_model(ckpt3, dtype=torch.float32)
    before = off.state_dict()
    place_model(off, _plan(off), "cpu")
    after = off.state_dict()
    assert list(after) == list(before) == list(plain.state_dict())
    assert not any("feed_forward" in k for k in after)
    assert all(torch.equal(after[k], before[k]) for k in after)
    hybrid = off.model.layers[1].feed_forward
    assert isinstance(hybrid, HybridFeedForward)
    assert dict(off.model.layers[1].named_children())["feed_forward"] is hybrid
    assert list(hybrid.parameters()) == [] and list(hybrid.buffers()) == []


@torch.inference_mode()
def test_print_model_names_the_placement(ckpt3):
    """print(model) shows the swap: which parts run where, in which format, and the prefill
    path; the plain model shows its ResidualMoE."""
    plain = load_model(ckpt3, dtype=torch.float32)
    assert "(feed_forward): ResidualMoE((mlp + block_sparse_moe) * 0.707107)" in repr(plain)
    _, off = _pair(ckpt3, quant="int4", threshold=4, gpu_mlp_layers=(0,))
    text = repr(off)  # identical layers print once: "(0-2): 3 x DecoderLayer("
    assert "(0-2): 3 x DecoderLayer(" in text
    assert "(feed_forward): HybridFeedForward(router=cpu float32, " in text
    layer0 = repr(off.model.layers[0].feed_forward)
    assert "shared_mlp=cpu int4 g" in layer0
    assert "routed_experts=cpu int4 g" in layer0
    assert "prefill=streamed to cpu from 4 tokens (2 expert buffers)" in layer0
    off.model.layers[0].feed_forward.streamer.disable()
    assert "prefill=routed experts on the cpu" in repr(off.model.layers[0].feed_forward)
