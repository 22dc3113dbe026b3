"""How much of a mid-size decode token is not matmul, on the layer-graph path.

(Where cpu_step's compiled decode runs, the engine decodes with it, not the graph: this
script turns it off to measure the graph; bench/step_share.py measures the step.)

    python bench/graph_share.py [--quant int4] [--threads 1] [--tokens 64] [--context 32]

Builds the mid-size bench model (`bench --synthetic` shapes, random weights) with its CPU
layers as one onnxruntime graph (app/engine/cpu_graph.py) twice, once with onnxruntime's
profiler on, and decodes `--tokens` tokens after a `--context`-token prompt on each, in four
alternating blocks (so both see the same load on a shared machine): the plain model times
each token and the graph's `run` inside it (the rest is host work: embedding, feeds, cache
writes), the profiled one gives the time its MatMulNBits kernels take per token. Prints per
token: the median time, the run and host parts, the MatMulNBits time, the non-matmul share
(token - MatMulNBits) / token, and the other node types that took most time. The profiler
slows every small node several fold, so its MatMulNBits time (a few large nodes, barely
slowed) is set against the unprofiled token; the other node times are only a ranking.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from app.engine.bench import MID_CONFIG, synthetic_model
from app.engine.config import Grok2Config
from app.engine.quantize import build_cpu_kernels


class _TimedSession:
    """An InferenceSession whose `run` calls are timed (seconds, in `times`)."""

    def __init__(self, session) -> None:
        self.session, self.times = session, []

    def run(self, *args):
        start = time.perf_counter()
        out = self.session.run(*args)
        self.times.append(time.perf_counter() - start)
        return out


@torch.inference_mode()
def decode(model, tokens: int, context: int) -> list[float]:
    """Seconds per decode step after a `context`-token prompt."""
    model.setup_cache(context + tokens + 1)
    prompt = torch.randint(0, 1000, (1, context), generator=torch.Generator().manual_seed(1))
    model(prompt, start_pos=0, last_only=True)
    token, steps = torch.tensor([[1]]), []
    for i in range(tokens):
        start = time.perf_counter()
        logits = model(token, start_pos=context + i, last_only=True)
        steps.append(time.perf_counter() - start)
        token = logits[:, -1].argmax(-1, keepdim=True)
    return steps


def build(quant: str, profile_dir: str | None):
    """The mid-size model with its layer graph; with `profile_dir`, the graph's session is
    built with onnxruntime's profiler on (cpu_kernels._session_for makes its options from
    onnxruntime.SessionOptions, swapped here for one that profiles)."""
    import onnxruntime as ort

    plain = ort.SessionOptions

    class Profiled(plain):
        def __init__(self) -> None:
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = str(Path(profile_dir or ".") / "ort")

    if profile_dir:
        ort.SessionOptions = Profiled
    try:
        model = synthetic_model(Grok2Config.from_dict(MID_CONFIG), quant)
        build_cpu_kernels(model)
    finally:
        ort.SessionOptions = plain
    graphs = model.graphs()
    if len(graphs) != 1 or not graphs[0].head:
        raise SystemExit("this model did not become one graph (onnxruntime missing?)")
    graphs[0].step = None  # decode on the graph too (not cpu_step: bench/step_share.py)
    return model, graphs[0]


def _decode_windows(events: list[dict], blocks: int) -> list[tuple[int, int]]:
    """(start, end) microseconds of the decode runs in a profile of `blocks` calls of
    decode(): each block is one prompt run, then its decode runs."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e["name"] == "model_run")
    per_block = len(runs) // blocks
    if len(runs) != blocks * per_block:
        raise SystemExit(f"the profile has {len(runs)} runs, not {blocks} blocks of prompt + "
                         "decode runs")
    return [w for i, w in enumerate(runs) if i % per_block != 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quant", choices=("int4", "int8"), default="int4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64, help="decode tokens, in 4 blocks")
    ap.add_argument("--context", type=int, default=32)
    args = ap.parse_args()
    for name, low in (("threads", 1), ("tokens", 4), ("context", 1)):
        if getattr(args, name) < low:
            ap.error(f"--{name} must be {low} or more")
    torch.set_num_threads(args.threads)
    blocks, per_block = 4, args.tokens // 4

    with TemporaryDirectory() as tmp:
        plain, graph = build(args.quant, None)
        profiled, profiled_graph = build(args.quant, tmp)
        timed = _TimedSession(graph.session)
        graph.session = timed
        decode(plain, 4, args.context)  # warm up
        steps: list[float] = []
        runs: list[float] = []
        # plain and profiled blocks alternate, so both see the same (shared, noisy) machine
        for _ in range(blocks):
            timed.times.clear()
            steps += decode(plain, per_block, args.context)
            runs += timed.times[-per_block:]
            time.sleep(0.2)  # the other model's pool threads stop spinning
            decode(profiled, per_block, args.context)
            time.sleep(0.2)
        events = json.loads(Path(profiled_graph.session.end_profiling()).read_text())
    windows = _decode_windows(events, blocks)
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(
                a <= e["ts"] <= b for a, b in windows):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e6 / len(windows)
    token = statistics.median(steps)
    host = statistics.median([s - r for s, r in zip(steps, runs, strict=True)])
    matmul = per_op.pop("MatMulNBits", 0.0)
    per_op.pop("If", None)  # contains its branch's nodes, counted on their own
    print(f"mid-size {args.quant}, {args.threads} thread(s), {len(steps)} decode tokens "
          f"after {args.context} ({blocks} blocks, alternating with the profiled model):")
    print(f"  token {token * 1e3:.2f} ms (median): graph run {statistics.median(runs) * 1e3:.2f}"
          f" ms, host {host * 1e3:.2f} ms")
    print(f"  MatMulNBits {matmul * 1e3:.2f} ms a token (profiled run): non-matmul share "
          f"{(token - matmul) / token:.1%}")
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:6]
    print("  other nodes (profiled, inflated): "
          + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in top))


if __name__ == "__main__":
    main()
