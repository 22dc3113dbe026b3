"""Executing a placement plan (plan.py) on a built Grok2: a transform, model.py is untouched.

`place_model` moves every module to its tier's device and `install` swaps the `feed_forward`
module of each layer whose routed experts live on the CPU (model.ResidualMoE) for a
`HybridFeedForward` module. Both hold no parameters (the layer keeps `mlp` and
`block_sparse_moe` under the checkpoint's names, so the state dict is unchanged), and the
swap shows in `print(model)` with where each part runs:

- decode (fewer tokens than the threshold): the router runs on the GPU, the hidden state and
  the routing go to the CPU once, the GPU's shared MLP is launched (CUDA launches are
  asynchronous), the CPU computes the two routed experts where they live meanwhile, and the
  result comes back to be added: (dense + moe) / sqrt 2
  (docs/grok2.md#dense-mlp-and-the-combination).
- prefill (at least `threshold` tokens): `ExpertStreamer` copies the experts from pinned host
  memory to GPU buffers on a side stream, one layer (or one expert) ahead, double-buffered,
  and computes them on the GPU.

The tiers are device objects, so tests run the very same path with cpu for both tiers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from app.engine.model import DecoderLayer, Expert, GatedMLP, Grok2, ResidualMoE, RMSNorm, SparseMoE
from app.engine.plan import Plan
from app.engine.quantize import QuantLinear, set_module

PREFILL_STREAM_THRESHOLD = 256  # tokens; below it the CPU computes the experts (decode path)


def place_model(model: Grok2, plan: Plan, gpu: torch.device | str,
                cpu: torch.device | str = "cpu", threshold: int = PREFILL_STREAM_THRESHOLD) -> Grok2:
    """Move each module to the device of its tier and install the hybrid feed-forward."""
    devices = {"gpu": torch.device(gpu), "cpu": torch.device(cpu)}
    for name, module in weight_leaves(model):
        device = devices[plan.tier_of(name)]
        if isinstance(module, QuantLinear):
            set_module(model, name, module.placed(device))
        else:
            module.to(device)
    return install(model, plan, devices["gpu"], devices["cpu"], threshold)


def weight_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the leaves that hold tensors: Linear, QuantLinear, norms, embedding.
    Parameter-free modules (ResidualMoE, HybridFeedForward) have no tier of their own."""
    return [(name, m) for name, m in model.named_modules()
            if name and not list(m.children())
            and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))]


def install(model: Grok2, plan: Plan, gpu: torch.device, cpu: torch.device,
            threshold: int = PREFILL_STREAM_THRESHOLD) -> Grok2:
    """Hook a placed model: hidden states follow the layers, and each layer whose routed experts
    live on the CPU tier gets a `HybridFeedForward` in place of its `feed_forward` module."""
    streamer = None
    offloaded = [i for i, _ in enumerate(model.model.layers)
                 if plan.tier_of(f"model.layers.{i}.block_sparse_moe.experts") == "cpu"]
    if plan.has_gpu and plan.stream_slots and offloaded:
        streamer = ExpertStreamer(model, offloaded, plan.stream_slots, gpu, threshold)
    for i, layer in enumerate(model.model.layers):
        assert isinstance(layer, DecoderLayer)  # nn.ModuleList items are typed as Module
        layer.register_forward_pre_hook(_to_device_of(layer.pre_attn_norm))
        if i in offloaded and plan.has_gpu:
            plain = layer.feed_forward
            if not isinstance(plain, ResidualMoE):
                raise TypeError(f"layer {i} is already placed ({type(plain).__name__})")
            layer.feed_forward = HybridFeedForward(
                i, plain.combine_scale, cpu, streamer,
                placement={"router": _where(layer.block_sparse_moe.gate),
                           "shared_mlp": _where(layer.mlp),
                           "routed_experts": _where(layer.block_sparse_moe.experts)})
    model.model.norm.register_forward_pre_hook(_to_device_of(model.model.norm))
    model.offload_plan = plan
    return model


