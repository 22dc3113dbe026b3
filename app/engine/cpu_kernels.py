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
run with `InferenceSession.run` on a numpy view of the activation. All sessions share one
global thread pool sized from torch.get_num_threads() when the first session is built.
`available()` is False when onnxruntime or onnx is not installed: callers fall back to
PyTorch's kernels.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from torch import Tensor

ACCURACY_LEVEL = 4  # int8 activations, integer dot products (MLAS "CompInt8")
BLOCKS = (256, 128, 64, 32, 16)  # block sizes MatMulNBits accepts, largest first

_lock = threading.Lock()
_threads: int | None = None  # the global pool's size, set once per process


def available() -> bool:
    """Whether onnxruntime (with its MatMulNBits op) and the onnx graph builder import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _global_pool() -> None:
    """Size onnxruntime's process-wide thread pool once (it cannot be resized later)."""
    global _threads
    with _lock:
        if _threads is None:
            from onnxruntime.capi import _pybind_state

            _threads = max(1, torch.get_num_threads())
            _pybind_state.set_global_thread_pool_sizes(_threads, 1)


def int8_block(k: int) -> int:
    """A MatMulNBits block size dividing k for an int8 weight (per-row scale repeated); 0 if
    none does."""
    return next((b for b in BLOCKS if k % b == 0), 0)


def int4_operands(codes: Tensor, scales: Tensor) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray] | None:
    """MatMulNBits operands for int4 codes (N, K) in 0..15 and bf16 (scale, zero) (K/g, N, 2):
    packed nibbles (N, K/g, g/2) low nibble first, fp32 scales (N*K/g,), packed 4-bit zero
    points (N * ceil(K/g / 2),). None when some zero is not (8 - integer) * scale exactly."""
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
    return (packed.contiguous().numpy(), s.float().reshape(-1).numpy(),
            zpacked.reshape(-1).contiguous().numpy())


def int8_operands(q: Tensor, row_scales: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """MatMulNBits operands for int8 q (N, K) and fp32 per-row scales (N,): q + 128 as bytes
    (N, K/b, b) and the scale repeated per block (N*K/b,). None if no block size divides K."""
    n, k = q.shape
    b = int8_block(k)
    if not b:
        return None
    u = (q.to(torch.int16) + 128).to(torch.uint8).reshape(n, k // b, b)
    s = row_scales.float()[:, None].expand(n, k // b)
    return u.contiguous().numpy(), s.reshape(-1).contiguous().numpy()


class NBitsMatMul:
    """y = x W^T for one quantized weight through onnxruntime's MatMulNBits.

    `packed` (N, K/b, b*bits/8) uint8, `scales` fp32 (N*K/b,), `zero_points` packed uint8 or
    None (then 2^(bits-1)). Call with x (M, K) (any float dtype) -> (M, N) fp32."""

    def __init__(self, k: int, n: int, bits: int, block: int, packed: np.ndarray,
                 scales: np.ndarray, zero_points: np.ndarray | None = None) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        _global_pool()
        self.k, self.n = k, n
        inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")]
        inputs = ["A", "B", "S"]
        if zero_points is not None:
            inits.append(numpy_helper.from_array(zero_points, "Z"))
            inputs.append("Z")
        node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n,
                                bits=bits, block_size=block, accuracy_level=ACCURACY_LEVEL)
        graph = helper.make_graph(
            [node], "quant_linear",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        options = ort.SessionOptions()
        options.use_per_session_threads = False  # the one global pool (_global_pool)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        del model, graph, inits

    def __call__(self, x: Tensor) -> Tensor:
        a = (x.detach() if x.requires_grad else x).to(torch.float32).contiguous().numpy()
        out: Any = self.session.run(None, {"A": a})[0]
        return torch.from_numpy(out)
