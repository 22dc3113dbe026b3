"""Weight-only quantization: int8 per output channel, int4 group-wise (g128), as a transform
that replaces `nn.Linear` modules of a built model with `QuantLinear` (gpt-fast style).

Stored format (what `prepare` writes, what a CPU-resident QuantLinear holds, memory-mapped):
  int8  qweight int8 (N, K); scales float32 (N,)                w = q * s
  int4  qweight uint8 (N, K/2) in PyTorch's CPU int4 kernel layout (blocks of 64 rows: byte j
        of column k holds rows j and j+32 of the block, low nibble first); scales bf16
        (K/g, N, 2) holding (scale, zero):                      w = (q - 8) * scale + zero
On a GPU, int4 is held as plain nibbles (N, K/2), high nibble = even k, the input of
`torch.ops.aten._convert_weight_to_int4pack` (tinygemm) and of a cheap dequantization.

The int4 quantizer writes integer zero points (zero = (8 - zp) * scale, exact in bf16), so the
same stored pair is also w = (q - zp) * scale, onnxruntime's MatMulNBits form.

Kernels: CPU "nbits" (onnxruntime MatMulNBits, int8 activations, cpu_kernels.py; a weight
without an exact MatMulNBits form, e.g. int4 from an older quantizer, uses the next ones), CPU
int4 `_weight_int4pack_mm_for_cpu`, CPU int8 `_weight_int8pack_mm` or dequantize+bf16 matmul
(bench.py measures and picks, `CPU_KERNELS`), GPU int4 tinygemm for
M <= 4 tokens else dequantize + cuBLAS, GPU int8 dequantize + cuBLAS. Activations are bf16
inside the quantized kernels (the float32 variants of the CPU ops are 10x slower).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.engine.cpu_graph import build_graphs, release_freed_memory
from app.engine.cpu_kernels import (
    NBitsGatedMLP,
    NBitsMatMul,
    Operands,
    int4_operands,
    int8_operands,
    stack_operands,
)
from app.engine.cpu_kernels import available as nbits_available
from app.engine.plan import Format, weight_format

# "nbits": onnxruntime's MatMulNBits (cpu_kernels.py, int8 activations, 2-3x the PyTorch
# kernels' rate), where installed; bench.select_cpu_kernels measures and may change these.
CPU_KERNELS = ({"int8": "nbits", "int4": "nbits"} if nbits_available()
               else {"int8": "int8pack", "int4": "int4pack"})
GPU_TINYGEMM_MAX_M = 4  # tinygemm is fastest at M <= 2-4, 5x slower than cuBLAS at M = 32


# ---- int8 ---------------------------------------------------------------------------------

def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel: (q int8 (N, K), scales float32 (N,)), on the CPU."""
    w = w.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.cpu(), scales.cpu()


# ---- int4 ---------------------------------------------------------------------------------

def quantize_int4(w: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Asymmetric group-wise: (packed uint8 (N, K/2) CPU layout, scales bf16 (K/g, N, 2)).
    The grid is computed on w's device (fast on a GPU); packing happens on the CPU."""
    codes, scales = int4_codes(w, group)
    return pack_int4_cpu(codes), scales.cpu()


def int4_codes(w: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Codes uint8 (N, K) in 0..15 and (scale, zero) bf16 (K/g, N, 2) with an integer zero
    point: zero = (8 - zp) * scale, zp in 0..15, so w = (q - zp) * scale, the form onnxruntime's
    MatMulNBits takes natively (cpu_kernels.py). The scale is rounded up to 5 significant bits
    so that (8 - zp) * scale is exact in bf16: the stored pair means the same weight to every
    kernel. The range is widened to include 0 (an integer zero point needs it)."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1).clamp(max=0.0), wg.amax(-1).clamp(min=0.0)  # (N, K/g)
    scale = _round_up_significand(((hi - lo) / 15.0).clamp(min=1e-8), bits=5)
    zp = torch.round(-lo / scale).clamp(0, 15)
    zero = (8.0 - zp) * scale  # exact in bf16: a 4-bit integer times a 5-bit significand
    q = torch.round(wg / scale[..., None] + zp[..., None]).clamp(0, 15)
    scales = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K/g, N, 2)
    return q.to(torch.uint8).reshape(n, k), scales.to(torch.bfloat16)


def _round_up_significand(x: Tensor, bits: int) -> Tensor:
    """Positive fp32 x rounded up to `bits` significant bits (so also exact in bf16)."""
    drop = 24 - bits  # fp32 has a 24-bit significand
    i = x.float().contiguous().view(torch.int32)
    return ((i + (1 << drop) - 1) & ~((1 << drop) - 1)).view(torch.float32)


def pack_int4_cpu(codes: Tensor) -> Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.cpu().to(torch.int32), 1)


