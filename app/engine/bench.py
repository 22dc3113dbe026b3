"""Measuring: this machine's memory bandwidths (a short probe, cached in paths.cache_dir()),
the fastest CPU kernel per quantized format (kept, with a fallback), and a loaded model's
prefill and decode speed next to the plan's bound (`grok-desktop bench`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from app import paths
from app.atomic import atomic_write_text
from app.engine import cpu_kernels, quantize
from app.engine.config import Grok2Config
from app.engine.model import Grok2
from app.engine.plan import GB, Bandwidths, Format, Plan
from app.process_memory import peak_bytes, resident_bytes

CACHE_NAME = "bench-cache.json"
# A mid-size model with Grok-2's ratios (hidden/8, layers/8, vocab/8; 8 experts, top-2, shared
# MLP twice an expert's width, 8 query heads per kv head): benchmarks without the weights.
MID_CONFIG = {"hidden_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 1, "head_dim": 128, "intermediate_size": 4096,
              "moe_intermediate_size": 2048, "vocab_size": 16384}
PROBE_BYTES = 512 * 2**20  # well past any L3 cache
KERNELS_KEY = "cpu_kernels_v2"  # v2: "nbits" (onnxruntime) is a candidate; older picks predate it


def machine_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"
    return f"{cpu}|{os.cpu_count()}|{torch.get_num_threads()}|{gpu}|{torch.__version__}"


def _cache() -> dict:
    path = paths.cache_dir() / CACHE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get(machine_key(), {}) if isinstance(data, dict) else {}


def _store(key: str, value: object) -> None:
    path = paths.cache_dir() / CACHE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data.setdefault(machine_key(), {})[key] = value
    atomic_write_text(path, json.dumps(data, indent=1))


def timed(fn: Callable[[], object], repeat: int = 5, sync: bool = False) -> float:
    """Median seconds of `repeat` calls after one warm-up (medians resist noisy neighbours)."""
    fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_of(fn: Callable[[], object], repeat: int = 7) -> float:
    """Fewest seconds of `repeat` calls after one warm-up: for a bound (what the hardware can
    do), where a median would count the neighbours' load as the machine's limit."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def probe_bandwidths(refresh: bool = False, nbytes: int = PROBE_BYTES) -> Bandwidths:
    """CPU read rate (best of 7 sums over a buffer larger than the caches, at the current
    torch thread count: the cache is per machine and thread count); on CUDA also the GPU read
    rate and pinned host-to-device copies. Cached."""
    cached = _cache().get("bandwidths")
    if cached and not refresh:
        return Bandwidths(cached["gpu"], cached["cpu"], cached["pcie"], tuple(cached["measured"]))
    buf = torch.ones(nbytes // 4)
    cpu = nbytes / best_of(buf.sum)
    del buf
    bw = Bandwidths(cpu=cpu, measured=("cpu",))
    if torch.cuda.is_available():
        dev = torch.ones(nbytes, dtype=torch.bfloat16, device="cuda")
        gpu = dev.numel() * 2 / timed(dev.sum, sync=True)
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        pcie = nbytes / timed(lambda: dst.copy_(host, non_blocking=True), sync=True)
        bw = Bandwidths(gpu, cpu, pcie, ("gpu", "cpu", "pcie"))
        del dev, host, dst
    _store("bandwidths", asdict(bw) | {"measured": list(bw.measured)})
    return bw


def kernel_candidates(n: int, k: int) -> dict[str, dict[str, Callable[[], object]]]:
    """For each CPU format, the ways to do y = x W^T at decode (M = 1)."""
    w = torch.randn(n, k) / math.sqrt(k)
    x = torch.randn(1, k, dtype=torch.bfloat16)
    q8 = quantize.QuantLinear.from_weight(w, Format("int8"))
    q4 = quantize.QuantLinear.from_weight(w, Format("int4", 128))
    wb, wf = w.bfloat16(), w
    s8 = q8.scales.bfloat16()
    out: dict[str, dict[str, Callable[[], object]]] = {
        "int8": {"int8pack": lambda: torch.ops.aten._weight_int8pack_mm(x, q8.qweight, s8),
                 "dequant": lambda: F.linear(x, q8.dequantized(torch.bfloat16))},
        "int4": {"int4pack": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
                     x, q4.qweight, 128, q4.scales),
                 "dequant": lambda: F.linear(x, q4.dequantized(torch.bfloat16))},
        "bf16": {"linear": lambda: F.linear(x, wb)},
        "float32": {"linear": lambda: F.linear(x.float(), wf)},
    }
    if cpu_kernels.available():
        for kind, q in (("int8", q8), ("int4", q4)):
            nbits = quantize.nbits_kernel(q)
            if nbits is not None:
                out[kind]["nbits"] = functools.partial(nbits, x)
    return out


