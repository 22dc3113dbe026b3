"""Quantization: layouts round-trip, kernels match their dequantized weights, tiny models stay
close to float (tolerances stated per test)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.engine.plan import Format
from app.engine.quantize import (
    QuantLinear,
    codes_from_plain,
    int4_codes,
    pack_int4_cpu,
    plain_from_codes,
    quantize_model,
    unpack_int4_cpu,
)
from app.engine.weights import load_model
from tests.engine.conftest import write_weights_only


@pytest.mark.parametrize("n,k", [(128, 64), (96, 64), (80, 96), (16, 32)])
def test_int4_cpu_layout_round_trips(n, k):
    """unpack(pack(codes)) == codes, including the tail block of rows past a multiple of 64."""
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    assert torch.equal(unpack_int4_cpu(pack_int4_cpu(codes), n, k), codes)
    assert torch.equal(codes_from_plain(plain_from_codes(codes)), codes)


@pytest.mark.parametrize("kind,group,max_err", [("int8", 0, 0.01), ("int4", 64, 0.12)])
def test_quantlinear_error_on_gaussian_weights(kind, group, max_err):
    """Kernel output equals x @ dequantized^T to bf16 precision (1%); the weight error vs the
    float weight is within int8 1% / int4 g64 12% relative (Gaussian rows)."""
    torch.manual_seed(0)
    w, x = torch.randn(256, 128), torch.randn(5, 128)
    q = QuantLinear.from_weight(w, Format(kind, group))
    y = q(x)
    exact = x @ q.dequantized().T
    assert (y - exact).norm() / exact.norm() < 0.01
    assert (y - x @ w.T).norm() / (x @ w.T).norm() < max_err


def test_int4_grid_uses_bf16_scales():
    """Codes are 0..15 and dequantizing with the stored bf16 (scale, zero) is what kernels do."""
    w = torch.randn(32, 128)
    codes, scales = int4_codes(w, 128)
    assert codes.max() <= 15 and scales.dtype == torch.bfloat16 and scales.shape == (1, 32, 2)


def test_plain_layout_path_equals_cpu_layout():
    """The GPU-side (plain nibble) layout computes the same function, and converts back."""
    torch.manual_seed(1)
    q = QuantLinear.from_weight(torch.randn(64, 128), Format("int4", 128))
    codes = unpack_int4_cpu(q.qweight, 64, 128)
    plain = QuantLinear(128, 64, q.fmt, plain_from_codes(codes), q.scales, "plain")
    x = torch.randn(3, 128)
    a, b = plain(x), q(x)
    assert (a - b).norm() / b.norm() < 0.01  # both bf16 outputs, different summation order
    back = plain.placed(torch.device("cpu"))
    assert back.layout == "cpu" and torch.equal(back.qweight, q.qweight)


def test_quantize_model_keeps_router_and_sets_head_int8(ckpt):
    """Router gates stay nn.Linear; lm_head becomes int8, experts int4."""
    model = quantize_model(load_model(ckpt, dtype=torch.float32), "int4")
    layer = model.model.layers[0]
    assert type(layer.block_sparse_moe.gate) is nn.Linear
    assert model.lm_head.fmt.kind == "int8"
    assert layer.block_sparse_moe.experts[0].w1.fmt.kind == "int4"


def _peaked_model(folder, quant=None):
    model = load_model(folder, dtype=torch.float32)
    model.lm_head.weight.data *= 8  # sharper distributions make top-1 agreement meaningful
    return quantize_model(model, quant) if quant else model


@pytest.mark.parametrize("quant,max_kl,min_top1", [("int8", 0.02, 0.95), ("int4", 1.0, 0.4)])
def test_tiny_model_kl_and_top1(tmp_path, quant, max_kl, min_top1):
    """Against float32 on 128 positions: int8 KL < 0.02 nats, top-1 >= 95%; int4 (every
    Linear 4-bit, random weights have no redundancy) KL < 1.0, top-1 >= 40%."""
    folder = write_weights_only(tmp_path / "m", hidden_size=128, intermediate_size=256,
                                moe_intermediate_size=128)
    ids = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        p = torch.log_softmax(_peaked_model(folder)(ids), -1)
        q = torch.log_softmax(_peaked_model(folder, quant)(ids), -1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    top1 = (p.argmax(-1) == q.argmax(-1)).float().mean().item()
    assert kl < max_kl and top1 >= min_top1, (kl, top1)
