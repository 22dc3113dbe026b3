"""Loading Grok-2 according to a placement plan, from a prepared folder (memory-mapped) or
from the official folder (quantized on the fly). What Engine.load calls when a quantization,
a prepared folder or memory budgets are involved.

The model is built on the meta device, its Linears replaced by empty QuantLinears where the
plan quantizes, and then filled module by module straight onto the module's tier device: a
CPU-tier tensor of a prepared folder is a view of the memory-mapped file (no copy), a GPU-tier
tensor is copied once. CUDA out of memory while loading retries with a smaller GPU share.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from app.engine.config import Grok2Config, load_config
from app.engine.model import Grok2
from app.engine.offload import PREFILL_STREAM_THRESHOLD, install, weight_leaves
from app.engine.plan import GB, Plan, make_plan
from app.engine.prepare import convert_tensor, is_prepared, mmap_tensors, unit_of, verify
from app.engine.prepared_check import again_as
from app.engine.quantize import (
    QuantLinear,
    build_cpu_kernels,
    exact_fallbacks,
    quantize_model,
    set_module,
)
from app.engine.weights import _Reader, build_meta_model, check_index, index_folder, read_tensor
from app.errors import UserError

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
Budgets = tuple[int, int]  # (GPU bytes, CPU bytes)
OOM_RETRIES = 3
OOM_SHRINK = 0.85


def detect_budgets() -> Budgets:
    """Free GPU memory (0 without CUDA) and total physical RAM."""
    gpu = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
    try:
        cpu = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        try:
            import psutil

            cpu = psutil.virtual_memory().total
        except ImportError as exc:
            raise UserError("cannot tell how much RAM this machine has; give --cpu-mem") from exc
    return gpu, cpu


def load_engine_model(path: str | Path, plan_or_budgets: Plan | Budgets | None = None,
                      progress: ProgressFn | None = None, *, quant: str | None = None,
                      dtype: torch.dtype | None = None, context: int = 8192,
                      gpu: str | torch.device = "cuda", cpu: str | torch.device = "cpu",
                      threshold: int = PREFILL_STREAM_THRESHOLD) -> Grok2:
    """A placed, hooked Grok2 ready for Engine (call model.setup_cache afterwards)."""
    folder = Path(path)
    cfg = load_config(folder)
    manifest = verify(folder) if is_prepared(folder) else None
    if manifest and quant not in (None, manifest["quant"]):
        raise UserError(f"{folder}: prepared as {manifest['quant']}, not {quant}; "
                        f"{again_as(manifest, quant)}")
    quant = manifest["quant"] if manifest else (quant or "bf16")
    group = manifest["group"] if manifest else 128
    gpu = torch.device(gpu)
    if isinstance(plan_or_budgets, Plan):
        plan = plan_or_budgets
    else:
        budgets = plan_or_budgets or detect_budgets()
        if gpu.type == "cuda" and not torch.cuda.is_available():
            budgets = (0, budgets[1])
        plan = make_plan(cfg, quant, budgets[0], budgets[1], context, group)
    for attempt in range(OOM_RETRIES + 1):
        try:
            return _load(folder, cfg, plan, manifest is not None, dtype, gpu,
                         torch.device(cpu), threshold, progress)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            smaller = int(plan.gpu_budget * OOM_SHRINK)
            if attempt == OOM_RETRIES:
                break
            plan = make_plan(cfg, quant, smaller, plan.cpu_budget, context, group)
    raise UserError(f"CUDA ran out of memory loading {folder} even with {plan.gpu_budget / GB:.1f}"
                    " GB planned for the GPU; close other GPU programs or lower the GPU "
                    "memory setting")


def _load(folder: Path, cfg: Grok2Config, plan: Plan, prepared: bool,
          dtype: torch.dtype | None, gpu: torch.device, cpu: torch.device, threshold: int,
          progress: ProgressFn | None) -> Grok2:
    dtype = dtype or (torch.float32 if plan.quant == "float32" else torch.bfloat16)
    model = build_meta_model(cfg)
    source = _Prepared(folder) if prepared else _Official(folder, model, plan)
    quantize_model(model, plan.quant, plan.group)
    devices = {"gpu": gpu if plan.has_gpu else cpu, "cpu": cpu}
    leaves = weight_leaves(model)
    total = sum(_meta_bytes(m) for _, m in leaves)
    done = 0
    for name, module in leaves:
        device = devices[plan.tier_of(name)]
        tensors = source.tensors(name, module)
        if isinstance(module, QuantLinear):
            new = QuantLinear(module.in_features, module.out_features, module.fmt,
                              tensors["qweight"], tensors["scales"])
            set_module(model, name, new.placed(device))
        else:
            for local, t in tensors.items():
                setattr(module, local, nn.Parameter(t.to(device, dtype), requires_grad=False))
        done += _meta_bytes(module)
        if progress:
            progress("loading weights", done, total)
    build_cpu_kernels(model, progress)  # repack for onnxruntime now, not on the first tokens
    if exact_fallbacks(model):
        log.warning("%s: int4 weights prepared by an older version run on the slower PyTorch "
                    "kernel (exact, not approximated); run prepare again for the faster one",
                    folder)
    return install(model.eval(), plan, devices["gpu"], cpu, threshold)


def _meta_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


class _Prepared:
    """Tensors of a prepared folder, each file memory-mapped on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, dict[str, torch.Tensor]] = {}

    def tensors(self, module_name: str, module: nn.Module) -> dict[str, torch.Tensor]:
        unit = unit_of(module_name + ".x")
        if unit not in self.files:
            self.files[unit] = mmap_tensors(self.folder / f"{unit}.safetensors")
        stored = self.files[unit]
        return {local: stored[f"{module_name}.{local}"] for local, _ in _slots(module)}


class _Official:
    """Tensors of the official folder, merged from TP shards and quantized as the plan says."""

    def __init__(self, folder: Path, meta_model: Grok2, plan: Plan) -> None:
        self.index, self.reader, self.plan = index_folder(folder), _Reader(), plan
        check_index(self.index, meta_model)

    def tensors(self, module_name: str, module: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for local in [n for n, _ in module.named_parameters(recurse=False)] or ["weight"]:
            name = f"{module_name}.{local}"
            src = read_tensor(self.index, self.reader, name)
            if isinstance(module, QuantLinear):
                converted = convert_tensor(name, src, module.fmt)
            else:
                converted = {name: src}
            out.update({k.removeprefix(module_name + "."): v for k, v in converted.items()})
        return out


def _slots(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
