"""`grok-desktop plan | prepare | bench`: fitting Grok-2 on this machine
(docs/architecture.md#offloading).

Imports nothing heavy at module level: `plan` on the real config needs no torch at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.errors import UserError

QUANT_CHOICES = ("int4", "int8", "bf16", "float32")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="print where each part of the model would live, and the "
                                    "decode speed bound")
    p.add_argument("--model", metavar="DIR",
                   help="folder with config.json (default: the published Grok-2 config)")
    _add_budget_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_plan)

    p = sub.add_parser("prepare", help="convert the official folder once into the fast, "
                                       "quantized runtime layout")
    p.add_argument("--model", metavar="DIR", required=True, help="the official Grok-2 folder")
    p.add_argument("--quant", choices=("int4", "int8", "bf16"), default="int4")
    p.add_argument("--out", metavar="DIR", help="output folder (default: DIR-QUANT beside it)")
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("bench", help="measure prefill and decode speed next to the bound")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="DIR", help="official or prepared folder")
    which.add_argument("--synthetic", action="store_true",
                       help="a random mid-size model with Grok-2's proportions (no files)")
    _add_budget_arguments(p)
    p.add_argument("--prompt-lengths", default="32,256", help="comma-separated token counts")
    p.add_argument("--decode-tokens", type=_positive, default=16)
    p.add_argument("--refresh", action="store_true", help="re-run the bandwidth probe")
    p.add_argument("--threads", type=_positive,
                   help="CPU threads for torch and onnxruntime (default: torch's)")
    p.add_argument("--no-real-expert", action="store_true",
                   help="skip --synthetic's real-size expert row")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_bench)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (argparse prints the message and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _add_budget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-mem", type=float, metavar="GB",
                   help="GPU memory to use (default: free memory of the GPU; 0: CPU only)")
    p.add_argument("--cpu-mem", type=float, metavar="GB", help="RAM (default: this machine's)")
    p.add_argument("--quant", choices=QUANT_CHOICES,
                   help="weights format (default: the prepared folder's, else int4)")
    p.add_argument("--context", type=int, default=8192, metavar="N",
                   help="context in tokens the placement plan reserves a KV cache for "
                        "(bench's prompts set their own)")


def _budgets(args: argparse.Namespace) -> tuple[int, int]:
    gpu = cpu = None
    if args.gpu_mem is None or args.cpu_mem is None:
        from app.engine.loader import detect_budgets

        gpu, cpu = detect_budgets()
    gpu = int(args.gpu_mem * 1e9) if args.gpu_mem is not None else gpu
    cpu = int(args.cpu_mem * 1e9) if args.cpu_mem is not None else cpu
    assert gpu is not None and cpu is not None  # given, else detected above
    if gpu < 0 or cpu <= 0:
        raise UserError("--gpu-mem must be >= 0 and --cpu-mem > 0 (in GB)")
    return gpu, cpu


def _config_and_quant(args: argparse.Namespace):
    from app.engine.config import Grok2Config, check_folder, load_config
    from app.engine.prepare import is_prepared, read_manifest
    from app.engine.prepared_check import again_as

    if args.model is None:
        return Grok2Config(), args.quant or "int4"
    check_folder(args.model)  # one wording for a missing folder everywhere (config.py)
    manifest = read_manifest(args.model) if is_prepared(args.model) else None
    stored = manifest["quant"] if manifest else None
    if manifest and stored and args.quant and args.quant != stored:
        raise UserError(f"{args.model}: prepared as {stored}; drop --quant, or "
                        f"{again_as(manifest, args.quant)}")
    return load_config(args.model), stored or args.quant or "int4"


def run_plan(args: argparse.Namespace) -> int:
    from app.engine.bench import probe_bandwidths
    from app.engine.plan import describe, make_plan, plan_dict

    cfg, quant = _config_and_quant(args)
    gpu, cpu = _budgets(args)
    plan = make_plan(cfg, quant, gpu, cpu, args.context)
    bw = probe_bandwidths()
    print(json.dumps(plan_dict(plan, bw)) if args.json else describe(plan, bw))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from app.engine.prepare import prepare

    src = Path(args.model)
    out = Path(args.out) if args.out else src.with_name(f"{src.name}-{args.quant}")
    prepare(src, out, args.quant, progress=_progress_bar("preparing"))
    sys.stderr.write("\n")
    print(f"prepared {out} ({args.quant}); load it with --model {out}")
    return 0


def _progress_bar(label: str):
    def show(_stage: str, done: int, total: int) -> None:
        if total and sys.stderr.isatty():
            width = 30
            filled = width * done // total
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{done / 1e9:.1f}/{total / 1e9:.1f} GB")
            sys.stderr.flush()

    return show


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from app.engine.bench import (
        MID_CONFIG,
        bench_model,
        bench_real_expert,
        format_result,
        probe_bandwidths,
        select_cpu_kernels,
        synthetic_model,
    )
    from app.engine.config import Grok2Config
    from app.engine.loader import load_engine_model
    from app.engine.offload import place_model
    from app.engine.plan import make_plan
    from app.engine.quantize import build_cpu_kernels

    try:
        lengths = tuple(int(n) for n in args.prompt_lengths.split(","))
    except ValueError as exc:
        raise UserError("--prompt-lengths takes comma-separated integers, e.g. 32,256") from exc
    if min(lengths) < 1:
        raise UserError("--prompt-lengths takes token counts of 1 or more, e.g. 32,256")
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = probe_bandwidths(refresh=args.refresh)
    select_cpu_kernels(refresh=args.refresh)
    gpu_budget, cpu_budget = _budgets(args)
    if not torch.cuda.is_available():
        gpu_budget = 0
    if args.synthetic:
        cfg, quant = Grok2Config.from_dict(MID_CONFIG), args.quant or "int4"
        plan = make_plan(cfg, quant, gpu_budget, cpu_budget, args.context)
        model = place_model(synthetic_model(cfg, quant), plan, "cuda" if gpu_budget else "cpu")
    else:
        cfg, quant = _config_and_quant(args)
        plan = make_plan(cfg, quant, gpu_budget, cpu_budget, args.context)
        model = load_engine_model(args.model, plan, _progress_bar("loading"))
    build_cpu_kernels(model)  # the loader does this too; the synthetic model needs it
    result = bench_model(model, plan, bw, lengths, args.decode_tokens)
    if args.synthetic and quant in ("int4", "int8") and not gpu_budget \
            and not args.no_real_expert:
        del model  # the real-size expert needs the memory more
        result["real_expert"] = bench_real_expert(quant, bw)
    print(json.dumps(result) if args.json else format_result(result))
    return 0
