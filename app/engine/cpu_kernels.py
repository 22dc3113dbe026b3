"""CPU low-bit matmuls through onnxruntime's `MatMulNBits` (contrib op, domain com.microsoft).

MLAS, onnxruntime's kernel library, computes y = x W^T with W in 4 or 8 bits per block of
`block` input features: w = (q - zero_point) * scale, q and the zero point unsigned integers,
the scale fp32. With `accuracy_level=4` the activations are quantized to int8 per block and the
dot products use the AVX512-VNNI / AVX-VNNI / NEON-dot integer kernels (what llama.cpp's Q4_0 and
Q8_0 kernels do). Weights are repacked once, when the session is built (MLAS "prepacking").

Weight semantics are kept exactly (quantize.py's stored formats):
  int4  w = (q - 8) * scale + zero, bf16 (scale, zero) per group. MatMulNBits takes this as
        zero point zp = 8 - zero / scale when that is an integer in 0..15, which is what the
        quantizer writes (quantize.int4_codes); a weight with any other zero stays on the
        PyTorch kernel (`int4_operands` returns None), so output is never approximated.
  int8  w = q * s per row: q + 128 with MatMulNBits' default 8-bit zero point 128, the row's
        scale repeated over its blocks.

Each QuantLinear gets one tiny ONNX graph (a single MatMulNBits node, weights as initializers),
run with `InferenceSession.run` on a numpy view of the activation; each session has
torch.get_num_threads() threads (at build time) that sleep when idle.
`available()` is False when onnxruntime or onnx is not installed: callers fall back to
PyTorch's kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

ACCURACY_LEVEL = 4  # int8 activations, integer dot products (MLAS "CompInt8")
BLOCKS = (128, 64, 32, 16, 256)  # MatMulNBits block sizes, preferred first: 8-bit weights
# with 128 run 2x faster than with 16, 32, 64 or 256 (MLAS's fast 8-bit path; measured)



def available() -> bool:
    """Whether onnxruntime (with its MatMulNBits op) and the onnx graph builder import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def int8_block(k: int) -> int:
    """A MatMulNBits block size dividing k for an int8 weight (per-row scale repeated); 0 if
    none does."""
    return next((b for b in BLOCKS if k % b == 0), 0)


