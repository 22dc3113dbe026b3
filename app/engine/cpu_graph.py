"""Whole decoder layers (and the output head) as onnxruntime graphs, for CPU-resident
quantized models.

Why: at mid sizes (hidden 1024) a decode token of the eager PyTorch model spent ~40% of its
time in ~900 small ATen ops and their Python dispatch between the matmuls (norms, RoPE,
attention, routing), and onnxruntime's thread pool had to be woken for every matmul. Here one
`InferenceSession.run` per token does all of it in C++ for a group of layers (all of them, with
the final norm, output head and soft cap, when they fit): the norms, the q/k/v projection,
RoPE, attention over the KV cache, the output projection, the shared MLP, the router and the
routed experts (each expert's three MatMulNBits behind an `If`, so only the chosen ones run),
for any number of tokens T (prefill and decode). Its pool threads spin inside that one run.

Numerics. The same formula as model.py and SGLang, step by step, with the MatMulNBits weights
of cpu_kernels.py (exact weight semantics, int8 activations in the dot products), but every
value between the matmuls stays in float32: the eager path rounds the residual stream, the
normed activations and q/k/v to bf16 at SGLang's points, this graph does not (and its KV cache
is float32). So its logits differ from the eager quantized path's in low bits, closer to the
float64 reference rather than further (tests/engine/test_cpu_graph.py measures both; next-token
KL against bf16: bench/mid_kl.py). bf16 and float32 models never use it: they keep the exact
eager path.

Limits: a graph's weights are protobuf initializers (under 2 GiB) that exist about four times
over while it is built, so one graph holds at most MAX_GRAPH_BYTES (768 MB) of weights and
consecutive layers are grouped; a real-size Grok-2 layer (2.3 GB at int4) keeps the
per-matmul kernels, whose calls are ~94% of its 30-50 ms decode step anyway (bench/README.md).
Batches above 1, forwards without a KV cache, a bf16 KV cache set up before the graphs were
built, and layers whose weights were replaced after the build run eagerly.

Shapes: T new tokens, S = L + T key positions (L cached), D hidden, H query heads, K kv heads,
G = H/K, Dh head dim, E experts, V vocab.
Graph inputs: h (T, D) fp32, pos (T,) int64 the absolute positions (the cached length L is
pos[0]), cos_table/sin_table (P, Dh/2) fp32 (model.rope_table, as SGLang builds it), per
layer i its cached keys and values past_k{i}/past_v{i} (K, L, Dh) fp32 (views of the float32
KV cache, not copied when K = 1 makes them contiguous), with the head also rows (R,) int64.
Outputs h_out (T, D) or logits (R, V), and k_new/v_new (graph layers, K, T, Dh), layer-major,
that the caller writes into its cache. RoPE rows, length temperature and causal mask are
computed in the graph once per run. The attention reads the
cached keys/values where they are and joins only the score columns of the cached and the new
keys: concatenating keys would copy every layer's cache every token.
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from app.engine.cpu_kernels import (
    Operands,
    _nbits_node,
    _session_for,
    gated_mlp_nodes,
    stack_operands,
)

log = logging.getLogger(__name__)

# Bumped whenever any nn.Module registers (assigns) a parameter, buffer or submodule: the
# loader and the placement transforms replace weights that way (CpuGraph.current).
GENERATION = [0]


def _bump(*_: Any) -> None:
    GENERATION[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_bump)
torch.nn.modules.module.register_module_buffer_registration_hook(_bump)
torch.nn.modules.module.register_module_module_registration_hook(_bump)

# The graph holds its weights as protobuf initializers: a serialized model must stay under
# protobuf's 2 GiB, and while a graph is built its weights exist about four times over (the
# initializers, the serialized model, onnxruntime's parsed copy, its repacked copy), so graphs
# are kept small: 768 MB of weights bounds that transient to ~3 GB (the mid-size bench model,
# 280 MB at int4 and 530 MB at int8, is one graph). A real-size Grok-2 layer at int4 is
# ~2.3 GB: such layers keep the per-matmul kernels (where the matmul calls are ~94% of a
# 30-50 ms decode step anyway).
MAX_GRAPH_BYTES = 768_000_000


def release_freed_memory() -> None:
    """Give the heap pages freed after building graphs back to the operating system (glibc's
    malloc_trim; elsewhere nothing). The build's temporary copies are freed, but glibc keeps
    their pages: the mid-size int4 bench model stayed ~1 GB larger (2.72 -> 1.71 GB resident
    after trimming)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc.so" not in name:  # glibc only (musl, macOS, Windows: nothing to do)
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class _Builder:
    """Collects nodes and initializers of one ONNX graph (names made unique by a counter)."""

    def __init__(self, counter: Any = None) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._count = counter if counter is not None else itertools.count(1)

    def child(self) -> _Builder:
        """A builder for a subgraph (an If branch): its own nodes, names unique with ours."""
        return _Builder(self._count)

    def name(self, tag: str) -> str:
        return f"{tag}_{next(self._count)}"

    def op(self, op_type: str, inputs: list[str], tag: str = "", domain: str = "",
           outputs: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        outs = [self.name(tag or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain or None,
                                           **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, arr: np.ndarray, tag: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(tag)
        # (np.ascontiguousarray would turn a 0-d scalar into shape (1,))
        self.inits.append(numpy_helper.from_array(np.require(arr, requirements="C"), name))
        return name

    def ints(self, values: list[int], tag: str = "shape") -> str:
        return self.const(np.array(values, dtype=np.int64), tag)

    def nbits(self, ops: Operands, k: int, n: int, a: str, tag: str) -> str:
        out = self.name(tag)
        self.nodes.append(_nbits_node(ops, k, n, a, out, self.name(tag + "_w"), self.inits))
        return out

    def soft_cap(self, x: str, cap: float) -> str:
        """cap * tanh(x / cap) (model.soft_cap)."""
        c = self.const(np.array(cap, dtype=np.float32), "cap")
        return self.op("Mul", [self.op("Tanh", [self.op("Div", [x, c])]), c])

    def norm(self, x: str, weight: Tensor, eps: float) -> str:
        """RMSNorm in fp32: x / sqrt(mean(x^2) + eps) * w (model.RMSNorm)."""
        w = self.const(weight.detach().float().numpy(), "norm_w")
        return self.op("SimplifiedLayerNormalization", [x, w], "norm", axis=-1,
                       epsilon=float(eps), stash_type=1)

    def add_norm(self, x: str, addend: str, weight: Tensor, eps: float) -> tuple[str, str]:
        """(RMSNorm(x + addend) with weight w, x + addend) in one node: the residual sum and
        the next norm, fp32 (model.RMSNorm after the residual add)."""
        from onnx import helper

        w = self.const(weight.detach().float().numpy(), "norm_w")
        normed, total = self.name("norm"), self.name("resid")
        self.nodes.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [x, addend, w], [normed, "", "", total],
            domain="com.microsoft", epsilon=float(eps)))
        return normed, total

    def gated_mlp(self, x: str, d: int, hidden: int, gate: Operands, up: Operands,
                  down: Operands, tag: str) -> str:
        """down(gelu_erf(gate(x)) * up(x)), the nodes cpu_kernels.NBitsGatedMLP runs."""
        y = self.name(tag)
        self.nodes += gated_mlp_nodes(d, hidden, gate, up, down, x, y, self.name(tag),
                                      self.inits)
        return y


Operand = Callable[[nn.Module], "Operands | None"]  # quantize.graph_operands


def layer_operands(layer: Any, operands: Operand) -> dict | None:
    """The MatMulNBits operands of every quantized matmul of a model.DecoderLayer, or None when
    some matmul has none (`operands(m)`: None unless m is a CPU QuantLinear on the "nbits"
    kernel with an exact MatMulNBits form) or they differ in kind (the layer then runs
    eagerly)."""
    attn = layer.self_attn
    moe = layer.block_sparse_moe
    mods = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj,
            "gate": layer.mlp.gate_proj, "up": layer.mlp.up_proj, "down": layer.mlp.down_proj}
    for e, ex in enumerate(moe.experts):
        mods |= {f"w1.{e}": ex.w1, f"w3.{e}": ex.w3, f"w2.{e}": ex.w2}
    if moe.gate.weight.device.type != "cpu" or moe.gate.weight.is_meta:
        return None
    ops = {}
    for name, m in mods.items():
        o = operands(m)
        if o is None:
            return None
        ops[name] = o
    if len({m.fmt.kind for m in mods.values()}) != 1:
        return None
    return ops