def measure_cpu_kernels(n: int = 16384, k: int = 8192, repeat: int = 5) -> dict[str, dict]:
    """Best-of-`repeat` seconds and effective GB/s of weight bytes for every candidate, at one
    matrix shape (a median picked PyTorch's int4 kernel over MatMulNBits on a loaded machine).
    The default is a real expert's w1, larger than any L3 cache: a small matrix stays cached
    between repeats and flatters compute-bound kernels (measured here: 4x)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, candidates in kernel_candidates(n, k).items():
        nbytes = Format(kind, 128).nbytes(n, k)
        out[kind] = {}
        for name, fn in candidates.items():
            s = best_of(fn, repeat)  # the kernel's speed, not the neighbours' load
            out[kind][name] = {"seconds": s, "gb_per_s": nbytes / s / GB}
    return out


REAL_EXPERT = (8192, 16384)  # Grok-2's hidden size and expert width: w1, w3 (16384 x 8192), w2


def random_quant_linear(n: int, k: int, fmt: Format, seed: int = 0) -> quantize.QuantLinear:
    """A QuantLinear with random codes written directly (no float weight: fast at real size);
    int4 zero points are integers (what the quantizer writes). Speed does not depend on values."""
    gen = torch.Generator().manual_seed(seed)
    if fmt.kind == "int8":
        q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        s = torch.full((n,), 1e-3)
        return quantize.QuantLinear(k, n, fmt, q, s)
    packed = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)  # any bytes
    scale = torch.full((k // fmt.group, n), 2.0**-10)  # are codes in any nibble layout
    zero = (8 - torch.randint(0, 16, scale.shape, generator=gen)) * scale
    scales = torch.stack([scale, zero], -1).to(torch.bfloat16)
    return quantize.QuantLinear(k, n, fmt, packed, scales)


def bench_real_expert(kind: str, bw: Bandwidths, repeat: int = 7) -> dict[str, Any]:
    """One real-size routed expert (w1, w3: 16384 x 8192, w2: 8192 x 16384) at M = 1 with the
    selected CPU kernel: best-of-`repeat` seconds, weight GB/s, and that rate as a fraction of
    the probed read bandwidth (same thread count)."""
    from app.engine.model import Expert

    d, f = REAL_EXPERT
    fmt = Format(kind, 128)
    expert = Expert(d, f)
    for i, (name, n, k) in enumerate((("w1", f, d), ("w3", f, d), ("w2", d, f))):
        quantize.set_module(expert, name, random_quant_linear(n, k, fmt, seed=i))
    quantize.build_cpu_kernels(expert)
    x = torch.randn(1, d, dtype=torch.bfloat16)
    with torch.inference_mode():
        seconds = best_of(lambda: expert(x), repeat)
    nbytes = 3 * fmt.nbytes(f, d)
    kernel = quantize.CPU_KERNELS[kind]
    fused = quantize.gated_mlp_kernel(expert.w1, expert.w3, expert.w2)
    if kernel == "nbits" and fused is not None and fused.backend == "vnni":
        kernel = "vnni"  # cpu_int4's kernel runs these int4 weights
    return {"seconds": seconds, "gb_per_s": nbytes / seconds / GB,
            "fraction_of_read": nbytes / seconds / bw.cpu, "kernel": kernel}


def select_cpu_kernels(refresh: bool = False) -> dict[str, str]:
    """Keep the fastest measured kernel per quantized format (cached); the fixed defaults are
    the fallback when a measurement fails."""
    chosen = _cache().get(KERNELS_KEY)
    if not chosen or refresh:
        chosen = dict(quantize.CPU_KERNELS)
        try:
            results = measure_cpu_kernels()
            for kind in ("int8", "int4"):
                chosen[kind] = min(results[kind], key=lambda name: results[kind][name]["seconds"])
        except RuntimeError as exc:
            print(f"grok-desktop: kernel measurement failed ({exc}); using defaults",
                  file=sys.stderr)
        _store(KERNELS_KEY, chosen)
    quantize.CPU_KERNELS.update(chosen)
    return chosen


def synthetic_model(cfg: Grok2Config, quant: str, device: str | torch.device = "cpu",
                    seed: int = 0) -> Grok2:
    """Random Grok-2-shaped weights built directly on `device` (no checkpoint files; random
    numbers on a GPU are ~100x faster than on a CPU), quantized as `quant` says."""
    from app.engine.weights import build_meta_model

    gen = torch.Generator(device=device).manual_seed(seed)
    model = build_meta_model(cfg)
    dtype = torch.float32 if quant == "float32" else torch.bfloat16
    for name, p in list(model.named_parameters()):
        t = torch.randn(p.shape, generator=gen, device=device, dtype=dtype)
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * t
        else:
            t /= math.sqrt(p.shape[-1]) if "embed" not in name else cfg.embedding_multiplier_scale
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(t, requires_grad=False))
    if quant in ("int8", "int4"):
        quantize.quantize_model(model, quant)
    return model.eval()


@torch.inference_mode()
def bench_model(model: Grok2, plan: Plan, bw: Bandwidths, prompt_lengths=(32, 256),
                decode_tokens: int = 16, kv_tokens: int = 1024) -> dict:
    """Prefill tokens/s per prompt length, time to first token, decode tokens/s, peak memory,
    bytes per token, each next to the plan's bound."""
    device = model.model.embed_tokens.weight.device
    cuda = torch.cuda.is_available()
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    result: dict[str, Any] = {"prefill": [], "plan": plan.quant}
    for n in prompt_lengths:
        model.setup_cache(n + decode_tokens + 1)
        ids = torch.randint(0, vocab, (1, n), generator=gen).to(device)
        s = timed(functools.partial(model, ids, start_pos=0, last_only=True), repeat=1, sync=cuda)
        result["prefill"].append({"tokens": n, "seconds": s, "tokens_per_s": n / s})
    result["ttft_s"] = result["prefill"][0]["seconds"]
    n = prompt_lengths[0]
    model.setup_cache(n + decode_tokens + 1)
    model(torch.randint(0, vocab, (1, n), generator=gen).to(device), start_pos=0, last_only=True)
    token = torch.tensor([[1]], device=device)
    steps = []
    for i in range(decode_tokens):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(token, start_pos=n + i, last_only=True)
        token = logits[:, -1].argmax(-1, keepdim=True)  # reads the logits: a real sync point
        steps.append(time.perf_counter() - start)
    decode = 1.0 / statistics.median(steps[1:] or steps)
    bound = plan.decode_bound(bw, kv_tokens=n)
    result.update({
        "decode_tokens_per_s": decode, "decode_bound_tokens_per_s": bound,
        "decode_fraction_of_bound": decode / bound,
        "bytes_per_token": plan.bytes_per_token(kv_tokens=n),
        "peak_cpu_bytes": peak_bytes() or 0,
        "resident_cpu_bytes": resident_bytes(),  # now, after the run (None: not Linux)
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
        "threads": torch.get_num_threads(),  # CPU threads of the matmuls (torch, onnxruntime)
        # onnxruntime graphs of whole layers (cpu_graph.py): [first, last] layer, head or not,
        # decode on cpu_step's compiled call or not
        "cpu_graphs": [[g.start, g.end - 1, g.head, g.step is not None]
                       for g in model.graphs()],
        # a bf16 model's decode as one compiled call (cpu_bf16.py) or not
        "cpu_decode": model.cpu_decode is not None,
        "bandwidths": {"gpu": bw.gpu, "cpu": bw.cpu, "pcie": bw.pcie,
                       "measured": list(bw.measured)},
    })
    return result


