"""Side-by-side speed against llama.cpp (`llama-bench`) on the same shapes, interleaved.

    python bench/peer_llamacpp.py [--llama-bench PATH] [--work DIR] [--formats int4,int8,bf16]
                                  [--threads 1,2] [--repeats 3] [--tokens 64] [--prefill 512]
                                  [--depth N] [--real] [--int4-kernels vnni,mlas]
                                  [--no-mid]

Not run by CI. What it does:
1. Finds `llama-bench` (--llama-bench, $LLAMA_BENCH, PATH, or an earlier build in --work);
   else builds it from llama-cpp-python's sdist (its vendor/llama.cpp), in --work, with
   `nice -n 19 cmake -DGGML_NATIVE=ON -DLLAMA_CURL=OFF`, target llama-bench only. Nothing of
   llama.cpp is kept in this repository.
2. Writes GGUF files (the `gguf` package) with Grok-2's architecture ("grok") at the shapes
   of `bench --synthetic` (app.engine.bench.MID_CONFIG) and, with --real, real-size slices of
   1 and 2 layers (hidden 8192, 64/8 heads, dense 32768, 8 experts x 16384, top-2; small
   vocab: the per-layer slope cancels the head; bf16 layers get 2 experts, not 8: a token
   reads the same bytes, and the 2-layer file is 7 GB, not 17). Weights are random
   quantized bytes written directly (Q4_0 / Q8_0 / BF16; sane fp16 block scales): speed
   does not depend on the values.
3. Runs ours (`python -m app bench --synthetic`) and `llama-bench` (`-p 0 -n TOKENS` decode,
   `-p PREFILL -n 0` prefill; with --depth N the decode runs after N tokens: llama-bench `-d N`,
   ours after an N-token prompt) alternately, `--repeats` times each, at every thread count,
   and prints medians (and, for decode, minima) with the ratio and each side's share of the RAM
   read bound (best-of-7 read rate at that thread count; bytes per token = every weight read
   once per token, routed experts at top-k/E).
   With --real, ours is one real-size DecoderLayer timed directly (per-layer ms, decode at a
   32-token context and a 512-token prefill); llama.cpp's per-layer figure is the slope
   between its 1- and 2-layer files. Its int4 rows run once per `--int4-kernels` entry (default
   vnni): "vnni" is what the engine picks (app/engine/cpu_int4.py where it runs, else
   onnxruntime's MatMulNBits), "mlas" forces MatMulNBits (GROK_DESKTOP_INT4_KERNEL=mlas); the
   kernel that ran is printed in the row.
GGUF files live in --work (default /tmp/peer_llamacpp) and are deleted after use. A real-size
int4 layer is about 2.3 GB (file) plus as much again for our repacked copy in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `app` from this checkout

SDIST = "llama-cpp-python==0.3.36"
FORMATS = {"int4": "Q4_0", "int8": "Q8_0", "bf16": "BF16"}
INT4_ENV = "GROK_DESKTOP_INT4_KERNEL"  # app/engine/cpu_int4.ENV: "mlas" forces MatMulNBits
GGUF_CONTEXT = 8192  # the context length written into the GGUF files (write_gguf)
HEAD = {"int4": "Q8_0", "int8": "Q8_0", "bf16": "BF16"}  # ours: the output head is int8 at most
REAL = {"hidden_size": 8192, "num_attention_heads": 64, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 32768, "moe_intermediate_size": 16384,
        "vocab_size": 2048}


# ---- llama-bench ----------------------------------------------------------------------------

def find_llama_bench(explicit: str | None, work: Path) -> Path:
    """An existing llama-bench, or one built from the llama-cpp-python sdist in `work`."""
    for candidate in (explicit, os.environ.get("LLAMA_BENCH"), shutil.which("llama-bench"),
                      str(work / "build" / "bin" / "llama-bench")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return build_llama_bench(work)


def build_llama_bench(work: Path) -> Path:
    """pip download the sdist, extract it, cmake-build target llama-bench (nice 19)."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--no-binary", ":all:", SDIST, "-d", str(work)], check=True)
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = work / "build"
    nice = ["nice", "-n", "19"]
    subprocess.run([*nice, "cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"], check=True)
    subprocess.run([*nice, "cmake", "--build", str(build), "--target", "llama-bench", "-j",
                    str(os.cpu_count() or 2)], check=True)
    return build / "bin" / "llama-bench"