def _where(module: nn.Module) -> str:
    """'cuda:0 bf16', 'cpu int4 g128/g64': the devices and weight formats of a module's
    Linear layers, for HybridFeedForward's repr."""
    devices, formats = [], []
    for m in module.modules():
        if isinstance(m, QuantLinear):
            g = f" g{m.fmt.group}" if m.fmt.kind == "int4" else ""
            fmt, device = f"{m.fmt.kind}{g}", m.qweight.device
        elif isinstance(m, nn.Linear):
            fmt, device = str(m.weight.dtype).removeprefix("torch."), m.weight.device
        else:
            continue
        devices += [str(device)] if str(device) not in devices else []
        formats += [fmt] if fmt not in formats else []
    return f"{'/'.join(devices)} {'/'.join(formats)}"


def _to_device_of(module: RMSNorm) -> Callable:
    def hook(_module: nn.Module, args: tuple) -> tuple:
        device = module.weight.device
        return tuple(a.to(device) if isinstance(a, Tensor) and a.is_floating_point() else a
                     for a in args)

    return hook


def mix_experts(x: Tensor, weights: Tensor, ids: Tensor,
                run: Callable[[int, Tensor], Tensor]) -> Tensor:
    """sum_k weights[:, k] * expert_{ids[:, k]}(x), fp32, exactly as SparseMoE.forward sums."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in ids.unique().tolist():
        rows, slot = (ids == e).nonzero(as_tuple=True)
        y = run(e, x[rows]).float()  # (n_e, D)
        out.index_add_(0, rows, y * weights[rows, slot, None])
    return out


class HybridFeedForward(nn.Module):
    """The feed-forward of a layer whose routed experts live on the CPU tier: it replaces the
    layer's `ResidualMoE` module and computes the same (dense + moe) * combine_scale.

    Like ResidualMoE it holds no parameters (the layer passes its `mlp` and `block_sparse_moe`
    in), so the state dict keeps the checkpoint's names. `placement` (part -> "device format")
    is what `print(model)` shows; `streamer` is the GPU prefill path shared by all layers."""

    def __init__(self, index: int, combine_scale: float, cpu: torch.device,
                 streamer: ExpertStreamer | None, placement: dict[str, str]) -> None:
        super().__init__()
        self.index, self.combine_scale, self.cpu_device, self.streamer = (
            index, combine_scale, cpu, streamer)  # not `cpu`: that is nn.Module.cpu()
        self.placement = placement

    def extra_repr(self) -> str:
        parts = [f"{k}={v}" for k, v in self.placement.items()]
        s = self.streamer
        if s is not None and s.enabled:
            parts.append(f"prefill=streamed to {s.gpu} from {s.threshold} tokens "
                         f"({len(s.slots)} expert buffers)")
        else:
            parts.append("prefill=routed experts on the cpu")
        return ", ".join(parts)

    def forward(self, m: Tensor, mlp: GatedMLP, moe: SparseMoE) -> Tensor:
        """m (B, T, D) on the GPU tier -> (B, T, D) there, in m's dtype."""
        shape = m.shape
        x = m.reshape(-1, shape[-1])  # (N, D) on the GPU tier
        weights, ids = moe.route(x)  # router on the GPU
        streamer = self.streamer
        if streamer is not None and x.shape[0] >= streamer.threshold:
            try:
                routed = streamer.run(self.index, x, weights, ids)
                return self._combine(self._dense(mlp, m), routed.to(m.dtype), m)
            except torch.cuda.OutOfMemoryError:
                streamer.disable()  # the decode path below needs no GPU buffers
        cpu = self.cpu_device
        xc, wc, ic = x.to(cpu), weights.to(cpu), ids.to(cpu)  # one sync
        mlp_on_gpu = mlp.down_proj.weight.device == m.device
        dense = mlp(m) if mlp_on_gpu else None  # queued on the GPU, runs meanwhile
        routed = mix_experts(xc, wc, ic, lambda e, t: moe.experts[e](t)).to(m.dtype)
        if dense is None:
            dense = mlp(xc.view(shape))
        return self._combine(dense, routed, m)

    @staticmethod
    def _dense(mlp: GatedMLP, m: Tensor) -> Tensor:
        device = mlp.down_proj.weight.device
        return mlp(m.to(device)).to(m.device)

    def _combine(self, dense: Tensor, routed: Tensor, m: Tensor) -> Tensor:
        dense, routed = dense.to(m.device).float(), routed.to(m.device).float()
        return ((dense + routed.view(dense.shape)) * self.combine_scale).to(m.dtype)


