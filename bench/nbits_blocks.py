"""Which int4 block size onnxruntime's MatMulNBits streams fastest at one row (decode).

On real-size Grok-2 expert weights read cold.

    python bench/nbits_blocks.py [--threads 2] [--blocks 32,64,128] [--rounds 5]

Not run by CI. Each block size gets three sessions, each with its own random 8192 -> 16384
int4 weight (~70-86 MB with scales and zero points: well past the L3 cache, so every call
streams its weight from RAM), built by the engine's own cpu_kernels (accuracy level 4: int8
activations; a sleeping pool of --threads threads). The block sizes take turns, `--rounds`
rounds of 12 calls each. Per block size it prints the bytes of one weight, the median and
the best of the rounds' median call times, and the read rate at that best (bytes / best).
Only the speed is measured: the weights are random bytes. Block sizes above 128 run here, but
the prepared format's groups stop at 128 (plan.INT4_GROUPS: what PyTorch's int4 kernels, the
GPU path and the fallback, accept).
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

K, N = 8192, 16384  # a real-size expert's gate/up projection: hidden -> moe_intermediate


def session(block: int, seed: int) -> tuple[object, int]:
    """A MatMulNBits session (1, K) -> (1, N) with random int4 codes, fp32 scales and packed
    zero points at `block` weights per block, built by the engine's own cpu_kernels (node,
    accuracy level, sleeping pool of torch.get_num_threads() threads); returns (session,
    bytes of its weight)."""
    from app.engine.cpu_kernels import _nbits_node, _session

    rng = np.random.default_rng(seed)
    blocks = K // block
    codes = rng.integers(0, 256, (N, blocks, block // 2), dtype=np.uint8)
    scales = (rng.random(N * blocks, dtype=np.float32) * 0.01).astype(np.float32)
    zeros = np.full(N * ((blocks + 1) // 2), 0x88, np.uint8)  # zero point 8 in both nibbles
    inits: list = []
    node = _nbits_node((4, block, codes, scales, zeros), K, N, "A", "Y", "w", inits)
    return _session([node], inits, K, N), codes.nbytes + scales.nbytes + zeros.nbytes


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    ap.add_argument("--blocks", default="32,64,128", help="comma-separated block sizes")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of 12 calls per block size")
    args = ap.parse_args()
    try:
        blocks = [int(b) for b in args.blocks.split(",") if b]
    except ValueError:
        ap.error(f"--blocks takes comma-separated whole numbers, not {args.blocks!r}")
    bad = [b for b in blocks if b < 16 or b & (b - 1) or K % b]
    if bad or not blocks:
        ap.error(f"block sizes must be powers of two from 16 dividing {K}; got {args.blocks!r}")
    if args.threads < 1 or args.rounds < 1:
        ap.error("--threads and --rounds must be at least 1")
    try:
        torch.set_num_threads(args.threads)  # the sessions' pools take torch's thread count
        sessions = {b: [session(b, seed) for seed in range(3)] for b in blocks}
    except ImportError:
        sys.exit("onnxruntime and onnx are needed: pip install onnxruntime onnx")
    x = np.random.default_rng(0).standard_normal((1, K)).astype(np.float32)
    medians: dict[int, list[float]] = {b: [] for b in blocks}
    for _ in range(args.rounds):
        for b in blocks:  # the block sizes take turns: all see the same machine
            times = []
            for i in range(12):
                sess, _ = sessions[b][i % 3]
                start = time.perf_counter()
                sess.run(None, {"A": x})  # type: ignore[attr-defined]
                times.append(time.perf_counter() - start)
            medians[b].append(statistics.median(times))
    print(f"MatMulNBits int4, {K} -> {N}, one row, {_count(args.threads, 'thread')}, "
          f"{_count(args.rounds, 'round')} of 12 cold calls (median and best of the rounds' "
          "median call):")
    for b in blocks:
        nbytes = sessions[b][0][1]
        best = min(medians[b])
        median = statistics.median(medians[b])
        print(f"  block {b:4d}: {nbytes / 1e6:5.1f} MB, median {median * 1e3:5.2f} ms, best "
              f"{best * 1e3:5.2f} ms, {nbytes / best / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
