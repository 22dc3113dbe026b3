"""onnxruntime MatMulNBits kernels: the same weights as the stored format (exact zero points),
int8-activation error within a stated tolerance, exact fallback for weights it cannot take."""

from __future__ import annotations

import pytest
import torch

from app.engine import cpu_kernels, quantize
from app.engine.plan import Format
from app.engine.quantize import QuantLinear, int4_codes

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="onnxruntime not installed")


@pytest.mark.parametrize("n,k,group", [(256, 512, 128), (96, 192, 64), (48, 96, 32)])
def test_int4_zero_points_are_exact_integers(n, k, group):
    """The quantizer's bf16 zero is (8 - zp) * scale with zp an integer 0..15, exactly: the
    pair (scale, zero) and MatMulNBits' (scale, zp) describe the same weights."""
    torch.manual_seed(0)
    _, scales = int4_codes(torch.randn(n, k) + 0.3, group)
    s, z = scales[..., 0].double(), scales[..., 1].double()
    zp = 8 - z / s
    assert torch.equal(zp, zp.round()) and zp.min() >= 0 and zp.max() <= 15


@pytest.mark.parametrize("kind,group", [("int4", 128), ("int4", 32), ("int8", 0)])
def test_nbits_matches_dequantized_weights(kind, group, monkeypatch):
    """y = x @ W_deq^T to within 2% (int8 activations per block: llama.cpp's Q8 dot products;
    measured 0.5-0.8%); the kernel is really the onnxruntime one."""
    monkeypatch.setitem(quantize.CPU_KERNELS, kind, "nbits")
    torch.manual_seed(1)
    q = QuantLinear.from_weight(torch.randn(160, 256), Format(kind, group))
    assert quantize.nbits_kernel(q) is not None
    x = torch.randn(5, 256)
    exact = x.double() @ q.dequantized(torch.float64).T
    y = q(x)
    assert y.dtype == x.dtype and y.shape == (5, 160)
    assert (y.double() - exact).norm() / exact.norm() < 0.02


def test_old_zero_points_stay_on_the_exact_pytorch_kernel(monkeypatch):
    """An int4 weight whose zeros are off the integer grid (an older quantizer's) gets no
    MatMulNBits (never an approximated weight): it computes exactly what int4pack computes."""
    torch.manual_seed(2)
    q = QuantLinear.from_weight(torch.randn(64, 128), Format("int4", 128))
    q.scales[..., 1] += q.scales[..., 0] * 0.25  # a zero no integer zero point gives
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "nbits")
    fresh = QuantLinear.from_weight(torch.randn(64, 128), Format("int4", 128))
    model = torch.nn.Sequential(q, fresh)
    assert quantize.build_cpu_kernels(model) == 1 and quantize.exact_fallbacks(model) == 1
    assert quantize.nbits_kernel(q) is None
    x = torch.randn(3, 128)
    y = q(x)
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "int4pack")
    assert torch.equal(y, q(x))


def test_kernel_is_rebuilt_when_weights_change(monkeypatch):
    """A cached kernel belongs to the tensors it was built from: new weights, new kernel."""
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "nbits")
    q = QuantLinear.from_weight(torch.randn(32, 128), Format("int8"))
    first = quantize.nbits_kernel(q)
    assert quantize.nbits_kernel(q) is first
    q.qweight = -q.qweight  # what the loader does: new tensors, never writes in place
    second = quantize.nbits_kernel(q)
    assert second is not first
    x = torch.randn(1, 128)
    exact = x.double() @ q.dequantized(torch.float64).T
    assert (q(x).double() - exact).norm() / exact.norm() < 0.02


def test_build_cpu_kernels_builds_every_cpu_quant_linear(monkeypatch):
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "nbits")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "nbits")
    model = torch.nn.Sequential(QuantLinear.from_weight(torch.randn(64, 128), Format("int4", 64)),
                                QuantLinear.from_weight(torch.randn(32, 64), Format("int8")))
    assert quantize.build_cpu_kernels(model) == 2
    assert all(quantize._NBITS[m][2] is not None for m in model)