class ExpertStreamer:
    """Prefill on the GPU with experts that live in host memory. Units are (layer, expert) in
    forward order; unit u is copied into buffer u % slots on a side stream while earlier
    units compute, and a buffer is refilled only after the compute that read it is done."""

    def __init__(self, model: Grok2, layers: list[int], slots: int, gpu: torch.device,
                 threshold: int) -> None:
        self.threshold, self.gpu, self.enabled = threshold, gpu, True
        self.layers = layers
        self.experts = [_experts_of(model, i) for i in layers]
        self.n_experts = len(self.experts[0])
        self.template = self.experts[0][0]
        assert isinstance(self.template, Expert)
        host = [dict(_tensors(e)) for e in self.experts[0]]
        self.slots = [{k: torch.empty_like(v, device=gpu) for k, v in host[0].items()}
                      for _ in range(min(slots, len(layers) * self.n_experts))]
        cuda = gpu.type == "cuda"
        self.copy_stream = torch.cuda.Stream(gpu) if cuda else None
        self.ready: dict[int, torch.cuda.Event] = {}
        self.free: list[torch.cuda.Event | None] = [None] * len(self.slots)
        self.pinned = 0
        if cuda:
            for experts in self.experts:
                for expert in experts:
                    self.pinned += sum(_pin(t) for t in dict(_tensors(expert)).values())

    @property
    def n_units(self) -> int:
        return len(self.layers) * self.n_experts

    def disable(self) -> None:
        self.enabled, self.threshold = False, 1 << 62
        self.slots = []
        if self.gpu.type == "cuda":
            torch.cuda.empty_cache()

    def _host(self, unit: int) -> dict[str, Tensor]:
        layer, e = divmod(unit, self.n_experts)
        return dict(_tensors(self.experts[layer][e]))

    def _prefetch(self, unit: int) -> None:
        if unit >= self.n_units:
            return
        slot = unit % len(self.slots)
        if self.copy_stream is None:
            for k, v in self._host(unit).items():
                self.slots[slot][k].copy_(v)
            return
        with torch.cuda.stream(self.copy_stream):
            free = self.free[slot]
            if free is not None:
                self.copy_stream.wait_event(free)
            for k, v in self._host(unit).items():
                self.slots[slot][k].copy_(v, non_blocking=True)
            self.ready[unit] = torch.cuda.Event()
            self.ready[unit].record(self.copy_stream)

    def run(self, layer_index: int, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
        """The routed-experts output (N, D) fp32 of one offloaded layer, computed on the GPU."""
        pos = self.layers.index(layer_index)
        if pos == 0:  # a new forward: forget an interrupted one, fill every buffer
            self.ready.clear()
            for unit in range(len(self.slots)):
                self._prefetch(unit)
        used = set(ids.unique().tolist())
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e in range(self.n_experts):
            unit = pos * self.n_experts + e
            slot = unit % len(self.slots)
            if unit in self.ready:
                torch.cuda.current_stream(self.gpu).wait_event(self.ready.pop(unit))
            if e in used:
                rows, k = (ids == e).nonzero(as_tuple=True)
                y = functional_call(self.template, self.slots[slot], (x[rows],)).float()
                out.index_add_(0, rows, y * weights[rows, k, None])
            if self.copy_stream is not None:
                done = self.free[slot] = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.gpu))
            self._prefetch(unit + len(self.slots))
        return out


def _experts_of(model: Grok2, i: int) -> nn.ModuleList:
    """Layer i's routed experts."""
    layer = model.model.layers[i]
    assert isinstance(layer, DecoderLayer)  # nn.ModuleList items are typed as Module
    return layer.block_sparse_moe.experts


def _tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


_PINNED: set[int] = set()


def _pin(t: Tensor) -> bool:
    """Page-lock an existing host buffer in place (cudaHostRegister: ~12x faster than copying
    into a pinned allocation, docs/architecture.md#executing-the-plan). Unpinned copies still
    work, at pageable speed."""
    if t.is_pinned():
        return True
    storage = t.untyped_storage()
    if storage.data_ptr() in _PINNED:
        return True
    err = torch.cuda.cudart().cudaHostRegister(storage.data_ptr(), storage.nbytes(), 0)
    if int(err) == 0:
        _PINNED.add(storage.data_ptr())
    return int(err) == 0