def unpack_int4_cpu(packed: Tensor, n: int, k: int) -> Tensor:
    """Inverse of pack_int4_cpu on any device: codes uint8 (N, K)."""
    full = n // 64 * 64
    b = packed[:full].reshape(full // 64, k, 32)
    codes = torch.stack([b & 15, b >> 4], dim=1)  # (N/64, 2, K, 32): rows j and 32+j
    out = torch.empty(n, k, dtype=torch.uint8, device=packed.device)
    out[:full] = codes.permute(0, 1, 3, 2).reshape(full, k)
    if full < n:  # a tail block has its own layout: read it through a probed index
        tail = packed[full:].reshape(-1)
        nibbles = torch.stack([tail & 15, tail >> 4], dim=-1).reshape(-1)
        flat = torch.empty((n - full) * k, dtype=torch.uint8, device=packed.device)
        flat[_tail_index(n - full, k).to(packed.device)] = nibbles
        out[full:] = flat.view(n - full, k)
    return out


@functools.lru_cache(maxsize=16)
def _tail_index(rows: int, k: int) -> Tensor:
    """For each nibble of pack_int4_cpu(rows x k), the flat index of the code it holds."""
    flat = torch.arange(rows * k)
    index = torch.zeros(rows * k, dtype=torch.long)
    digits = max(1, ((rows * k - 1).bit_length() + 3) // 4)
    for d in range(digits):
        part = pack_int4_cpu(((flat >> (4 * d)) & 15).view(rows, k)).reshape(-1)
        nib = torch.stack([part & 15, part >> 4], dim=-1).reshape(-1).long()
        index |= nib << (4 * d)
    return index


def plain_from_codes(codes: Tensor) -> Tensor:
    """(N, K) codes -> (N, K/2) bytes, high nibble = even k (tinygemm's CUDA input)."""
    return (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)


def codes_from_plain(plain: Tensor) -> Tensor:
    return torch.stack([plain >> 4, plain & 15], dim=-1).reshape(plain.shape[0], -1)


def dequantize_int4(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    n, k = codes.shape
    g = k // scales.shape[0]
    s = scales.to(dtype).transpose(0, 1)  # (N, K/g, 2)
    w = (codes.view(n, k // g, g).to(dtype) - 8) * s[..., :1] + s[..., 1:]
    return w.view(n, k)


# ---- the module ---------------------------------------------------------------------------

class QuantLinear(nn.Module):
    """A bias-free Linear with quantized weights. `layout` is "cpu" (stored format) or "plain"
    (int4 on a GPU). `weight` is the packed tensor, so code asking a layer for its device or
    dtype (model.setup_cache, lm_head placement) keeps working."""

    qweight: Tensor  # buffers, registered in __init__
    scales: Tensor

    def __init__(self, in_features: int, out_features: int, fmt: Format, qweight: Tensor,
                 scales: Tensor, layout: str = "cpu") -> None:
        super().__init__()
        self.in_features, self.out_features, self.fmt, self.layout = (
            in_features, out_features, fmt, layout)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    @property
    def weight(self) -> Tensor:
        return self.qweight

    @classmethod
    def from_weight(cls, w: Tensor, fmt: Format) -> QuantLinear:
        n, k = w.shape
        if fmt.kind == "int8":
            q, s = quantize_int8(w)
        else:
            q, s = quantize_int4(w, fmt.group)
        return cls(k, n, fmt, q, s)

    @classmethod
    def empty(cls, in_features: int, out_features: int, fmt: Format,
              device: torch.device | str = "meta") -> QuantLinear:
        n, k = out_features, in_features
        if fmt.kind == "int8":
            q = torch.empty(n, k, dtype=torch.int8, device=device)
            s = torch.empty(n, dtype=torch.float32, device=device)
        else:
            q = torch.empty(n, k // 2, dtype=torch.uint8, device=device)
            s = torch.empty(k // fmt.group, n, 2, dtype=torch.bfloat16, device=device)
        return cls(k, n, fmt, q, s)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight (N, K) these codes stand for (checks, GPU large-M path)."""
        if self.fmt.kind == "int8":
            return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]
        codes = (unpack_int4_cpu(self.qweight, self.out_features, self.in_features)
                 if self.layout == "cpu" else codes_from_plain(self.qweight))
        return dequantize_int4(codes, self.scales, dtype)

    def placed(self, device: torch.device) -> QuantLinear:
        """This module's weights on `device`, converted to that device's layout."""
        if device.type == "cpu":
            if self.layout == "cpu":
                return self.to(device)
            codes = codes_from_plain(self.qweight).cpu()
            return QuantLinear(self.in_features, self.out_features, self.fmt,
                               pack_int4_cpu(codes), self.scales.cpu())
        if self.fmt.kind == "int4" and self.layout == "cpu":
            qweight = self.qweight.to(device, non_blocking=True)
            codes = unpack_int4_cpu(qweight, self.out_features, self.in_features)
            return QuantLinear(self.in_features, self.out_features, self.fmt,
                               plain_from_codes(codes), self.scales.to(device), "plain")
        return self.to(device)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if CPU_KERNELS[self.fmt.kind] == "nbits" and self.layout == "cpu" \
                and self.qweight.device.type == "cpu":
            nbits = nbits_kernel(self)
            if nbits is not None:  # few ops: this runs ~13 times per layer and token
                y = nbits(x.reshape(-1, shape[-1]))
                return y.to(x.dtype).view(*shape[:-1], self.out_features)
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.qweight.device.type == "cpu" and self.layout == "cpu":
            y = _cpu_matmul(self, x2)
        else:
            y = _gpu_matmul(self, x2)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        g = f", group={self.fmt.group}" if self.fmt.kind == "int4" else ""
        return f"{self.in_features}, {self.out_features}, {self.fmt.kind}{g}, layout={self.layout}"


# QuantLinear -> (its qweight, its scales, its MatMulNBits or None); a gated MLP's down
# projection -> (the tensors and modules the fused kernel was built from, the kernel or None).
# Decode looks these up ~100 times per token: identity checks only, no tensor ops.
_NBITS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()
_FUSED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _nbits_ready(m: nn.Module) -> bool:
    return (isinstance(m, QuantLinear) and m.layout == "cpu" and m.qweight.device.type == "cpu"
            and not m.qweight.is_meta and CPU_KERNELS[m.fmt.kind] == "nbits")


def _operands(m: QuantLinear) -> tuple | None:
    n, k = m.out_features, m.in_features
    if m.fmt.kind == "int4":
        return int4_operands(unpack_int4_cpu(m.qweight, n, k), m.scales)
    return int8_operands(m.qweight, m.scales)


def graph_operands(m: nn.Module) -> Operands | None:
    """m's MatMulNBits operands when it is a CPU QuantLinear on the "nbits" kernel with an
    exact MatMulNBits form (what a cpu_graph.CpuGraph may hold), else None."""
    return _operands(m) if _nbits_ready(m) else None  # type: ignore[arg-type]


def nbits_kernel(m: QuantLinear) -> NBitsMatMul | None:
    """m's onnxruntime MatMulNBits, built (weights repacked) on first use and rebuilt when the
    weight tensors are replaced (the loader fills new tensors; nothing writes them in place);
    None if the weight has no exact MatMulNBits form (an int4 zero that is not an integer zero
    point, a K no block size divides)."""
    q, s = m._buffers["qweight"], m._buffers["scales"]
    cached = _NBITS.get(m)
    if cached is not None and cached[0] is q and cached[1] is s:
        return cached[2]
    ops = _operands(m)
    kernel = None if ops is None else NBitsMatMul(m.in_features, m.out_features, ops)
    _NBITS[m] = (q, s, kernel)
    return kernel


def gated_mlp_kernel(gate: nn.Module, up: nn.Module, down: nn.Module
                     ) -> NBitsGatedMLP | None:
    """down(gelu(gate(x)) * up(x)) as one onnxruntime graph when all three are CPU QuantLinears
    of one format on the "nbits" kernel with exact MatMulNBits forms (cached like
    nbits_kernel); else None (the caller runs the three modules)."""
    def build(g: Operands, u: Operands, d: Operands) -> NBitsGatedMLP:
        assert isinstance(gate, QuantLinear)
        return NBitsGatedMLP(gate.in_features, gate.out_features, g, u, d)

    return _fused_kernel((gate, up, down), build)


def qkv_kernel(q: nn.Module, k: nn.Module, v: nn.Module) -> NBitsMatMul | None:
    """[q(x), k(x), v(x)] concatenated along the output features, (M, Nq+Nk+Nv) fp32, as one
    onnxruntime MatMulNBits call (rows stacked: cpu_kernels.stack_operands) when all three are
    CPU QuantLinears of one format on the "nbits" kernel with exact MatMulNBits forms (cached
    like nbits_kernel); else None (the caller runs the three modules)."""
    def build(*ops: Operands) -> NBitsMatMul | None:
        stacked = stack_operands(list(ops))
        if stacked is None:
            return None
        n = sum(m.out_features for m in (q, k, v) if isinstance(m, QuantLinear))
        assert isinstance(q, QuantLinear)
        return NBitsMatMul(q.in_features, n, stacked)

    return _fused_kernel((q, k, v), build)


def _fused_kernel(mods: tuple[nn.Module, nn.Module, nn.Module],
                  build: Callable[..., NBitsGatedMLP | NBitsMatMul | None]) -> Any:
    """The one onnxruntime kernel `build(*operands)` makes from three QuantLinears, cached
    under the last one and rebuilt when any of their weight tensors is replaced; None when
    they are not all CPU "nbits" weights of one kind with exact MatMulNBits forms, or when
    `build` says their operands do not combine."""
    parts = (mods[0], mods[1], *(m._buffers.get(n) for m in mods
                                 for n in ("qweight", "scales")))
    cached = _FUSED.get(mods[2])
    if cached is not None and all(a is b for a, b in zip(cached[0], parts)):
        kernel = cached[1]  # None: these weights have no exact MatMulNBits form
        return kernel if kernel is not None and CPU_KERNELS[kernel.kind] == "nbits" else None
    if not all(_nbits_ready(m) for m in mods):
        return None  # not cached: the kernel choice may change
    quants = [m for m in mods if isinstance(m, QuantLinear)]
    kernel = None
    if len({m.fmt.kind for m in quants}) == 1:
        ops = [_operands(m) for m in quants]
        if all(o is not None for o in ops):
            kernel = build(*ops)
            if kernel is not None:
                kernel.kind = quants[0].fmt.kind
    _FUSED[mods[2]] = (parts, kernel)
    return kernel


def build_cpu_kernels(model: nn.Module,
                      progress: Callable[[str, int, int], None] | None = None,
                      layer_graphs: bool = True) -> int:
    """Build (repack) the onnxruntime kernels now rather than on first use, so the first
    tokens are not slowed by it: with `layer_graphs`, on a Grok2, onnxruntime graphs of whole
    decoder layers (cpu_graph.build_graphs: CPU-resident quantized layers with exact
    MatMulNBits forms; set as the model's `cpu_graphs`, removed without `layer_graphs`); then
    one fused graph per other CPU-resident quantized gated MLP and q/k/v trio and one per
    other such QuantLinear. On a Grok2 all in bf16 on the CPU, its compiled decode step
    (cpu_bf16.build: set as the model's `cpu_decode`, None otherwise); elsewhere, its CPU
    bf16 Linears become cpu_bf16.GemvLinear (one-row products compiled).
    `progress(label, done, total)` counts modules. On a Grok2 it also sets `torch_threads`: 1
    when onnxruntime now runs every CPU matmul (PyTorch's remaining ops then stay on one
    thread), else None. Returns how many kernels (layer graphs included) were built."""
    mods = list(model.named_modules())  # parents first: a gated MLP before its projections
    built, fused, torch_matmuls = 0, set[int](), 0
    grok: Any = model
    if hasattr(model, "cpu_graphs"):  # a Grok2: whole-layer graphs first (cpu_graph.py)
        graphs = (build_graphs(grok, graph_operands) if layer_graphs and nbits_available()
                  else [])
        grok.cpu_graphs = nn.ModuleList(graphs) if graphs else None
        for g in graphs:
            built += 1
            covered = list(grok.model.layers[g.start:g.end])
            covered += [grok.model.norm, grok.lm_head] if g.head else []
            fused.update(id(m) for top in covered for m in top.modules())
            if progress:
                progress("preparing CPU kernels", 0, len(mods))
    for i, (name, mod) in enumerate(mods):
        trio, qkv = _gated_trio(mod), _qkv_trio(mod)
        if id(mod) in fused:
            pass  # inside a layer graph: its per-matmul kernels are built if ever needed
        elif trio is not None and gated_mlp_kernel(*trio) is not None:
            built += 1
            fused.update(id(m) for m in trio)
        elif qkv is not None and qkv_kernel(*qkv) is not None:
            built += 1
            fused.update(id(m) for m in qkv)
        elif _nbits_ready(mod) and id(mod) not in fused:
            assert isinstance(mod, QuantLinear)
            ok = nbits_kernel(mod) is not None
            built += ok
            torch_matmuls += not ok
        elif isinstance(mod, QuantLinear | nn.Linear) and id(mod) not in fused \
                and mod.weight.device.type == "cpu" and not name.endswith("block_sparse_moe.gate"):
            torch_matmuls += 1  # a CPU matmul PyTorch runs (the router's is tiny)
        if progress and built:
            progress("preparing CPU kernels", i + 1, len(mods))
    if hasattr(model, "cpu_decode"):  # a Grok2 all in bf16 on the CPU: compiled decode
        from app.engine.cpu_bf16 import build as build_bf16_decode

        grok.cpu_decode = build_bf16_decode(grok)
        built += grok.cpu_decode is not None
    if getattr(grok, "cpu_decode", None) is None:  # bf16 CPU matmuls no step covers
        from app.engine.cpu_bf16 import install_gemv

        built += install_gemv(model)
    if built:
        release_freed_memory()  # the build's temporary copies (cpu_graph.release_freed_memory)
    if hasattr(model, "torch_threads"):  # a Grok2: glue ops on one thread beside onnxruntime
        model.torch_threads = 1 if built and not torch_matmuls else None  # type: ignore[assignment]
    return built


def exact_fallbacks(model: nn.Module) -> int:
    """How many CPU int4 weights have no exact MatMulNBits form (zeros off the integer grid:
    quantized by an older version) and so run on PyTorch's slower int4 kernel, after
    build_cpu_kernels."""
    return sum(1 for m in model.modules() if isinstance(m, QuantLinear) and m.fmt.kind == "int4"
               and m in _NBITS and _NBITS[m][2] is None)


def _gated_trio(mod: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module] | None:
    """(gate, up, down) of a gated MLP module (model.Expert, model.GatedMLP), else None."""
    names = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))
    for gate, up, down in names:
        if all(hasattr(mod, n) for n in (gate, up, down)):
            return getattr(mod, gate), getattr(mod, up), getattr(mod, down)
    return None


def _qkv_trio(mod: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module] | None:
    """(q_proj, k_proj, v_proj) of an attention module (model.Attention), else None."""
    parts = [getattr(mod, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    if all(isinstance(p, nn.Module) for p in parts):
        return parts[0], parts[1], parts[2]  # type: ignore[return-value]
    return None


def _cpu_matmul(m: QuantLinear, x: Tensor) -> Tensor:
    kind, kernel = m.fmt.kind, CPU_KERNELS[m.fmt.kind]
    if kernel == "nbits":  # forward() found no MatMulNBits form: the exact PyTorch kernels
        kernel = "int4pack" if kind == "int4" else "int8pack"
    if kind == "int4" and kernel == "int4pack":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, m.qweight, m.fmt.group, m.scales)
    if kind == "int8" and kernel == "int8pack":
        return torch.ops.aten._weight_int8pack_mm(x, m.qweight, m.scales.to(torch.bfloat16))
    return F.linear(x, m.dequantized(torch.bfloat16))  # "dequant": decode-speed fallback


def _gpu_matmul(m: QuantLinear, x: Tensor) -> Tensor:
    tinygemm = m.qweight.is_cuda and m.layout == "plain" and m.fmt.kind == "int4"
    if tinygemm and x.shape[0] <= GPU_TINYGEMM_MAX_M:
        packed = torch.ops.aten._convert_weight_to_int4pack(m.qweight, 8)
        return torch.ops.aten._weight_int4pack_mm(x, packed, m.fmt.group, m.scales)
    return F.linear(x, m.dequantized(torch.bfloat16))


# ---- the transform ------------------------------------------------------------------------

def quantizable(model: nn.Module, quant: str, group: int = 128) -> dict[str, Format]:
    """Linear module name -> the format the plan gives it (only the quantized ones)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            fmt = weight_format(name, mod.out_features, mod.in_features, quant, group)
            if fmt.kind in ("int8", "int4"):
                out[name] = fmt
    return out


def quantize_model(model: nn.Module, quant: str, group: int = 128) -> nn.Module:
    """Replace every Linear the plan quantizes by a QuantLinear holding its codes; in place.
    Weights on the meta device become empty QuantLinears (the loader fills them)."""
    for name, fmt in quantizable(model, quant, group).items():
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)  # quantizable() names Linears only
        w = linear.weight
        if w.is_meta:
            new = QuantLinear.empty(linear.in_features, linear.out_features, fmt)
        else:
            new = QuantLinear.from_weight(w.detach(), fmt).placed(w.device)
        set_module(model, name, new)
    return model


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, module)