@pytest.mark.parametrize("kind,group", [("int4", 64), ("int8", 0)])
def test_fused_expert_matches_the_three_matmuls(kind, group, monkeypatch):
    """An expert's w2(gelu(w1 x) * w3 x) in one onnxruntime graph equals the module-by-module
    computation on the same weights within int8-activation error (2%); without the "nbits"
    kernel the expert runs its three modules."""
    from app.engine.model import Expert

    monkeypatch.setitem(quantize.CPU_KERNELS, kind, "nbits")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "nbits")
    torch.manual_seed(3)
    expert = Expert(128, 256)
    for name in ("w1", "w2", "w3"):
        w = getattr(expert, name).weight.detach()
        quantize.set_module(expert, name, QuantLinear.from_weight(w, Format(kind, group)))
    x = torch.randn(1, 3, 128)
    deq = {n: getattr(expert, n).dequantized(torch.float64) for n in ("w1", "w2", "w3")}
    xd = x.double()
    exact = torch.nn.functional.gelu(xd @ deq["w1"].T) * (xd @ deq["w3"].T) @ deq["w2"].T
    assert quantize.gated_mlp_kernel(expert.w1, expert.w3, expert.w2) is not None
    y = expert(x)
    assert y.shape == x.shape and (y.double() - exact).norm() / exact.norm() < 0.02
    monkeypatch.setitem(quantize.CPU_KERNELS, kind, "int4pack" if kind == "int4" else "int8pack")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "int8pack")
    assert quantize.gated_mlp_kernel(expert.w1, expert.w3, expert.w2) is None
    slow = expert(x)
    assert (slow.double() - exact).norm() / exact.norm() < 0.02


def test_build_fuses_gated_mlps_and_repacks_each_weight_once(monkeypatch):
    """On a quantized model every expert and shared MLP gets one fused kernel and its three
    projections no kernel of their own (the repacked copy exists once); attention's q, k and
    v get one stacked kernel, o_proj and the head one each; the progress callback counts up
    to the module total; PyTorch's own ops are then kept on one thread."""
    from app.engine.bench import MID_CONFIG, synthetic_model
    from app.engine.config import Grok2Config
    from app.engine.model import Attention, Expert, GatedMLP

    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "nbits")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "nbits")
    cfg = Grok2Config.from_dict(dict(MID_CONFIG, hidden_size=128, num_hidden_layers=1,
                                     intermediate_size=256, moe_intermediate_size=128,
                                     vocab_size=256))
    model = synthetic_model(cfg, "int4")
    seen = []
    built = quantize.build_cpu_kernels(model, lambda label, done, total: seen.append(
        (label, done, total)), layer_graphs=False)  # per-matmul kernels (test_cpu_graph.py)
    mlps = [m for m in model.modules() if isinstance(m, (Expert, GatedMLP))]
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(mlps) == 9 and len(attns) == 1
    assert built == len(linears) - 2 * len(mlps) - 2 * len(attns)
    for m in mlps + attns:
        trio = quantize._gated_trio(m) or quantize._qkv_trio(m)
        assert trio is not None and quantize._FUSED[trio[2]][1] is not None
        assert all(p not in quantize._NBITS for p in trio)
    assert model.torch_threads == 1
    assert seen and seen[-1][1] == seen[-1][2] and seen[-1][0] == "preparing CPU kernels"


@pytest.mark.parametrize("kind,group", [("int4", 128), ("int4", 32), ("int8", 0)])
def test_stacked_qkv_kernel_gives_the_three_kernels_bits(kind, group, monkeypatch):
    """q, k and v stacked along the output rows in one MatMulNBits give, column for column,
    the very bits of the three separate kernels (odd group counts included)."""
    monkeypatch.setitem(quantize.CPU_KERNELS, kind, "nbits")
    torch.manual_seed(5)
    k_in = 96 * 3 if group == 32 else 384  # 9 groups of 32: zero points padded per row
    q, k, v = (QuantLinear.from_weight(torch.randn(n, k_in), Format(kind, group))
               for n in (256, 64, 64))
    fused = quantize.qkv_kernel(q, k, v)
    assert fused is not None
    for m in (1, 7):
        x = torch.randn(m, k_in)
        separate = torch.cat([quantize.nbits_kernel(p)(x) for p in (q, k, v)], dim=1)
        assert torch.equal(fused(x), separate)