def _bytes(ops: dict) -> int:
    return sum(a.nbytes for o in ops.values() for a in o[2:])


class CpuGraph(nn.Module):
    """Decoder layers start..end-1 of a Grok2 (and, with `head`, the final norm, the output
    head and the logit soft cap) as one onnxruntime graph (module docstring). Holds no
    PyTorch parameters: the model keeps its weights (state dict, offloading and reloading see
    them); the graph holds MatMulNBits' repacked copies, as the per-matmul kernels would.
    Inputs and outputs as in the module docstring: each layer's cached keys/values go in as
    views of the cache; k_new/v_new (end - start, K, T, Dh) are the new keys/values of
    every layer. Without the head the output is h_out (T, D); with it, an input `rows` (R,) int64
    picks the positions whose logits (R, V) fp32 are computed."""

    def __init__(self, model: Any, start: int, end: int, ops: list[dict],
                 head_ops: Operands | None) -> None:
        super().__init__()
        from onnx import TensorProto, helper

        cfg = model.config
        layers = model.model.layers
        self.start, self.end, self.head = start, end, head_ops is not None
        self.kind = layers[start].self_attn.q_proj.fmt.kind
        self.experts = cfg.num_local_experts
        mods = [layers[i] for i in range(start, end)]
        if self.head:
            mods += [model.model.norm, model.lm_head]
        self.parts = tuple(zip(*module_parts(mods), strict=True))  # (dicts, names, values)
        self._checked = -1  # the GENERATION at the last passed check
        b = _Builder()
        h: str | tuple[str, str] = "h"  # after a layer: (residual, addend), summed by the next
        d, kv, dh, f32 = cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim, TensorProto.FLOAT

        def vi(name: str, shape: list | None, ty: int = f32) -> Any:
            return helper.make_tensor_value_info(name, ty, shape)

        inputs = [vi("h", ["T", d]), vi("pos", ["T"], TensorProto.INT64),
                  vi("cos_table", ["P", dh // 2]), vi("sin_table", ["P", dh // 2])]
        # each layer's cached keys/values, positions 0..L-1: views of the cache (K, L, Dh)
        self.past_names = [(f"past_k{i}", f"past_v{i}") for i in range(start, end)]
        inputs += [vi(n, [kv, "L", dh]) for pair in self.past_names for n in pair]
        pos_rows, cap_temp, mask, split = _position_nodes(b, cfg)
        new_k, new_v = [], []
        for i, layer_ops, (pk, pv) in zip(range(start, end), ops, self.past_names, strict=True):
            h, k_new, v_new = _layer_nodes(b, layers[i], layer_ops, h, pos_rows, "cos_table",
                                           "sin_table", cap_temp, mask, split, pk, pv)
            new_k.append(k_new)  # (1, K, T, Dh)
            new_v.append(v_new)
        # every layer's new keys/values in one output each: one cache write per forward
        b.nodes.append(helper.make_node("Concat", new_k, ["k_new"], axis=0))
        b.nodes.append(helper.make_node("Concat", new_v, ["v_new"], axis=0))
        # (end - start, K, T, Dh): layer-major
        outputs = [vi("k_new", [end - start, kv, "T", dh]),
                   vi("v_new", [end - start, kv, "T", dh])]
        if head_ops is not None:
            inputs.append(vi("rows", ["R"], TensorProto.INT64))
            # the last residual add and the final norm in one node, then the rows wanted
            assert isinstance(h, tuple)  # a graph has at least one layer
            x, _ = b.add_norm(*h, model.model.norm.weight, cfg.rms_norm_eps)  # (T, D)
            x = b.op("Gather", [x, "rows"], axis=0)  # (R, D)
            z = b.nbits(head_ops, d, cfg.vocab_size, x, "lm_head")  # (R, V)
            # model.Grok2.forward: z * output_multiplier_scale, then the final soft cap
            z = b.op("Mul", [z, b.const(np.array(cfg.output_multiplier_scale, np.float32))])
            z = b.soft_cap(z, cfg.final_logit_softcapping)
            b.nodes.append(helper.make_node("Identity", [z], ["logits"]))
            outputs.insert(0, vi("logits", ["R", cfg.vocab_size]))
        else:
            assert isinstance(h, tuple)
            b.nodes.append(helper.make_node("Add", list(h), ["h_out"]))  # the last residual
            outputs.insert(0, vi("h_out", ["T", d]))
        self.session = _session_for(b.nodes, b.inits, inputs, outputs, spinning=True)
        self.step = _decode_step(model, start, end, ops, head_ops)
        self._views: tuple | None = None  # decode_token's (cache.k, numpy views)

    def current(self) -> bool:
        """Whether the model still holds the weight tensors and modules this graph was built
        from. This runs every forward: while no module anywhere has registered a parameter,
        buffer or submodule since the last check (a counter bumped by PyTorch's global
        registration hooks), nothing was replaced and the answer stands; else identity
        checks of every part."""
        if GENERATION[0] == self._checked:
            return True
        tables, names, values = self.parts
        ok = all(map(operator.is_, map(dict.get, tables, names), values))
        if ok:
            self._checked = GENERATION[0]
        return ok

    def forward(self, h: Tensor, first: int, cache: Any, rope: tuple[Tensor, Tensor],
                last_only: bool = False, chunk: int = 128) -> Tensor:
        """h (1, T, D) for the tokens at positions first.. -> (1, T, D) float32, or with the
        head logits (1, T, V) fp32 ((1, 1, V) with last_only), reading and writing this
        graph's layers of the KV cache (a float32 model.KVCache, batch 1, each layer's filled
        part passed as a view). Runs the queries in chunks of `chunk` (model.QUERY_CHUNK;
        each attends to the cache so far: exact for causal layers), which bounds the score
        memory as the eager path does. `rope`: model.rope_table's float32 cos/sin (P, Dh/2)
        on the CPU, P > every position. Little host work on purpose: after a run has streamed
        the weights through the CPU caches, every host op is several times slower than
        usual."""
        x = h[0].float().cpu().numpy()  # (T, D); on the CPU already unless offloaded
        t_all = x.shape[0]
        cos, sin = rope
        assert cache.k.dtype == torch.float32  # Grok2.forward runs eagerly otherwise
        cache_k, cache_v = cache.k[:, 0].numpy(), cache.v[:, 0].numpy()  # (layers, K, M, Dh)
        if t_all == 1 and self.step is not None:  # decode: one compiled call (cpu_step.py)
            out = self.step(x[0], first, cache_k, cache_v, cos.numpy(), sin.numpy())
            return torch.from_numpy(out)[None, None]  # (1, 1, V) or (1, 1, D)
        feeds = {"cos_table": cos.numpy(), "sin_table": sin.numpy()}
        outs = []
        for i in range(0, t_all, chunk):
            j = min(t_all, i + chunk)
            feeds["h"] = x[i:j]
            feeds["pos"] = np.arange(first + i, first + j)
            cached = first + i  # L: the positions already in the cache
            for layer, (pk, pv) in enumerate(self.past_names, self.start):
                feeds[pk] = cache_k[layer, :, :cached]  # (K, L, Dh) views (copied by
                # onnxruntime only when K > 1 makes them non-contiguous)
                feeds[pv] = cache_v[layer, :, :cached]
            if self.head:
                feeds["rows"] = np.arange(j - i - 1 if last_only else 0, j - i)
            out, k_new, v_new = self.session.run(None, feeds)  # k/v (layers, K, T, Dh)
            cache.update_layers(self.start, first + i, k_new, v_new)
            outs.append(out)
        if self.head and last_only:
            outs = outs[-1:]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))[None]

    def decode_token(self, input_ids: Tensor, first: int, cache: Any, embedding: Tensor,
                     scale: float, rope: tuple[Tensor, Tensor] | None = None
                     ) -> Tensor | None:
        """The whole model for one token id (input_ids (1, 1) int64 on the CPU, at position
        `first`) in one cpu_step call, embedding included: logits (1, 1, V) float32, soft-
        capped. For a graph of every layer and the head whose step can read `embedding`
        (the model's bf16 (V, D) table; times `scale`); else None (call forward). The
        cache's numpy views and model.rope_table's cos/sin (`rope`, (P, Dh/2) float32, P >
        first) are kept between tokens: after a token has streamed the weights through the
        CPU caches, every Python-side op costs tens of microseconds (~0.35 ms a token went
        to such ops before). Without `rope`, None also when the kept table does not reach
        `first` or belongs to another cache."""
        step = self.step
        if step is None or not self.head or self.start != 0:
            return None
        if step.embedding is not embedding and not step.embed_from(embedding, scale):
            return None
        views = self._views
        if views is None or views[0] is not cache.k or first >= views[3].shape[0]:
            if rope is None:
                return None
            views = self._views = (cache.k, cache.k[:, 0].numpy(), cache.v[:, 0].numpy(),
                                   rope[0].numpy(), rope[1].numpy())
        out = step.token(input_ids.numpy(), first, *views[1:])
        return torch.from_numpy(out.reshape(1, 1, -1))

    def extra_repr(self) -> str:
        head = " + final norm, output head, soft cap" if self.head else ""
        step = ("; decode: one numba call (cpu_step, AVX512-VNNI)" if self.step is not None
                else "")
        return (f"layers {self.start}..{self.end - 1}{head}: one onnxruntime graph (norms, "
                f"q/k/v, RoPE, attention, o, shared MLP, router, {self.experts} experts per "
                f"layer); {self.kind} MatMulNBits, fp32 between{step}")


def _decode_step(model: Any, start: int, end: int, ops: list[dict],
                 head_ops: Operands | None) -> Any:
    """A cpu_step.DecodeStep of these layers (compiled and run once on a scratch cache, so
    the first token does not wait for numba), or None where cpu_int4's kernels do not run
    or some matrix is not in a form they read: decode then runs the graph too."""
    from app.engine.cpu_step import DecodeStep, available, readable

    if not readable(model.config, ops, head_ops) or not available() or _STEP_FAILED:
        return None
    try:
        step = DecodeStep(model, start, end, ops, head_ops, torch.get_num_threads())
    except ValueError:
        return None
    cfg = model.config
    scratch = np.zeros((end, cfg.num_key_value_heads, 1, cfg.head_dim), np.float32)
    table = np.zeros((1, cfg.head_dim // 2), np.float32)
    try:  # compile now (a few seconds), not at the first token
        step(np.zeros(cfg.hidden_size, np.float32), 0, scratch, scratch.copy(), table, table)
        emb = model.model.embed_tokens.weight
        if head_ops is not None and start == 0 and step.embed_from(
                emb, cfg.embedding_multiplier_scale):  # decode_token's compile, too
            step.token(np.zeros((1, 1), np.int64), 0, scratch, scratch.copy(), table, table)
    except Exception as exc:  # noqa: BLE001 - any compile failure: decode on the graph
        log.warning("the compiled decode step did not build (%s: %s); decoding runs the "
                    "onnxruntime graph", type(exc).__name__, exc)
        _STEP_FAILED.append(True)
        return None
    step.clock[:] = 0  # the warm-up's cycles are not a token's
    return step


_STEP_FAILED: list[bool] = []  # a step failed to compile in this process: none is tried again


def _position_nodes(b: _Builder, cfg: Any) -> tuple[str, str, str, str]:
    """The per-forward values every layer shares, from the input `pos` (T,) int64 (the
    absolute positions first..first+T-1) and the KV cache length L = first: pos_rows (1, T)
    for RotaryEmbedding, the attention's soft cap times the length temperature per score row
    cap_temp (G*T, 1), the causal mask (G*T, S) additive 0/-inf with S = L + T, and [L, T]
    (2,) int64 (the score columns of the cached and the new keys). As model.py:
    temperature log2(p)/log2(len) for p > len else 1 (here ln/ln, float32), key s visible to
    query p when s <= p; rows ordered g-major (row g*T + t), as the attention's scores."""
    from onnx import TensorProto

    g = cfg.kv_groups
    zero_i = b.ints([0])
    cache_len = b.op("Gather", ["pos", zero_i], axis=0)  # (1,) = first
    pos_rows = b.op("Unsqueeze", ["pos", zero_i])  # (1, T)
    p = b.op("Cast", ["pos"], to=TensorProto.FLOAT)  # (T,)
    t_len = b.const(np.array(cfg.attn_temperature_len, dtype=np.float32), "temp_len")
    ratio = b.op("Div", [b.op("Log", [b.op("Max", [p, b.const(np.array(1.0, np.float32))])]),
                         b.const(np.array(np.log(np.float32(cfg.attn_temperature_len)),
                                          dtype=np.float32), "log_len")])
    temp = b.op("Where", [b.op("Greater", [p, t_len]), ratio,
                          b.const(np.array(1.0, np.float32), "one")])  # (T,)
    temp = b.op("Mul", [temp, b.const(np.array(cfg.attn_logit_softcapping, np.float32),
                                      "cap")])  # (T,) the soft cap's factor times it
    temp = b.op("Tile", [b.op("Unsqueeze", [temp, b.ints([1])]), b.ints([g, 1])])  # (G*T, 1)
    t = b.op("Shape", ["pos"])  # (1,) = T
    s = b.op("Add", [cache_len, t])  # (1,) = S
    keys = b.op("Range", [b.const(np.array(0, np.int64), "r0"),
                          b.op("Squeeze", [s, zero_i]),
                          b.const(np.array(1, np.int64), "r1")])  # (S,)
    later = b.op("Greater", [b.op("Unsqueeze", [keys, zero_i]),
                             b.op("Unsqueeze", ["pos", b.ints([1])])])  # (T, S)
    mask = b.op("Where", [later, b.const(np.array(-np.inf, np.float32), "ninf"),
                          b.const(np.array(0.0, np.float32), "zero_f")])
    mask = b.op("Tile", [mask, b.ints([g, 1])])  # (G*T, S)
    return pos_rows, temp, mask, b.op("Concat", [cache_len, t], axis=0)


def _layer_nodes(b: _Builder, layer: Any, ops: dict, h: str | tuple[str, str], rows: str,
                 cos: str, sin: str, cap_temp: str, mask: str, split: str, past_k: str,
                 past_v: str) -> tuple[tuple[str, str], str, str]:
    """Append one model.DecoderLayer's nodes to `b`, reading the named values (shapes in the
    module docstring; `h` the input hidden state (T, D), or the previous layer's (residual,
    addend) pair whose sum it is; `rows` (1, T) int64 positions index the cos/sin tables,
    `split` is [L, T], past_k/past_v this layer's cached keys/values (K, L, Dh)); returns
    ((residual, addend): the names whose sum is h_out, k_new (1, K, T, Dh), v_new)."""
    from onnx import TensorProto, helper

    cfg = layer.self_attn.cfg
    d, h_, kv, dh = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                     cfg.head_dim)
    g_ = cfg.kv_groups
    inter, moe_inter, e_ = (cfg.intermediate_size, cfg.moe_intermediate_size,
                            cfg.num_local_experts)
    eps = cfg.rms_norm_eps
    f32 = TensorProto.FLOAT

    # ---- attention --------------------------------------------------------------------
    if isinstance(h, tuple):  # the previous layer's residual and addend: add and norm at once
        x, h = b.add_norm(*h, layer.pre_attn_norm.weight, eps)  # (T, D) each
    else:
        x = b.norm(h, layer.pre_attn_norm.weight, eps)  # (T, D)
    qkv_ops = stack_operands([ops["q"], ops["k"], ops["v"]])
    assert qkv_ops is not None  # one kind, one block size (layer_operands checked)
    qkv = b.nbits(qkv_ops, d, (h_ + 2 * kv) * dh, x, "qkv")  # (T, (H+2K)*Dh)
    # head-major once: (T, (H+2K)*Dh) -> (1, T, H+2K, Dh) -> (1, H+2K, T, Dh); then q, k and v
    # are slices along heads that need no further transposes (head h = kv*G + g, so q's
    # (1, H, T, Dh) is (1, K, G*T, Dh) as it lies)
    qkv = b.op("Transpose", [b.op("Reshape", [qkv, b.ints([1, -1, h_ + 2 * kv, dh])])],
               perm=[0, 2, 1, 3])  # (1, H+2K, T, Dh)
    qk, v_new = b.op("Split", [qkv, b.ints([h_ + kv, kv])], outputs=2, axis=1)
    # RoPE on q and k at once (BNSH input), NeoX half split over the full head_dim, fp32 table
    qk = b.op("RotaryEmbedding", [qk, rows, cos, sin], domain="com.microsoft",
              interleaved=0)  # (1, H+K, T, Dh)
    q, k_new = b.op("Split", [qk, b.ints([h_, kv])], outputs=2, axis=1)  # (1, H|K, T, Dh)
    qh = b.op("Reshape", [q, b.ints([1, kv, -1, dh])])  # (1, K, G*T, Dh)
    # The cached keys and the new ones are used where they are, not concatenated first (that
    # copied every layer's cache every token); only the score columns are joined. The soft
    # cap's division rides in the products' alpha, its factor in `cap_temp` (cap times the
    # length temperature, per score row): cap * tanh(s / cap) * temperature.
    alpha = float(dh ** -0.5 / cfg.attn_logit_softcapping)
    s = b.op("Concat", [b.op("FusedMatMul", [qh, keys], domain="com.microsoft", transB=1,
                             alpha=alpha) for keys in (past_k, k_new)],
             axis=-1)  # (1, K, G*T, S) fp32 scores / cap, S = L + T
    s = b.op("Add", [b.op("Mul", [b.op("Tanh", [s]), cap_temp]), mask])  # temperature: after
    # the cap (SGLang's Triton kernels)
    p = b.op("Softmax", [s], axis=-1)
    p_past, p_new = b.op("Split", [p, split], outputs=2, axis=-1)  # (1, K, G*T, L|T)
    o = b.op("Add", [b.op("MatMul", [p_past, past_v]),
                     b.op("MatMul", [p_new, v_new])])  # (1, K, G*T, Dh)
    o = b.op("Reshape", [o, b.ints([kv, g_, -1, dh])])  # (K, G, T, Dh)
    o = b.op("Reshape", [b.op("Transpose", [o], perm=[2, 0, 1, 3]), b.ints([0, -1])])
    a = b.nbits(ops["o"], h_ * dh, d, o, "o_proj")  # (T, D)
    # h1 = h + post_attn_norm(a) and its pre-MoE norm in one node
    m, h1 = b.add_norm(h, b.norm(a, layer.post_attn_norm.weight, eps),
                       layer.pre_moe_norm.weight, eps)  # (T, D) each

    # ---- feed-forward: (shared MLP + routed experts) * combine_scale ---------------------
    dense = b.gated_mlp(m, d, inter, ops["gate"], ops["up"], ops["down"], "mlp")
    # router logits / cap in one product (the soft cap's division folded into the fp32
    # weights), then cap * tanh(.) (model.soft_cap)
    cap = cfg.router_logit_softcapping
    router = layer.block_sparse_moe.gate.weight.detach().float().t() / cap  # (D, E) fp32
    logits = b.op("MatMul", [m, b.const(router.contiguous().numpy(), "router")])  # (T, E)
    logits = b.op("Mul", [b.op("Tanh", [logits]), b.const(np.array(cap, np.float32), "cap")])
    probs = b.op("Softmax", [logits], axis=-1)
    top_w, top_id = b.op("TopK", [probs, b.ints([cfg.num_experts_per_tok])], "top",
                         outputs=2, axis=-1)  # (T, k) fp32 (not renormalised), int64
    zero = b.const(np.array(0.0, dtype=np.float32), "zero")
    # each token's weight per expert (T, E): its top-k probabilities at their experts, 0
    # elsewhere (TopK's ids are distinct). A chosen expert's weight is > 0 (the capped
    # router logits keep every probability above zero; a weight that did underflow would
    # add exactly nothing), so "weight > 0" is "chosen".
    w_te = b.op("ScatterElements", [b.op("Mul", [probs, zero]), top_id, top_w], axis=1)
    any_e = b.op("Greater", [b.op("ReduceMax", [w_te], axes=[0], keepdims=0), zero])  # (E,)
    conds = b.op("Split", [any_e], outputs=e_, axis=0)  # E x (1,) bool
    ax1 = b.ints([1])
    routed = dense  # the experts' weighted outputs are added onto the shared MLP's
    for e in range(e_):
        ei = b.const(np.array(e, dtype=np.int64), "e")
        cond = conds[e] if e_ > 1 else conds
        # then: rows choosing e -> expert -> weighted -> added at their rows
        # The expert's weights are initializers of the main graph, read by the branch from
        # the outer scope: as the branch's own initializers onnxruntime kept them twice (raw
        # and repacked; mid-size int4 1.82 GB resident, int8 2.95 GB, against 1.41 / 2.16 GB
        # this way, the per-matmul kernels' 1.44 / 2.19 GB), at the same speed.
        sub = b.child()
        sub.inits = b.inits
        w_e = sub.op("Gather", [w_te, ei], axis=1)  # (T,) this expert's weight per token
        rows = sub.op("Transpose", [sub.op("NonZero", [w_e])], perm=[1, 0])  # (n, 1)
        xe = sub.op("GatherND", [m, rows])  # (n, D)
        ye = sub.gated_mlp(xe, d, moe_inter, ops[f"w1.{e}"], ops[f"w3.{e}"],
                           ops[f"w2.{e}"], f"expert{e}")
        we = sub.op("Unsqueeze", [sub.op("GatherND", [w_e, rows]), ax1])  # (n, 1)
        out_then = sub.op("ScatterND", [routed, rows, sub.op("Mul", [ye, we])],
                          reduction="add")  # routed[rows] += ye * we
        then_g = helper.make_graph(sub.nodes, f"expert{e}", [],
                                   [helper.make_tensor_value_info(out_then, f32, None)],
                                   initializer=[])
        keep = b.name("keep")
        else_g = helper.make_graph(
            [helper.make_node("Identity", [routed], [keep])], f"skip{e}", [],
            [helper.make_tensor_value_info(keep, f32, None)])
        routed = b.op("If", [cond], f"routed{e}", then_branch=then_g, else_branch=else_g)
    scale = b.const(np.array(cfg.moe_combine_scale, dtype=np.float32), "combine")
    ff = b.op("Mul", [routed, scale])  # (shared MLP + experts) * combine_scale
    # h_out = h1 + post_moe_norm(ff): left to the consumer (the next layer's first norm, the
    # final norm, or the graph's h_out), which adds it in its own node
    return (h1, b.norm(ff, layer.post_moe_norm.weight, eps)), k_new, v_new


def head_operands(model: Any, operands: Operand) -> Operands | None:
    """The output head's MatMulNBits operands when it and the final norm can join a graph."""
    norm = model.model.norm
    if norm.weight.device.type != "cpu" or norm.weight.is_meta:
        return None
    return operands(model.lm_head)


def build_graphs(model: Any, operands: Operand) -> list[CpuGraph]:
    """The CpuGraphs of a model.Grok2: consecutive decoder layers whose matmuls are all CPU
    "nbits" QuantLinears of one kind with exact MatMulNBits forms, grouped greedily into
    graphs of at most MAX_GRAPH_BYTES of weights (a layer over it gets none); the output
    head joins the graph that ends at the last layer when it fits too. Empty when no layer
    qualifies (float weights, GPU-resident layers, a real-size Grok-2 layer)."""
    layers = model.model.layers
    graphs: list[CpuGraph] = []
    run: list[dict] = []
    start, size = 0, 0

    def close(end: int, head: Operands | None) -> None:
        if run:
            graphs.append(CpuGraph(model, start, end, list(run), head))

    for i, layer in enumerate(layers):
        ops = layer_operands(layer, operands)
        n = _bytes(ops) if ops is not None else 0
        if ops is None or n > MAX_GRAPH_BYTES:  # no graph for this layer: it runs eagerly
            close(i, None)
            run, start, size = [], i + 1, 0
            continue
        if size + n > MAX_GRAPH_BYTES:  # a new graph starts at this layer
            close(i, None)
            run, start, size = [], i, 0
        run.append(ops)
        size += n
    head = head_operands(model, operands) if run else None
    if head is not None and size + _bytes({"head": head}) > MAX_GRAPH_BYTES:
        head = None
    close(len(layers), head)
    return graphs


def module_parts(mods: list[nn.Module]) -> tuple:
    """(owner's dict, name, value) for every weight tensor and submodule of these modules: a
    graph is built from these, and is current while each name still holds the same object
    (the loader and the placement transforms replace tensors and modules, never write them in
    place)."""
    out = []
    for top in mods:
        for mod in top.modules():
            for table in (mod._buffers, mod._parameters, mod._modules):
                for name, t in table.items():
                    if t is not None:
                        out.append((table, name, t))
    return tuple(out)