KERNEL_NAMES = {"nbits": "onnxruntime MatMulNBits", "vnni": "AVX512-VNNI int4 (cpu_int4)",
                "int4pack": "PyTorch int4pack",
                "int8pack": "PyTorch int8pack", "dequant": "dequantize + bf16 matmul"}


def format_result(r: dict) -> str:
    plural = "s" if r["threads"] != 1 else ""
    lines = [f"Quantization {r['plan']}, {r['threads']} CPU thread{plural}"]
    graphs = r.get("cpu_graphs")
    if graphs:
        parts = [f"layers {a}..{b}" + (" + final norm, output head" if head else "")
                 for a, b, head, _ in graphs]
        step = " (decode: one numba call, cpu_step)" if all(g[3] for g in graphs) else ""
        lines.append(f"  CPU layers as onnxruntime graphs: {', '.join(parts)}{step}")
    if r.get("cpu_decode"):
        lines.append("  decode: one numba call over the bf16 weights (cpu_bf16)")
    for p in r["prefill"]:
        lines.append(f"  prefill {p['tokens']:>6} tokens: {p['tokens_per_s']:8.1f} tokens/s "
                     f"({p['seconds']:.2f} s)")
    b = r["bytes_per_token"]
    lines.append(f"  time to first token: {r['ttft_s']:.2f} s")
    lines.append(f"  decode: {r['decode_tokens_per_s']:.2f} tokens/s; bound "
                 f"{r['decode_bound_tokens_per_s']:.2f} ({100 * r['decode_fraction_of_bound']:.0f}%)")
    lines.append(f"  bytes per token: GPU {b['gpu'] / 1e9:.3f} GB, CPU {b['cpu'] / 1e9:.3f} GB, "
                 f"PCIe {b['pcie'] / 1e6:.2f} MB")
    resident = r.get("resident_cpu_bytes")
    if resident:
        lines.append(f"  CPU memory: {resident / 1e9:.2f} GB resident after the run, peak "
                     f"{r['peak_cpu_bytes'] / 1e9:.2f} GB (the peak includes loading and "
                     f"building the CPU kernels)")
        lines.append(f"  peak GPU memory: {r['peak_gpu_bytes'] / 1e9:.2f} GB")
    else:
        lines.append(f"  peak memory: CPU {r['peak_cpu_bytes'] / 1e9:.2f} GB, "
                     f"GPU {r['peak_gpu_bytes'] / 1e9:.2f} GB")
    e = r.get("real_expert")
    if e:
        kernel = KERNEL_NAMES.get(e["kernel"], e["kernel"])
        lines.append(f"  real-size expert (M=1, {kernel}): {e['seconds'] * 1e3:.2f} ms, "
                     f"{e['gb_per_s']:.1f} GB/s = {100 * e['fraction_of_read']:.0f}% of the "
                     f"{r['bandwidths']['cpu'] / GB:.1f} GB/s read bound")
    return "\n".join(lines)