def int4_operands(codes: Tensor, scales: Tensor) -> tuple | None:
    """MatMulNBits operands for int4 codes (N, K) in 0..15 and bf16 (scale, zero) (K/g, N, 2):
    (4, g, packed nibbles (N, K/g, g/2) low nibble first, fp32 scales (N*K/g,), packed 4-bit
    zero points (N * ceil(K/g / 2),)). None when some zero is not (8 - integer) * scale
    exactly."""
    n, k = codes.shape
    groups = scales.shape[0]
    g = k // groups
    s = scales[..., 0].transpose(0, 1).double()  # (N, K/g): bf16 values are exact in fp64
    z = scales[..., 1].transpose(0, 1).double()
    zp = 8.0 - z / s
    zr = zp.round()
    if g not in BLOCKS or not bool(((zp == zr) & (zr >= 0) & (zr <= 15)).all()):
        return None
    c = codes.to(torch.uint8)
    packed = (c[:, 0::2] | (c[:, 1::2] << 4)).reshape(n, groups, g // 2)
    zq = zr.to(torch.uint8)
    if groups % 2:
        zq = torch.cat([zq, torch.zeros(n, 1, dtype=torch.uint8)], dim=1)
    zpacked = zq[:, 0::2] | (zq[:, 1::2] << 4)
    return (4, g, packed.contiguous().numpy(), s.float().reshape(-1).numpy(),
            zpacked.reshape(-1).contiguous().numpy())


def int8_operands(q: Tensor, row_scales: Tensor) -> tuple | None:
    """MatMulNBits operands for int8 q (N, K) and fp32 per-row scales (N,): (8, b, q + 128 as
    bytes (N, K/b, b), the scale repeated per block (N*K/b,)). None if no block size divides
    K."""
    n, k = q.shape
    b = int8_block(k)
    if not b:
        return None
    u = (q.to(torch.int16) + 128).to(torch.uint8).reshape(n, k // b, b)
    s = row_scales.float()[:, None].expand(n, k // b)
    return 8, b, u.contiguous().numpy(), s.reshape(-1).contiguous().numpy()


Operands = tuple  # (bits, block, packed, scales[, zero_points]): one MatMulNBits weight


def stack_operands(parts: list[Operands]) -> Operands | None:
    """One weight (sum of N, K) from weights sharing K, stacked along the output rows N (for
    q, k and v: one call instead of three). Every MatMulNBits operand is laid out row by row,
    so this is a concatenation; each output column is computed from its own row exactly as
    before (tests/engine/test_cpu_kernels.py checks the bits). None when the parts differ in
    bits or block size."""
    import numpy as np

    if len({(p[0], p[1], len(p)) for p in parts}) != 1:
        return None
    bits, block = parts[0][0], parts[0][1]
    arrays = [np.concatenate([p[i] for p in parts], axis=0) for i in range(2, len(parts[0]))]
    return (bits, block, *arrays)


def _nbits_node(ops: Operands, k: int, n: int, a: str, y: str, prefix: str,
                inits: list) -> Any:
    """A MatMulNBits node y = a W^T for one weight's operands; appends its initializers."""
    from onnx import helper, numpy_helper

    bits, block, *arrays = ops
    names = [f"{prefix}_{tag}" for tag in ("B", "S", "Z")[:len(arrays)]]
    inits += [numpy_helper.from_array(arr, name) for arr, name in zip(arrays, names)]
    return helper.make_node("MatMulNBits", [a, *names], [y], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block, accuracy_level=ACCURACY_LEVEL)


def gated_mlp_nodes(d: int, hidden: int, gate: Operands, up: Operands, down: Operands,
                    a: str, y: str, prefix: str, inits: list) -> list:
    """The nodes of y = down(gelu_erf(gate(a)) * up(a)) (three MatMulNBits, com.microsoft's
    erf GELU, a Mul; fp32 between), their value and initializer names starting with
    `prefix`; appends the initializers to `inits`."""
    from onnx import helper

    g, u, act, h = (f"{prefix}_{t}" for t in ("g", "u", "act", "h"))
    return [_nbits_node(gate, d, hidden, a, g, f"{prefix}_gate", inits),
            _nbits_node(up, d, hidden, a, u, f"{prefix}_up", inits),
            helper.make_node("Gelu", [g], [act], domain="com.microsoft"),
            helper.make_node("Mul", [act, u], [h]),
            _nbits_node(down, hidden, d, h, y, f"{prefix}_down", inits)]


def _session(nodes: list, inits: list, k: int, n: int) -> Any:
    """An onnxruntime session for a graph A (M, k) fp32 -> Y (M, n) fp32."""
    from onnx import TensorProto, helper

    return _session_for(nodes, inits,
                        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])])


