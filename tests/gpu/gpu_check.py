"""GPU check for the lent accelerator machine: one prepared script, under 8 minutes.

    python tests/gpu/gpu_check.py [--layers 4] [--skip-accelerate]

Builds random weights at the real Grok-2 sizes directly on the GPU (CPU random init is ~100x
slower), quantizes them to int4, and for plans of a 24 GB and a 48 GB card (the shared-MLP
share of the 64-layer plan applied to these layers) measures decode and a 2,000-token prefill.
Reports ms per layer (slope between all layers and half of them), the extrapolation to 64
layers, the bound from this machine's measured bandwidths, and, in the same run, the same
layers in bf16 dispatched by Hugging Face accelerate's `cpu_offload`. It also checks the GPU
int4 paths (tinygemm and dequantize) against the dequantized weight, and the RoPE table built on
CUDA against SGLang's recipe. Exits 0 with
"skipped" without CUDA; writes gpu_check.json under $OUT when set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.engine import bench
from app.engine.config import Grok2Config
from app.engine.offload import place_model
from app.engine.plan import GB, Format, make_plan
from app.engine.quantize import QuantLinear

PROMPT = 2000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check_gpu_int4() -> dict:
    """tinygemm (M <= 4) and dequantize (M > 4) against x @ dequantized^T, on the GPU."""
    w = torch.randn(16384, 8192, device="cuda") / 90.5
    q = QuantLinear.from_weight(w, Format("int4", 128)).placed(torch.device("cuda"))
    out = {}
    for m in (1, 4, 32):
        x = torch.randn(m, 8192, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ q.dequantized().T
        got = q(x).float()
        out[f"int4_rel_err_m{m}"] = ((got - ref).norm() / ref.norm()).item()
        out[f"int4_us_m{m}"] = 1e6 * bench.timed(lambda x=x: q(x), 20, sync=True)
    return out


def check_rope_table() -> dict:
    """Our RoPE table on CUDA against one built SGLang's way on CUDA (its model is constructed
    under `with torch.device(gpu)`), and how far the CPU-built table is from it
    (docs/grok2.md#rope)."""
    from app.engine.model import rope_cos_sin

    cfg, pos = Grok2Config(), [0, 1025, 32767, 100000]
    with torch.device("cuda"):
        inv_freq = 1.0 / (int(cfg.rope_theta) ** (torch.arange(0, 128, 2, dtype=torch.float) / 128))
        t = torch.arange(cfg.max_position_embeddings, dtype=torch.float)
        freqs = torch.einsum("i,j -> ij", t, inv_freq)
        want = torch.cat((freqs.cos(), freqs.sin()), dim=-1)[pos]
    tables = {}
    for device in ("cuda", "cpu"):
        cos, sin = rope_cos_sin(torch.tensor(pos, device=device), 128, cfg.rope_theta,
                                cfg.max_position_embeddings)
        tables[device] = torch.cat((cos, sin), dim=-1).to("cuda")
    return {"cuda_table_bit_equal": bool(torch.equal(tables["cuda"], want)),
            "cpu_vs_cuda_max_abs": (tables["cpu"] - want).abs().max().item()}


def layer_slope(model, run, layers: int) -> tuple[float, float]:
    """(seconds per layer, fixed seconds) from runs with all layers and with half of them."""
    full = list(model.model.layers)
    t_all = run()
    model.model.layers = nn.ModuleList(full[: layers // 2])
    t_half = run()
    model.model.layers = nn.ModuleList(full)
    per_layer = (t_all - t_half) / (layers - layers // 2)
    return per_layer, t_all - layers * per_layer


def decode_step(model, start: int) -> float:
    token = torch.tensor([[7]], device="cuda")
    times = []
    for i in range(8):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(token, start_pos=start + i, last_only=True)[:, -1].argmax()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def prefill(model) -> float:
    ids = torch.randint(0, 131072, (1, PROMPT), device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model(ids, start_pos=0, last_only=True)[:, -1].argmax()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure_plan(model, cfg: Grok2Config, gpu_gb: int, layers: int, bw) -> dict:
    real = make_plan(Grok2Config(), "int4", gpu_gb * GB, 256 * GB)
    share = round(layers * len(real.gpu_mlp_layers) / 64)
    local = dataclasses.replace(make_plan(cfg, "int4", 80 * GB, 256 * GB),
                                gpu_mlp_layers=tuple(range(share)), gpu_expert_layers=(),
                                embed_on_gpu=True, stream_slots=real.stream_slots)
    place_model(model, local, "cuda")
    model.setup_cache(PROMPT + 64)
    model(torch.randint(0, 131072, (1, 32), device="cuda"), start_pos=0, last_only=True)
    dec_layer, dec_fixed = layer_slope(model, lambda: decode_step(model, 32), layers)
    pre_layer, pre_fixed = layer_slope(model, lambda: prefill(model), layers)
    tok_s = 1 / (dec_fixed + 64 * dec_layer)
    bound = real.decode_bound(bw)
    return {"gpu_gb": gpu_gb, "shared_mlps_on_gpu_of_64": len(real.gpu_mlp_layers),
            "decode_ms_per_layer": 1e3 * dec_layer, "decode_fixed_ms": 1e3 * dec_fixed,
            "decode_tok_s_64_layers": tok_s, "decode_bound_tok_s": bound,
            "decode_fraction_of_bound": tok_s / bound,
            "prefill_ms_per_layer": 1e3 * pre_layer,
            "prefill_tok_s_64_layers": PROMPT / (pre_fixed + 64 * pre_layer),
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9}


def measure_accelerate(cfg: Grok2Config) -> dict:
    try:
        from accelerate import cpu_offload
    except ImportError:
        return {"accelerate": "not installed on this machine"}
    model = bench.synthetic_model(cfg, "bf16", device="cuda").cpu()
    cpu_offload(model, execution_device=torch.device("cuda"))
    token = torch.tensor([[7]], device="cuda")
    run = lambda: bench.timed(lambda: model(token), 2, sync=True)
    per_layer, fixed = layer_slope(model, run, cfg.num_hidden_layers)
    return {"accelerate_ms_per_layer": 1e3 * per_layer,
            "accelerate_tok_s_64_layers": 1 / (fixed + 64 * per_layer)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--skip-accelerate", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    torch.set_grad_enabled(False)
    report = {"device": torch.cuda.get_device_name(), "cpu_threads": torch.get_num_threads()}
    log("probing bandwidths and CPU kernels")
    bw = bench.probe_bandwidths(refresh=True)
    report["bandwidths_gb_s"] = {"gpu": bw.gpu / GB, "cpu": bw.cpu / GB, "pcie": bw.pcie / GB}
    report["cpu_kernels_16384x8192"] = bench.measure_cpu_kernels(16384, 8192, repeat=5)
    report["cpu_kernels_chosen"] = bench.select_cpu_kernels(refresh=True)
    log("checking GPU int4 paths")
    report["gpu_int4"] = check_gpu_int4()
    report["rope_table"] = check_rope_table()
    log(json.dumps(report["rope_table"]))
    cfg = Grok2Config(num_hidden_layers=args.layers)
    log(f"building {args.layers} real-size layers (int4) on the GPU")
    model = bench.synthetic_model(cfg, "int4", device="cuda")
    torch.cuda.empty_cache()
    report["plans"] = []
    for gpu_gb in (24, 48):
        log(f"measuring the {gpu_gb} GB plan")
        report["plans"].append(measure_plan(model, cfg, gpu_gb, args.layers, bw))
        log(json.dumps(report["plans"][-1]))
    del model
    torch.cuda.empty_cache()
    if not args.skip_accelerate:
        log("accelerate cpu_offload, bf16, 2 layers")
        report["accelerate"] = measure_accelerate(Grok2Config(num_hidden_layers=2))
    text = json.dumps(report, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
