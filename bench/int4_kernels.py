"""cpu_int4's AVX512-VNNI kernel against onnxruntime's MatMulNBits, same weights, one process.

    python bench/int4_kernels.py [--threads 2] [--rounds 7] [--rows 1,64]

Not run by CI. Real-size Grok-2 int4 weights in blocks of 128 with zero points (an expert's
gate/up 8192 -> 16384 and down 16384 -> 8192, three random weights each, ~70 MB apiece: every
call streams its weight from RAM), each built for both kernels from the same MatMulNBits
operands (app/engine/cpu_int4.py and cpu_kernels' session, accuracy level 4). The kernels
take turns, `--rounds` rounds of one call per weight; per shape and row count (1: decode,
64: a prefill chunk) it prints the median and the best round as GB/s of weight bytes (and
rows/s), and the largest difference between the two outputs relative to their largest value.
Only the speed is measured: the weights are random bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `app` from this checkout

SHAPES = ((16384, 8192), (8192, 16384))  # (N, K): an expert's gate/up, then its down


def weights(n: int, k: int, count: int, seed: int) -> list[tuple]:
    """`count` pairs (cpu_int4.PackedWeight, MatMulNBits session) of random int4 weights."""
    from app.engine.cpu_int4 import PackedWeight
    from app.engine.cpu_kernels import _nbits_node, _session

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        blocks = k // 128
        ops = (4, 128, rng.integers(0, 256, (n, blocks, 64), dtype=np.uint8),
               ((rng.random(n * blocks) + 0.5) * 0.01).astype(np.float32),
               rng.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8))
        inits: list = []
        session = _session([_nbits_node(ops, k, n, "A", "Y", "w", inits)], inits, k, n)
        out.append((PackedWeight(k, n, ops), session))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads of both kernels")
    ap.add_argument("--rounds", type=int, default=7, help="rounds (one call per weight each)")
    ap.add_argument("--rows", default="1,64", help="comma-separated activation row counts")
    args = ap.parse_args()
    try:
        rows = [int(r) for r in args.rows.split(",") if r.strip()]
    except ValueError:
        rows = []
    if not rows or min(rows) < 1:
        ap.error(f"--rows takes comma-separated row counts of 1 or more; got {args.rows!r}")
    if args.threads < 1 or args.rounds < 1:
        ap.error("--threads and --rounds must be at least 1")
    try:
        from app.engine import cpu_int4, cpu_kernels
    except ImportError as exc:
        sys.exit(f"cannot import the engine ({exc}): pip install -e . first")
    if not cpu_kernels.available():
        sys.exit("onnxruntime and onnx are needed: pip install onnxruntime onnx")
    if not cpu_int4.available():
        sys.exit("cpu_int4 does not run here: it needs numba and an AVX512-VNNI CPU "
                 f"(and {cpu_int4.ENV} unset)")
    torch.set_num_threads(args.threads)  # both kernels take their thread count from torch's
    cpu_int4.warm_up()
    print(f"int4 (blocks of 128, zero points), {args.threads} thread(s), {args.rounds} rounds; "
          "median / best GB/s of weight bytes:")
    for n, k in SHAPES:
        pairs = weights(n, k, 3, seed=n)
        nbytes = sum(w.codes.nbytes + w.scales.nbytes + w.zeros.nbytes // 2 for w, _ in pairs)
        for m in rows:
            x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
            ours, theirs = pairs[0][0](x), pairs[0][1].run(None, {"A": x})[0]  # type: ignore[attr-defined]
            diff = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            times: dict[str, list[float]] = {"cpu_int4": [], "MatMulNBits": []}
            for _ in range(args.rounds):
                start = time.perf_counter()
                for w, _ in pairs:
                    w(x)
                times["cpu_int4"].append(time.perf_counter() - start)
                start = time.perf_counter()
                for _, s in pairs:
                    s.run(None, {"A": x})  # type: ignore[attr-defined]
                times["MatMulNBits"].append(time.perf_counter() - start)
            cells = []
            for name, ts in times.items():
                med, best = statistics.median(ts), min(ts)
                cells.append(f"{name} {nbytes / med / 1e9:5.1f} / {nbytes / best / 1e9:5.1f} "
                             f"({3 * m / med:7.0f} rows/s)")
            print(f"  {n:5d} x {k:5d}, {m:3d} row(s): " + "   ".join(cells)
                  + f"   max diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