def _session_for(nodes: list, inits: list, inputs: list, outputs: list,
                 spinning: bool = False) -> Any:
    """An onnxruntime CPU session for a graph of these nodes, initializers and value infos.
    `spinning`: its pool threads spin between the graph's parallel ops instead of sleeping
    (cpu_graph.py: one long run per token, where waking a thread for each op costs more)."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "grok_desktop", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    # A pool per session whose idle threads sleep. onnxruntime's one global pool (Python can
    # make it: use_per_session_threads = False) spins between calls and so finds its threads
    # awake: the best tokens were faster (mid-size int4 decode, 2 threads, 15.1 vs 16.1 ms)
    # but on this 2-vCPU VM every other token waited a scheduler tick (median 24.0 vs 16.5
    # ms, measured interleaved at a 512-token context), and with PyTorch's OpenMP threads
    # spinning too it took 37 ms. So: sleeping pools, and the model keeps its own glue ops on
    # one thread while onnxruntime runs the matmuls (model.Grok2.torch_threads).
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if spinning else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


class NBitsMatMul:
    """y = x W^T for one quantized weight through onnxruntime's MatMulNBits, or for an int4
    weight in blocks of 128 through cpu_int4's AVX512-VNNI kernel where that runs (same
    arithmetic, faster decode: cpu_int4.py).

    `ops` = (bits, block, packed (N, K/b, b*bits/8) uint8, scales fp32 (N*K/b,)[, packed
    zero points uint8]; without them 2^(bits-1)). Call with x (M, K) (any float dtype) ->
    (M, N) fp32. `backend` says which kernel runs: "vnni" or "mlas"."""

    def __init__(self, k: int, n: int, ops: Operands) -> None:
        self.k, self.n = k, n
        self.int4 = _int4_weight(k, n, ops)
        self.session = None
        if self.int4 is None:
            inits: list = []
            self.session = _session([_nbits_node(ops, k, n, "A", "Y", "w", inits)], inits, k, n)
        self.backend = "mlas" if self.int4 is None else "vnni"
        self.kind = ""  # the weights' format ("int4", "int8"), set by the builder

    def __call__(self, x: Tensor) -> Tensor:
        if self.int4 is not None:
            return torch.from_numpy(self.int4(_numpy(x)))
        return _run(self.session, x)


class NBitsGatedMLP:
    """down(gelu_erf(gate(x)) * up(x)) in one onnxruntime graph (three MatMulNBits, the
    erf GELU of com.microsoft, a Mul), fp32 between them (the PyTorch path rounds the
    intermediate to bf16). One call instead of three matmuls and the glue ops: decode runs
    this for the shared MLP and both routed experts of every layer. With int4 weights in
    blocks of 128 where cpu_int4's kernel runs: gate and up as one stacked cpu_int4 matmul,
    PyTorch's fp32 erf GELU and product, then down (the same arithmetic).
    Call with x (M, D) -> (M, D) fp32. `backend`: "vnni" or "mlas"."""

    def __init__(self, d: int, hidden: int, gate: Operands, up: Operands,
                 down: Operands) -> None:
        self.hidden = hidden
        self.gate_up = self.down = None
        if _int4_reads(d, gate) and _int4_reads(d, up) and _int4_reads(hidden, down):
            stacked = stack_operands([gate, up])  # a copy: only when it will be used
            self.gate_up = None if stacked is None else _int4_weight(d, 2 * hidden, stacked)
            self.down = None if self.gate_up is None else _int4_weight(hidden, d, down)
        self.session = None
        if self.down is None:
            self.gate_up = None
            inits: list = []
            nodes = gated_mlp_nodes(d, hidden, gate, up, down, "A", "Y", "mlp", inits)
            self.session = _session(nodes, inits, d, d)
        self.backend = "mlas" if self.session is not None else "vnni"
        self.kind = ""  # the weights' format ("int4", "int8"), set by the builder

    def __call__(self, x: Tensor) -> Tensor:
        if self.gate_up is None or self.down is None:
            return _run(self.session, x)
        gu = torch.from_numpy(self.gate_up(_numpy(x)))  # (M, 2H): gate | up
        h = torch.nn.functional.gelu(gu[:, :self.hidden]) * gu[:, self.hidden:]  # erf GELU
        return torch.from_numpy(self.down(h.numpy()))


def _int4_reads(k: int, ops: Operands) -> bool:
    """Whether cpu_int4's kernel runs here (compiled: the first call compiles it, once) and
    reads these operands of a K = k weight (int4, blocks of 128, zero points)."""
    from app.engine.cpu_int4 import BLOCK, ready, supports

    return supports(ops) and k % BLOCK == 0 and ready()


def _int4_weight(k: int, n: int, ops: Operands) -> Any:
    """A cpu_int4.PackedWeight for these operands when `_int4_reads` them, else None
    (onnxruntime's MatMulNBits runs them)."""
    from app.engine.cpu_int4 import PackedWeight

    if not _int4_reads(k, ops):
        return None
    return PackedWeight(k, n, ops, threads=max(1, torch.get_num_threads()))


def _numpy(x: Tensor) -> Any:
    return (x.detach() if x.requires_grad else x).to(torch.float32).contiguous().numpy()


def _run(session: Any, x: Tensor) -> Tensor:
    out: Any = session.run(None, {"A": _numpy(x)})[0]
    return torch.from_numpy(out)
