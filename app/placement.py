"""The placement preview the Settings dialog shows, and the budgets the app loads with.

Torch-free and Qt-free: it reads the chosen folder's config.json (or takes the published
Grok-2 config) and asks `app.engine.plan` (pure arithmetic, no torch) where every part would
live under the user's GPU/RAM budgets, quantization and context, and how fast decoding can be
at most. The GUI calls this instead of importing the engine itself.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from app import paths
from app.engine.config import CONFIG_NAME, Grok2Config, load_config
from app.engine.plan import GB, Bandwidths, PlanError, describe, make_plan, model_bytes
from app.errors import UserError
from app.settings import Settings

BENCH_CACHE = "bench-cache.json"  # app.engine.bench.CACHE_NAME (that module imports torch)
AUTO_QUANT = "bf16"  # what "auto" loads when the budgets are only known at load time
AUTO_ORDER = ("bf16", "int8", "int4")  # "auto" takes the first of these that fits


@dataclass(frozen=True)
class Preview:
    """`fits` False: `headline` is the planner's explanation of the shortfall."""

    fits: bool
    headline: str
    detail: str = ""  # the plan as `grok-desktop plan` prints it


def machine_ram_bytes() -> int:
    """Total physical RAM, or 0 when the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def read_config(folder: str) -> tuple[Grok2Config, str]:
    """The folder's config (and where it came from); the published Grok-2 config when no
    folder is chosen or it has no config.json yet. A config.json that is there but broken
    (incomplete, wrong types) raises ModelFileError: never a silent fallback to Grok-2's."""
    path = Path(folder).expanduser() / CONFIG_NAME if folder else None
    if path is not None and path.is_file():
        return load_config(path.parent), str(path)
    return Grok2Config(), "the published Grok-2 config"


def bandwidths() -> Bandwidths:
    """Bandwidths measured by `grok-desktop bench` on this machine if it ran (the cache has a
    single machine entry), else the planner's assumed workstation figures."""
    try:
        data = json.loads((paths.cache_dir() / BENCH_CACHE).read_text(encoding="utf-8"))
        (entry,) = data.values()
        bw = entry["bandwidths"]
        return Bandwidths(bw["gpu"], bw["cpu"], bw["pcie"], tuple(bw["measured"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return Bandwidths()


def budget_bytes(settings: Settings) -> tuple[int | None, int | None]:
    """(GPU, RAM) budgets in bytes from the settings; None where the user left "all of it"
    (the engine measures free GPU memory and total RAM at load time)."""
    gpu = 0 if settings.device == "cpu" else (int(settings.gpu_memory_gb * GB) or None)
    cpu = int(settings.cpu_memory_gb * GB) or None
    return gpu, cpu


def auto_quantization(cfg: Grok2Config, gpu: int, cpu: int, context: int) -> str | None:
    """The quantization "auto" means for these budgets (bytes): the first of bf16, int8, int4
    whose placement fits, or None when none does."""
    for quant in AUTO_ORDER:
        try:
            make_plan(cfg, quant, gpu, cpu, context)
        except UserError:
            continue
        return quant
    return None


def plain_words(text: str) -> str:
    """The planner's advice without command-line flags, for the Settings dialog: "--quant int4"
    becomes "quantization int4", "--context 4096" becomes "context 4096 tokens"."""
    text = re.sub(r"--quant (\w+)", r"quantization \1", text)
    return re.sub(r"--context (\d+)", r"context \1 tokens", text)


def preview(settings: Settings) -> Preview:
    """Where Grok-2 would live under these settings and the decode bound, or why it does not
    fit. With quantization "auto", the first of bf16, int8, int4 that fits. Only arithmetic:
    fast enough to run on every spin-box change."""
    try:
        cfg, source = read_config(settings.model_folder)
    except UserError as exc:
        return Preview(False, str(exc))
    auto = settings.quantization == "auto"
    quant = AUTO_QUANT if auto else settings.quantization
    gpu, cpu = budget_bytes(settings)
    context = min(settings.context_tokens, cfg.max_position_embeddings)
    if gpu is None:
        weights = f"{model_bytes(cfg, quant) / GB:,.1f} GB of weights at {quant}"
        chosen = (" \"Auto\" chooses bf16, int8 or int4 at load time, whichever fits."
                  if auto else "")
        return Preview(True, f"{weights} ({source}). The GPU budget is \"all of it\": the "
                             "placement is decided at load time from the free GPU memory; "
                             "enter a GPU budget (or choose the CPU device) to preview it "
                             f"here.{chosen}")
    cpu = cpu or machine_ram_bytes()
    if auto:
        quant = auto_quantization(cfg, gpu, cpu, context) or AUTO_ORDER[-1]
    weights = f"{model_bytes(cfg, quant) / GB:,.1f} GB of weights at {quant}"
    if auto:
        weights += " (chosen by auto)"
    try:
        plan = make_plan(cfg, quant, gpu, cpu, context)
    except PlanError as exc:
        lead = "Does not fit, even at int4" if auto else "Does not fit"
        return Preview(False, plain_words(f"{lead}: {exc}"))
    except UserError as exc:  # e.g. a config the planner cannot place
        return Preview(False, plain_words(str(exc)))
    bw = bandwidths()
    where = (f"GPU {plan.gpu_total / GB:,.1f} of {gpu / GB:,.0f} GB, "
             if plan.has_gpu else "CPU only, ")
    headline = (f"Fits: {where}RAM {plan.cpu_total / GB:,.1f} of {cpu / GB:,.0f} GB; decoding "
                f"at most {plan.decode_bound(bw):,.1f} tokens/s ({weights}, {source}).")
    return Preview(True, headline, describe(plan, bw))
