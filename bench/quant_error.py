"""Relative error of int8 (per channel) and int4 (g128) against bf16 on one real-size Grok-2
expert (w1, w3: 16384 x 8192; w2: 8192 x 16384), weights with realistic statistics: normal
rows with a spread of per-row scales, plus a few outlier input channels.

    python bench/quant_error.py [--tokens 8] [--seed 0]

Prints the weight error per matrix and the error of the expert's output, computed with the
same kernels the engine runs (bf16 activations), against the bf16 expert computed in float32.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from app.engine.plan import Format
from app.engine.quantize import QuantLinear

D, I = 8192, 16384


def realistic(out_f: int, in_f: int, gen: torch.Generator, outlier: float) -> torch.Tensor:
    w = torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)
    w *= torch.empty(out_f, 1).log_normal_(0, 0.3, generator=gen)  # per-row scale spread
    outliers = torch.randperm(in_f, generator=gen)[: in_f // 200]  # 0.5% of input channels
    w[:, outliers] *= outlier
    return w.to(torch.bfloat16)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def expert(x, w1, w2, w3):
    return w2(F.gelu(w1(x)) * w3(x))


def main() -> None:
    ap = argparse.ArgumentParser(description="Relative error of int8 and int4 (g128) against "
                                 "bf16 on one real-size Grok-2 expert.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8, help="activation rows")
    ap.add_argument("--seed", type=int, default=0, help="random weights and activations")
    args = ap.parse_args()
    for outlier in (1.0, 3.0, 8.0):
        measure(args.tokens, args.seed, outlier)


def measure(tokens: int, seed: int, outlier: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    weights = {"w1": realistic(I, D, gen, outlier), "w3": realistic(I, D, gen, outlier),
               "w2": realistic(D, I, gen, outlier)}
    x = torch.randn(tokens, D, generator=gen)
    ref = expert(x, *(lambda t, n=n: F.linear(t, weights[n].float()) for n in ("w1", "w2", "w3")))
    print(f"one expert, {tokens} tokens, 0.5% input channels x{outlier:g}; vs bf16 in float32")
    for kind, group in (("int8", 0), ("int4", 128)):
        mods = {n: QuantLinear.from_weight(w, Format(kind, group)) for n, w in weights.items()}
        errs = {n: rel(m.dequantized(), weights[n]) for n, m in mods.items()}
        out = expert(x, mods["w1"], mods["w2"], mods["w3"])
        print(f"{kind:>5}: weight error " + ", ".join(f"{n} {e:.4f}" for n, e in errs.items())
              + f"; expert output error {rel(out, ref):.4f}")
        del mods
    bf = expert(x.bfloat16(), *(lambda t, n=n: F.linear(t, weights[n]) for n in ("w1", "w2", "w3")))
    print(f" bf16 (bf16 activations, the floor): expert output error {rel(bf, ref):.4f}")


if __name__ == "__main__":
    main()
