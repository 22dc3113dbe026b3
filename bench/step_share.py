"""How much of a mid-size decode token is not matmul, on the compiled decode.

    python bench/step_share.py [--quant int4|int8|bf16] [--threads 1] [--tokens 64]
                               [--context 32] [--rounds 3]

Builds the mid-size bench model (`bench --synthetic` shapes, random weights; int4/int8: its
layers and head one graph whose decode is app/engine/cpu_step.py; bf16: its decode is
app/engine/cpu_bf16.py's, which counts the same cycles), then decodes `--tokens` tokens after
a `--context`-token prompt through the model's forward, as generation does, `--rounds`
times. The step counts CPU cycles (DecodeStep.clock): inside its matrix products (each
product's activation quantization and thread start included) and in the whole call; the
cycle counter's rate is calibrated against the wall clock. Prints per token the median wall
time, the step's and the products' shares of it, and the non-matmul share (token - products)
/ token: the issue's goal 3 (<= 10%), everything outside the products counted (norms, RoPE,
attention, router, GELU, and the Python around the call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from app.engine import cpu_step
from app.engine.bench import MID_CONFIG, synthetic_model
from app.engine.config import Grok2Config
from app.engine.quantize import build_cpu_kernels


def cycle_rate(counter) -> float:
    """Cycles per second of cpu_step's counter (rdtsc: constant rate), over 0.3 s."""
    c0, t0 = counter(), time.perf_counter()
    time.sleep(0.3)
    return (counter() - c0) / (time.perf_counter() - t0)


@torch.inference_mode()
def decode(model, step, tokens: int, context: int) -> tuple[list[float], int, int]:
    """Seconds per decode token after a `context`-token prompt, and the step's cycles
    (products, whole calls) over those tokens."""
    model.setup_cache(context + tokens + 1)
    prompt = torch.randint(0, 1000, (1, context), generator=torch.Generator().manual_seed(1))
    model(prompt, start_pos=0, last_only=True)
    token, times = torch.tensor([[1]]), []
    before = step.clock.copy()
    for i in range(tokens):
        start = time.perf_counter()
        logits = model(token, start_pos=context + i, last_only=True)
        times.append(time.perf_counter() - start)
        token = logits[:, -1].argmax(-1, keepdim=True)
    used = step.clock - before
    return times, int(used[0]), int(used[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quant", choices=("int4", "int8", "bf16"), default="int4",
                    help="weight format of the mid-size model")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (at most the cores)")
    ap.add_argument("--tokens", type=int, default=64, help="decode tokens per round")
    ap.add_argument("--context", type=int, default=32, help="prompt tokens before decoding")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --tokens tokens")
    args = ap.parse_args()
    for name, low in (("threads", 1), ("tokens", 1), ("context", 1), ("rounds", 1)):
        if getattr(args, name) < low:
            ap.error(f"--{name} must be {low} or more")
    cores = os.cpu_count() or 1
    if args.threads > cores:
        ap.error(f"--threads {args.threads} is more than this machine's {cores} cores")
    torch.set_num_threads(args.threads)
    if args.quant != "bf16" and not cpu_step.available():
        raise SystemExit("cpu_step does not run here (needs numba and an AVX512-VNNI CPU, "
                         "and GROK_DESKTOP_INT4_KERNEL not set to mlas)")
    model = synthetic_model(Grok2Config.from_dict(MID_CONFIG), args.quant)
    build_cpu_kernels(model)
    if args.quant == "bf16":
        step = model.cpu_decode
        if step is None:
            raise SystemExit("this model did not get a compiled bf16 decode (cpu_bf16.py: "
                             "needs numba; GROK_DESKTOP_BF16_DECODE not set to eager)")
    else:
        graphs = model.graphs()
        if len(graphs) != 1 or not graphs[0].head or graphs[0].step is None:
            raise SystemExit("this model did not get one graph with a compiled decode step")
        step = graphs[0].step
    rate = cycle_rate(cpu_step.glue().counter)
    decode(model, step, 4, args.context)  # warm up
    times: list[float] = []
    products = whole = 0
    for _ in range(args.rounds):
        t, p, w = decode(model, step, args.tokens, args.context)
        times += t
        products += p
        whole += w
    n = len(times)
    token = statistics.median(times)
    in_step = whole / rate / n  # mean seconds per token
    in_products = products / rate / n
    mean = sum(times) / n
    print(f"mid-size {args.quant}, {args.threads} thread(s), decode after {args.context} "
          f"tokens, {n} tokens in {args.rounds} rounds; cycle counter {rate / 1e9:.2f} GHz")
    print(f"token: median {token * 1e3:.2f} ms (min {min(times) * 1e3:.2f}, mean "
          f"{mean * 1e3:.2f})")
    print(f"in the step: {in_step * 1e3:.2f} ms ({in_step / mean:.1%} of the mean token); in "
          f"its matrix products: {in_products * 1e3:.2f} ms")
    print(f"non-matmul share (mean token - products) / mean token: "
          f"{(mean - in_products) / mean:.1%} (inside the step: "
          f"{(in_step - in_products) / in_step:.1%}; Python around it: "
          f"{(mean - in_step) * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
