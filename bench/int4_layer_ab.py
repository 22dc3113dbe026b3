"""One real-size Grok-2 decoder layer at int4 with each CPU int4 kernel, decoding in turns.

    python bench/int4_layer_ab.py [--threads 2] [--rounds 12] [--steps 4]

Not run by CI. Builds the same real-size layer as `peer_llamacpp.py --real` (hidden 8192,
64/8 heads, shared MLP 32768, 8 experts x 16384, random int4 weights; about 2.3 GB each) twice:
once on the kernel the engine picks (app/engine/cpu_int4.py where it runs) and once with
GROK_DESKTOP_INT4_KERNEL=mlas (onnxruntime's MatMulNBits), then decodes one token at a time on
each in turns (`--rounds` rounds of `--steps` tokens, the order alternating), so both see the
same machine. Prints each one's median, 10th percentile (from 10 samples up) and minimum per
layer and token, after one round of warm-up. Separate runs of this VM drift 10-20% at two
threads (memory bandwidth shared with other machines); this resolves a few percent. Needs
~12 GB of RAM at the peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `app` from this checkout

KERNELS = ("vnni", "mlas")
NAMES = {"vnni": "vnni (cpu_int4 where it runs)", "mlas": "mlas (MatMulNBits)"}


def build(kernel: str, threads: int) -> tuple:
    """(layer, its KV cache, the backends its fused kernels report) for one int4 kernel."""
    import torch

    from app.engine import cpu_int4, quantize
    from app.engine.model import KVCache
    from bench.peer_llamacpp import real_layer

    if kernel == "mlas":
        os.environ[cpu_int4.ENV] = "mlas"
    else:
        os.environ.pop(cpu_int4.ENV, None)
    layer, cfg = real_layer("int4", threads)
    trios = [t for t in map(quantize._gated_trio, layer.modules()) if t is not None]
    backends = {getattr(quantize.gated_mlp_kernel(*t), "backend", "PyTorch") for t in trios}
    return layer, KVCache(cfg, 1, 4096, torch.bfloat16, "cpu"), backends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads of torch and the kernels")
    ap.add_argument("--rounds", type=int, default=12, help="rounds, each kernel in turn")
    ap.add_argument("--steps", type=int, default=4, help="decoded tokens per kernel and round")
    args = ap.parse_args()
    if min(args.threads, args.rounds, args.steps) < 1:
        ap.error("--threads, --rounds and --steps must be at least 1")
    if args.rounds * args.steps + 32 > 4096:
        ap.error("--rounds x --steps must stay under 4064 tokens (the KV cache's 4096)")
    try:
        import torch

        from app.engine import cpu_int4
        from app.engine.model import cpu_gemv, torch_threads
    except ImportError as exc:
        sys.exit(f"cannot import the engine ({exc}): pip install -e . first")
    layers = {}
    for kernel in KERNELS:
        layer, cache, backends = build(kernel, args.threads)
        layers[kernel] = (layer, cache)
        print(f"built the {kernel} layer: gated MLPs on {', '.join(sorted(backends))}",
              flush=True)
    os.environ.pop(cpu_int4.ENV, None)
    hidden = next(iter(layers.values()))[0].self_attn.cfg.hidden_size
    prompt = torch.randn(1, 32, hidden, dtype=torch.bfloat16)
    times: dict[str, list[float]] = {k: [] for k in KERNELS}
    with torch.inference_mode(), torch_threads(1):  # as Grok2.forward with CPU kernels
        for layer, cache in layers.values():
            layer(prompt, torch.arange(32), cache)
        x = prompt[:, :1]
        for rnd in range(args.rounds + 1):
            for kernel in KERNELS if rnd % 2 == 0 else KERNELS[::-1]:
                layer, cache = layers[kernel]
                for i in range(args.steps):
                    start = time.perf_counter()
                    with cpu_gemv(True):
                        layer(x, torch.tensor([32 + rnd * args.steps + i]), cache)
                    if rnd:  # round 0 warms up
                        times[kernel].append(time.perf_counter() - start)
    print(f"real-size int4 layer, decode, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.steps} tokens (ms per layer and token):")
    for kernel, ts in times.items():
        ts.sort()
        p10 = f", 10th percentile {ts[len(ts) // 10] * 1e3:.1f}" if len(ts) >= 10 else ""
        print(f"  {NAMES[kernel]}: median {statistics.median(ts) * 1e3:.1f}{p10}, "
              f"min {ts[0] * 1e3:.1f}")


if __name__ == "__main__":
    main()
