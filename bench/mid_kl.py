"""Next-token KL of the quantized mid-size model against its bf16 original, per CPU path.

    python bench/mid_kl.py [--tokens 96] [--prefill 32] [--seed 0] [--int4-groups 32,64,128]

The mid-size bench model (`bench --synthetic` shapes, random weights, the same seed for every
format, so int4/int8 are quantized from the very bf16 weights they are compared with) reads a
random prompt: `--prefill` tokens at once, then the rest one token at a time with the KV cache,
as in a chat. At every position: KL(bf16 || quantized) in nats of the next-token
distributions, and whether the greedy tokens agree. Quantized paths: "eager" (PyTorch between
onnxruntime's matmuls, bf16 rounding between ops) and "graph" (whole layers as onnxruntime
graphs, app/engine/cpu_graph.py, float32 between, for prefill and decode) and "step" (the
graphs' prefill, then each token through app/engine/cpu_step.py's compiled decode, which is
what the engine runs where it can). The budget a faster quantized path must
keep: its mean KL at most 10% above the eager path's (the last column says whether it does).
Two bf16 rows follow, against the same eager bf16 decode: the compiled bf16 decode
(app/engine/cpu_bf16.py) and one uncached forward (oneDNN's sums): bf16 rounding noise.
Random weights give nearly flat distributions, so at int4 the greedy tokens agree at only about
a third of the positions for either path; the KL is the figure to compare.
With --int4-groups, a second table: the int4 eager path's KL at each of those group sizes
(the prepared format uses 128; bench/nbits_blocks.py times them).
"""

from __future__ import annotations

import argparse
import copy

import torch

from app.engine.bench import MID_CONFIG, synthetic_model
from app.engine.config import Grok2Config
from app.engine.plan import INT4_GROUPS
from app.engine.quantize import build_cpu_kernels, quantize_model


@torch.inference_mode()
def logprobs(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """(T, V) float64 log-probabilities: prefill, then cached decode one token at a time."""
    model.setup_cache(ids.shape[1] + 1)
    parts = [model(ids[:, :prefill], start_pos=0)]
    parts += [model(ids[:, t:t + 1], start_pos=t) for t in range(prefill, ids.shape[1])]
    return torch.log_softmax(torch.cat(parts, dim=1)[0].double(), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--prefill", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--int4-groups", default="",
                    help="comma-separated int4 group sizes for a second table, of "
                         + ", ".join(map(str, sorted(INT4_GROUPS))))
    args = ap.parse_args()
    if not 1 <= args.prefill < args.tokens:
        ap.error("need 1 <= --prefill < --tokens")
    try:
        groups = [int(g) for g in args.int4_groups.split(",") if g.strip()]
    except ValueError:
        groups = [0]
    if any(g not in INT4_GROUPS for g in groups):
        ap.error(f"--int4-groups takes sizes of {', '.join(map(str, sorted(INT4_GROUPS)))}; "
                 f"got {args.int4_groups!r}")
    cfg = Grok2Config.from_dict(MID_CONFIG)
    ids = torch.randint(0, cfg.vocab_size, (1, args.tokens),
                        generator=torch.Generator().manual_seed(args.seed + 1))
    base = synthetic_model(cfg, "bf16", seed=args.seed)
    p = logprobs(base, ids, args.prefill)
    print(f"mid-size model, {args.tokens} positions ({args.prefill} prefilled), "
          f"against bf16:")
    print("| format | path | mean KL (nats) | max KL | greedy token agrees | within budget |")
    print("|---|---|---|---|---|---|")
    for quant in ("int4", "int8"):
        model = synthetic_model(cfg, quant, seed=args.seed)
        eager_kl = None
        for path in ("eager", "graph", "step"):
            build_cpu_kernels(model, layer_graphs=path != "eager")
            if path != "eager" and model.cpu_graphs is None:
                print(f"| {quant} | {path} | (no graph: onnxruntime missing) | | | |")
                continue
            steps = [g for g in model.graphs() if g.step is not None]
            if path == "graph":  # decode on the graph too, not on cpu_step
                for g in steps:
                    g.step = None
            elif path == "step" and not steps:
                print(f"| {quant} | step | (no compiled decode step here: cpu_step.py) "
                      "| | | |")
                continue
            q = logprobs(model, ids, args.prefill)
            kl = (p.exp() * (p - q)).sum(-1)
            agree = (p.argmax(-1) == q.argmax(-1)).double().mean().item()
            mean = kl.mean().item()
            if eager_kl is None:
                eager_kl, verdict = mean, "(the reference)"
            else:
                verdict = "yes" if mean <= 1.10 * eager_kl else "NO"
            print(f"| {quant} | {path} | {mean:.5f} | {kl.max().item():.5f} | {agree:.1%} | "
                  f"{verdict} |")
    # bf16 itself: its compiled decode (app/engine/cpu_bf16.py, what the engine runs) and,
    # for scale, the same weights in one uncached forward (oneDNN's sums in another order),
    # both against the eager cached decode above: bf16 rounding noise, no budget
    model = synthetic_model(cfg, "bf16", seed=args.seed)
    build_cpu_kernels(model)
    if model.cpu_decode is None:
        print("| bf16 | step | (no compiled bf16 decode here: cpu_bf16.py) | | | |")
    else:
        _noise_row("bf16", "step (cpu_bf16)", p, logprobs(model, ids, args.prefill))
    with torch.inference_mode():
        whole = torch.log_softmax(base(ids)[0].double(), dim=-1)
    _noise_row("bf16", "one uncached forward", p, whole)
    if groups:
        print("\nint4 by group size (eager path):")
        print("| group | mean KL (nats) | max KL |")
        print("|---|---|---|")
    for g in groups:
        model = quantize_model(copy.deepcopy(base), "int4", group=g)
        build_cpu_kernels(model, layer_graphs=False)
        kl = (p.exp() * (p - logprobs(model, ids, args.prefill))).sum(-1)
        print(f"| {g} | {kl.mean().item():.5f} | {kl.max().item():.5f} |")


def _noise_row(quant: str, path: str, p: torch.Tensor, q: torch.Tensor) -> None:
    kl = (p.exp() * (p - q)).sum(-1)
    agree = (p.argmax(-1) == q.argmax(-1)).double().mean().item()
    print(f"| {quant} | {path} | {kl.mean().item():.6f} | {kl.max().item():.6f} | {agree:.1%} "
          "| (rounding noise) |")


if __name__ == "__main__":
    main()
