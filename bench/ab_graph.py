"""Two versions of the layer graph (app/engine/cpu_graph.py) decoding side by side in one process.

    git show HEAD~1:app/engine/cpu_graph.py > /tmp/before.py   # or any commit that changed it
    python bench/ab_graph.py /tmp/before.py app/engine/cpu_graph.py [--quant int4]
                             [--threads 1] [--context 64] [--blocks 12] [--block-tokens 16]

Not run by CI. Builds the mid-size model (`bench --synthetic` shapes, the same random weights)
twice, one with each file's graph, prefills both, then decodes in alternating blocks (A's
block, B's block, ...) so both see the same machine, and prints each one's median, 10th
percentile and minimum time per token and how many greedy tokens agreed. On this 2-vCPU VM
it resolves differences of ~2% where separate runs of `bench --synthetic` drift by 5-8%;
whichever model is loaded second tends to run a few percent faster on one thread, so run
both orders. Both files must define `build_graphs` and `release_freed_memory` as
cpu_graph.py does and write the KV cache through the model's KVCache (the current
interface).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `app` from this checkout


def load(path: Path, name: str):
    """The module in `path` (a copy of cpu_graph.py), imported under `name`; exits with one
    line when it cannot be imported or lacks what this script calls."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"ab_graph.py: cannot import {path} (a copy of cpu_graph.py?)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in someone's copy: name file and error
        raise SystemExit(f"ab_graph.py: {path} failed to import: {type(e).__name__}: {e}") \
            from None
    missing = [f for f in ("build_graphs", "release_freed_memory") if not hasattr(module, f)]
    if missing:
        raise SystemExit(f"ab_graph.py: {path} has no {' or '.join(missing)} (not a copy of "
                         "cpu_graph.py?)")
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("a", type=Path, help="first cpu_graph.py version")
    ap.add_argument("b", type=Path, help="second cpu_graph.py version")
    ap.add_argument("--quant", default="int4", choices=("int4", "int8"), help="weights")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    ap.add_argument("--context", type=int, default=64, help="cached tokens before decoding")
    ap.add_argument("--blocks", type=int, default=12, help="blocks per model")
    ap.add_argument("--block-tokens", type=int, default=16, help="decoded tokens per block")
    args = ap.parse_args()
    for path in (args.a, args.b):
        if not path.is_file():
            ap.error(f"{path}: not a file (give two copies of app/engine/cpu_graph.py)")
    for name in ("threads", "context", "blocks", "block_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    from torch import nn

    import app.engine.model as model_mod
    from app.engine import quantize
    from app.engine.bench import MID_CONFIG, synthetic_model
    from app.engine.config import Grok2Config

    model_mod.CpuGraph = nn.Module  # either file's graph class counts as a graph
    torch.set_num_threads(args.threads)
    cfg = Grok2Config.from_dict(MID_CONFIG)
    models = []
    for i, path in enumerate((args.a, args.b)):
        module = load(path, f"cpu_graph_{i}")
        model = synthetic_model(cfg, args.quant, seed=0)
        quantize.build_cpu_kernels(model, layer_graphs=False)
        model.cpu_graphs = nn.ModuleList(module.build_graphs(model, quantize.graph_operands))
        module.release_freed_memory()
        if not model.cpu_graphs:
            raise SystemExit(f"ab_graph.py: {path} built no graph for this model")
        models.append(model)
    steps: list[list[float]] = [[], []]
    tokens: list[list[int]] = [[], []]
    total = args.context + args.blocks * args.block_tokens + 1
    prompt = torch.randint(0, cfg.vocab_size, (1, args.context),
                           generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for model in models:
            model.setup_cache(total)
            model(prompt, start_pos=0, last_only=True)
        last = [torch.tensor([[1]]), torch.tensor([[1]])]
        pos = args.context
        for _ in range(args.blocks):
            for i, model in enumerate(models):
                for k in range(args.block_tokens):
                    start = time.perf_counter()
                    logits = model(last[i], start_pos=pos + k, last_only=True)
                    last[i] = logits[:, -1].argmax(-1, keepdim=True)  # reads the logits
                    steps[i].append(time.perf_counter() - start)
                    tokens[i].append(int(last[i]))
            pos += args.block_tokens
    print(f"mid-size {args.quant}, {args.threads} thread(s), {args.blocks} alternating blocks "
          f"of {args.block_tokens} tokens after {args.context}:")
    for path, times in zip((args.a, args.b), steps, strict=True):
        ts = sorted(times)
        print(f"  {path!s:40s} median {statistics.median(ts) * 1e3:6.2f} ms  "
              f"p10 {ts[len(ts) // 10] * 1e3:6.2f}  min {ts[0] * 1e3:6.2f}")
    same = sum(a == b for a, b in zip(*tokens, strict=True))
    print(f"  same greedy tokens: {same} / {len(tokens[0])} (random weights: one different "
          "rounding changes the rest)")


if __name__ == "__main__":
    main()