def run_llama_bench(exe: Path, model: Path, threads: int, prompt: int, gen: int,
                    depth: int = 0) -> float:
    """Tokens/s of one llama-bench run (-r 1: the harness repeats and interleaves); `depth`
    tokens in the KV cache before the measured ones (-d)."""
    out = subprocess.run([str(exe), "-m", str(model), "-t", str(threads), "-p", str(prompt),
                          "-n", str(gen), "-d", str(depth), "-r", "1", "-o", "jsonl"],
                         check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return float(rows[-1]["avg_ts"])


# ---- GGUF -----------------------------------------------------------------------------------

def _random_blocks(qtype: str, nbytes: int) -> np.ndarray:
    """`nbytes` of random blocks of `qtype` with small, finite fp16 scales."""
    import gguf

    rng = np.random.default_rng(0)
    if qtype == "BF16":
        base = (rng.standard_normal(1 << 20, dtype=np.float32) * 0.02).view(np.uint32)
        raw = (base >> 16).astype(np.uint16).view(np.uint8)
    else:
        size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)][1]
        blocks = rng.integers(0, 256, (1 << 16, size), dtype=np.uint8)
        blocks[:, :2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
        raw = blocks.reshape(-1)
    reps = -(-nbytes // raw.size)
    return np.tile(raw, reps)[:nbytes]


def _byte_shape(shape: tuple[int, ...], qtype: str) -> tuple[tuple[int, ...], int]:
    import gguf

    if qtype == "F32":
        return shape[:-1] + (shape[-1] * 4,), shape[-1] * 4
    if qtype == "BF16":
        return shape[:-1] + (shape[-1] * 2,), shape[-1] * 2
    block, size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
    return shape[:-1] + (shape[-1] // block * size,), shape[-1] // block * size


def gguf_tensors(cfg: dict, layers: int, fmt: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, numpy-order shape, type) of a Grok GGUF: the matrices in `fmt`'s type, norms F32,
    router BF16 (ours keeps it bf16), head per HEAD."""
    d, v, ff, fe = (cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"],
                    cfg["moe_intermediate_size"])
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    e, t = cfg.get("num_local_experts", 8), FORMATS[fmt]
    out = [("token_embd.weight", (v, d), t), ("output_norm.weight", (d,), "F32"),
           ("output.weight", (v, d), HEAD[fmt])]
    for i in range(layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (d,), "F32"), (b + "attn_q.weight", (q, d), t),
                (b + "attn_k.weight", (kv, d), t), (b + "attn_v.weight", (kv, d), t),
                (b + "attn_output.weight", (d, q), t), (b + "attn_output_norm.weight", (d,), "F32"),
                (b + "ffn_norm.weight", (d,), "F32"), (b + "ffn_gate.weight", (ff, d), t),
                (b + "ffn_up.weight", (ff, d), t), (b + "ffn_down.weight", (d, ff), t),
                (b + "ffn_gate_inp.weight", (e, d), "BF16"),
                (b + "ffn_gate_exps.weight", (e, fe, d), t),
                (b + "ffn_up_exps.weight", (e, fe, d), t),
                (b + "ffn_down_exps.weight", (e, d, fe), t),
                (b + "layer_output_norm.weight", (d,), "F32")]
    return out


def write_gguf(path: Path, cfg: dict, layers: int, fmt: str) -> int:
    """A Grok-architecture GGUF with random weights; returns the bytes read per decoded token
    (every tensor once, routed experts at top-k/E, one embedding row)."""
    import gguf

    d, v = cfg["hidden_size"], cfg["vocab_size"]
    w = gguf.GGUFWriter(str(path), "grok")
    w.add_context_length(GGUF_CONTEXT)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_rope_freq_base(208533496.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(cfg.get("num_local_experts", 8))
    w.add_expert_used_count(cfg.get("num_experts_per_tok", 2))
    w.add_attn_logit_softcapping(30.0)
    w.add_router_logit_softcapping(30.0)
    w.add_final_logit_softcapping(50.0)
    w.add_attn_temperature_length(1024)
    w.add_embedding_scale(90.50966799187809)
    w.add_logit_scale(0.5)
    w.add_tokenizer_model("llama")  # a plain SPM vocab: byte tokens, then filler
    tokens = [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [f"t{i}".encode() for i in range(256, v)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * v)
    w.add_token_types([6] * 256 + [1] * (v - 256))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    tensors = gguf_tensors(cfg, layers, fmt)
    read = 0
    top = cfg.get("num_experts_per_tok", 2) / cfg.get("num_local_experts", 8)
    for name, shape, qtype in tensors:
        byte_shape, row = _byte_shape(shape, qtype)
        nbytes = int(np.prod(byte_shape))
        raw = getattr(gguf.GGMLQuantizationType, qtype)
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=raw)
        read += row if name == "token_embd.weight" else int(nbytes * (top if "_exps" in name
                                                                      else 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, qtype in tensors:
        byte_shape, _ = _byte_shape(shape, qtype)
        if qtype == "F32":
            w.write_tensor_data(np.ones(shape, dtype=np.float32))
        else:
            w.write_tensor_data(_random_blocks(qtype, int(np.prod(byte_shape))))
    w.close()
    return read


# ---- ours -----------------------------------------------------------------------------------

def run_ours_mid(fmt: str, threads: int, tokens: int, prefill: int,
                 depth: int = 32) -> tuple[float, float, dict]:
    """(decode tok/s, prefill tok/s, the full result) from `python -m app bench --synthetic`,
    decoding after a `depth`-token prompt."""
    out = subprocess.run([sys.executable, "-m", "app", "bench", "--synthetic", "--quant", fmt,
                          "--threads", str(threads), "--gpu-mem", "0", "--json",
                          "--no-real-expert", "--prompt-lengths", f"{depth},{prefill}",
                          "--decode-tokens", str(tokens)],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["decode_tokens_per_s"], r["prefill"][-1]["tokens_per_s"], r


def real_layer(fmt: str, threads: int, experts: int = 8) -> tuple:
    """(one real-size DecoderLayer with random weights in `fmt`, its Grok2Config), its CPU
    kernels built at `threads` threads (the int4 kernel as cpu_int4.ENV says)."""
    import torch

    from app.engine import bench, quantize
    from app.engine.config import Grok2Config
    from app.engine.model import DecoderLayer
    from app.engine.plan import weight_format

    torch.set_num_threads(threads)
    cfg = Grok2Config.from_dict(dict(REAL, num_hidden_layers=1, num_local_experts=experts,
                                     num_experts_per_tok=2))
    with torch.device("meta"):
        layer = DecoderLayer(cfg, 0)
    for name, mod in list(layer.named_modules()):
        if isinstance(mod, torch.nn.Linear):
            f = weight_format(f"model.layers.0.{name}", mod.out_features, mod.in_features, fmt)
            if f.kind in ("int4", "int8"):
                new: torch.nn.Module = bench.random_quant_linear(mod.out_features,
                                                                  mod.in_features, f)
            else:
                new = torch.nn.Linear(mod.in_features, mod.out_features, bias=False,
                                      dtype=torch.bfloat16)
                torch.nn.init.normal_(new.weight, std=0.02)
            quantize.set_module(layer, name, new)
    for name, p in list(layer.named_parameters()):
        if p.is_meta:
            owner, _, attr = name.rpartition(".")
            setattr(layer.get_submodule(owner), attr,
                    torch.nn.Parameter(torch.ones(p.shape, dtype=torch.bfloat16), False))
    quantize.build_cpu_kernels(layer)
    return layer, cfg


def run_ours_real_layer(fmt: str, threads: int, repeats: int, prefill: int, experts: int = 8
                        ) -> tuple[float, float, str]:
    """(decode ms, prefill ms, the int4 kernel that ran: "vnni", "mlas" or "") of one real-size
    DecoderLayer with random quantized weights."""
    import torch

    from app.engine import cpu_int4
    from app.engine.model import KVCache, cpu_gemv, torch_threads

    layer, cfg = real_layer(fmt, threads, experts)
    cache = KVCache(cfg, 1, prefill + 64, torch.bfloat16, "cpu")
    h = torch.randn(1, prefill, cfg.hidden_size, dtype=torch.bfloat16)
    decode, pre = [], []
    # as Grok2.forward runs its layers: PyTorch's own ops on one thread when onnxruntime does
    # the matmuls, oneDNN off for one-token bf16 matmuls
    threads = 1 if fmt in ("int4", "int8") else None
    with torch.inference_mode(), torch_threads(threads):
        for _ in range(repeats):
            start = time.perf_counter()
            layer(h, torch.arange(prefill), cache)
            pre.append(time.perf_counter() - start)
        x = h[:, :1]
        for i in range(max(8, 3 * repeats)):
            start = time.perf_counter()
            with cpu_gemv(True):
                layer(x, torch.tensor([32 + i]), cache)
            decode.append(time.perf_counter() - start)
    kernel = ("vnni" if cpu_int4.available() else "mlas") if fmt == "int4" else ""
    return statistics.median(decode[1:]) * 1e3, min(pre) * 1e3, kernel


def read_bound(threads: int) -> float:
    """Best-of-7 read rate (bytes/s) at `threads` threads (a 512 MiB sum)."""
    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(128 * 2**20)
    buf.sum()
    best = min(_time(buf.sum) for _ in range(7))
    return buf.numel() * 4 / best


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- the runs -------------------------------------------------------------------------------

def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f} (min {min(xs):.1f})"


def mid(exe: Path, work: Path, formats: list[str], threads: list[int], repeats: int,
        tokens: int, prefill: int, depth: int = 0) -> None:
    """The mid-size table. `depth`: the decode runs after that many tokens in the KV cache
    (ours after a `depth`-token prompt, llama-bench with -d); 0: ours after 32, llama.cpp
    after none, as before this option."""
    from app.engine.bench import MID_CONFIG

    cfg = dict(MID_CONFIG, num_local_experts=8, num_experts_per_tok=2)
    # llama.cpp's KV cache (f16 by default) read per token at that depth
    kv_bytes = 2 * 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] \
        * cfg["head_dim"] * depth
    print(f"## bench --synthetic shapes ({cfg['num_hidden_layers']} layers, hidden "
          f"{cfg['hidden_size']}); decode -n {tokens} at depth {depth or '32 (ours) / 0'}, "
          f"prefill {prefill}; medians of {repeats} interleaved "
          f"run{'s' if repeats > 1 else ''}; load {os.getloadavg()[0]:.1f}")
    print("| format | threads | ours tok/s | llama.cpp tok/s | ours / llama.cpp | ours % of RAM "
          "bound | llama.cpp % | prefill ours / llama.cpp tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt in formats:
        path = work / f"mid-{fmt}.gguf"
        llama_bytes = write_gguf(path, cfg, cfg["num_hidden_layers"], fmt) + kv_bytes
        try:
            for t in threads:
                bw = read_bound(t)
                ours, theirs, ours_pre, theirs_pre = [], [], [], []
                ours_bytes = 0.0
                for _ in range(repeats):
                    d, p, r = run_ours_mid(fmt, t, tokens, prefill, depth or 32)
                    ours.append(d)
                    ours_pre.append(p)
                    ours_bytes = r["bytes_per_token"]["cpu"] + r["bytes_per_token"]["gpu"]
                    theirs.append(run_llama_bench(exe, path, t, 0, tokens, depth))
                    theirs_pre.append(run_llama_bench(exe, path, t, prefill, 0))
                mo, ml = statistics.median(ours), statistics.median(theirs)
                print(f"| {fmt} vs {FORMATS[fmt]} | {t} | {_stats(ours)} | {_stats(theirs)} | "
                      f"{mo / ml:.2f} | {100 * mo * ours_bytes / bw:.0f}% | "
                      f"{100 * ml * llama_bytes / bw:.0f}% | "
                      f"{statistics.median(ours_pre):.0f} / {statistics.median(theirs_pre):.0f} |",
                      flush=True)
        finally:
            path.unlink(missing_ok=True)


def real(exe: Path, work: Path, formats: list[str], threads: list[int], repeats: int,
         prefill: int, int4_kernels: list[str]) -> None:
    print(f"\n## real-size slice (per layer; llama.cpp: slope of 1 vs 2 layers); prefill "
          f"{prefill}; load {os.getloadavg()[0]:.1f}")
    print("| format | threads | decode ms/layer ours / llama.cpp | speed ours / llama.cpp | "
          "prefill tok/s ours / llama.cpp |")
    print("|---|---|---|---|---|")
    for fmt in formats:
        # bf16 layers with 2 experts, not 8: the same bytes a token reads (top-2), and files
        # (7 GB for two layers, not 17) that fit this machine's memory beside ours
        experts = 2 if fmt == "bf16" else 8
        cfg = dict(REAL, num_local_experts=experts, num_experts_per_tok=2)
        paths = {n: work / f"real{n}-{fmt}.gguf" for n in (1, 2)}
        try:
            for n, p in paths.items():
                write_gguf(p, cfg, n, fmt)
            kernels = int4_kernels if fmt == "int4" else [""]
            for t in threads:
                ours: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in kernels}
                ran: dict[str, str] = {}
                th_d, th_p = [], []
                for _ in range(repeats):
                    for k in kernels:  # ours with each int4 kernel, then llama.cpp
                        env = {n: v for n, v in os.environ.items() if n != INT4_ENV}
                        if k == "mlas":
                            env[INT4_ENV] = "mlas"
                        code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); "
                                "from bench.peer_llamacpp import run_ours_real_layer as f; "
                                f"print(json.dumps(f({fmt!r}, {t}, 3, {prefill}, {experts})))")
                        out = subprocess.run([sys.executable, "-c", code], check=True,
                                             cwd=ROOT, capture_output=True, text=True,
                                             env=env).stdout
                        d, p, ran[k] = json.loads(out.strip().splitlines()[-1])
                        ours[k][0].append(d)
                        ours[k][1].append(p)
                    g1, g2 = (run_llama_bench(exe, paths[n], t, 0, 16) for n in (1, 2))
                    th_d.append(1e3 / g2 - 1e3 / g1)
                    p1, p2 = (run_llama_bench(exe, paths[n], t, prefill, 0) for n in (1, 2))
                    th_p.append(prefill / p2 * 1e3 - prefill / p1 * 1e3)  # ms per layer
                td, tp = statistics.median(th_d), statistics.median(th_p)
                for k in kernels:
                    od, op = statistics.median(ours[k][0]), statistics.median(ours[k][1])
                    label = f"{fmt} ({ran[k]})" if ran[k] else fmt
                    print(f"| {label} vs {FORMATS[fmt]} | {t} | {od:.1f} / {td:.1f} | "
                          f"{td / od:.2f}x | {prefill / op * 1e3:.1f} / "
                          f"{prefill / tp * 1e3:.1f} |", flush=True)
        finally:
            for p in paths.values():
                p.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--llama-bench", help="path to an existing llama-bench binary")
    ap.add_argument("--work", default="/tmp/peer_llamacpp", help="build and GGUF folder")
    ap.add_argument("--formats", default="int4,int8,bf16", help="comma-separated, of "
                    + ", ".join(FORMATS))
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per row")
    ap.add_argument("--tokens", type=int, default=64, help="decoded tokens per run (-n)")
    ap.add_argument("--prefill", type=int, default=512, help="prompt tokens of the prefill "
                    "runs (-p)")
    ap.add_argument("--depth", type=int, default=0,
                    help="tokens in the KV cache before the decoded ones (mid-size table; "
                         "0: ours after 32, llama.cpp after none)")
    ap.add_argument("--real", action="store_true", help="also the real-size per-layer slope")
    ap.add_argument("--int4-kernels", default="vnni", help="comma-separated, of vnni, mlas: "
                    "the int4 kernels the real-size rows run ours with (vnni: the engine's "
                    "choice; mlas: onnxruntime's MatMulNBits)")
    ap.add_argument("--no-mid", action="store_true", help="skip the mid-size table")
    args = ap.parse_args()
    # every argument checked before anything is built, written or run
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        ap.error(f"--formats takes a comma-separated list of {', '.join(FORMATS)}; got "
                 f"{args.formats!r}")
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        ap.error(f"--threads takes comma-separated thread counts of 1 or more; got "
                 f"{args.threads!r}")
    for name in ("repeats", "tokens", "prefill"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    int4_kernels = [k.strip() for k in args.int4_kernels.split(",") if k.strip()]
    if not int4_kernels or set(int4_kernels) - {"vnni", "mlas"} \
            or len(set(int4_kernels)) != len(int4_kernels):
        ap.error(f"--int4-kernels takes a comma-separated list of vnni, mlas, each once; got "
                 f"{args.int4_kernels!r}")
    if int4_kernels != ["vnni"] and not (args.real and "int4" in formats):
        ap.error("--int4-kernels applies to the real-size int4 rows: add --real, with int4 "
                 "in --formats")
    if args.depth < 0:
        ap.error(f"--depth must be 0 or more tokens, not {args.depth}")
    if max(args.depth, 32) + args.tokens > GGUF_CONTEXT or args.prefill > GGUF_CONTEXT:
        ap.error(f"--depth plus --tokens, and --prefill, must fit the GGUF files' context of "
                 f"{GGUF_CONTEXT} tokens")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = find_llama_bench(args.llama_bench, work)
    if not args.no_mid:
        mid(exe, work, formats, threads, args.repeats, args.tokens, args.prefill, args.depth)
    if args.real:
        real(exe, work, formats, threads, args.repeats, args.prefill, int4_kernels)


if __name__ == "__main__":
    main()
