"""The placement plan: where every Grok-2 weight lives and computes, decided from the config,
the quantization and the memory budgets before a byte of weights is loaded
(docs/architecture.md#the-placement-plan).

Pure arithmetic on `Grok2Config` (no torch import), so `grok-desktop plan` runs anywhere, for
the real 270 B config, without the weights. Units: bytes; GB in messages means 10**9 bytes.

Tiers: "gpu" (the fast device) holds the embedding lookup when room is left, attention, router
gates, norms, the output head, the KV cache and as many shared MLPs as fit; "cpu" holds the
routed experts (computed where they live) and the remaining shared MLPs. `offload.py` executes
a plan; `quantize.py` uses `weight_format` so the plan and the loaded model agree byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.config import Grok2Config
from app.errors import UserError

GB = 10**9
QUANTS = ("int4", "int8", "bf16", "float32")
INT4_GROUPS = (128, 64, 32)  # group sizes PyTorch's int4 kernels accept, largest first
GPU_RESERVE = int(1.2 * GB)  # CUDA context, allocator slack, cuBLAS workspace
CPU_RESERVE = 8 * GB  # the OS, the app, the page cache it needs to breathe
PREFILL_CHUNK = 2048  # tokens per prefill forward (generate.PREFILL_CHUNK)
QUERY_CHUNK = 128  # queries per attention block (model.QUERY_CHUNK)
KV_BYTES = 2  # the KV cache is bf16
HOP_LATENCY_S = 15e-6  # one small host<->device copy incl. synchronisation
DISK_SLACK = 1.02  # a prepared folder's safetensors headers and alignment, over model_bytes


NOT_WEIGHTS = ("KV cache", "workspace", "reserve", "prefill expert buffers")


class PlanError(UserError):
    """The model does not fit the budgets; the message says why and what would fit."""


@dataclass(frozen=True)
class Format:
    kind: str  # "int4" | "int8" | "bf16" | "float32"
    group: int = 0  # int4 group size

    def nbytes(self, out_features: int, in_features: int) -> int:
        n, k = out_features, in_features
        if self.kind == "int4":  # nibbles + (scale, zero) bf16 per group and row
            return n * k // 2 + (k // self.group) * n * 2 * 2
        if self.kind == "int8":  # int8 + one float32 scale per row
            return n * k + 4 * n
        return n * k * (4 if self.kind == "float32" else 2)


def int4_group(in_features: int, out_features: int, requested: int = 128) -> int:
    """Largest accepted group size <= requested dividing in_features; 0 if int4 cannot apply
    (the CPU kernel wants out_features % 16 == 0)."""
    if out_features % 16:
        return 0
    return next((g for g in INT4_GROUPS if g <= requested and in_features % g == 0), 0)


def weight_format(name: str, out_features: int, in_features: int, quant: str,
                  group: int = 128) -> Format:
    """The storage format of one Linear weight. Router gates stay in bf16 (they are computed in
    fp32, as in SGLang); the output head is int8 at most (it sets every logit)."""
    if quant not in QUANTS:
        raise UserError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant in ("bf16", "float32") or name.endswith("block_sparse_moe.gate"):
        return Format("float32" if quant == "float32" else "bf16")
    if quant == "int4" and not name.startswith("lm_head"):
        g = int4_group(in_features, out_features, group)
        if g:
            return Format("int4", g)
    return Format("int8")


@dataclass(frozen=True)
class Sizes:
    """Bytes of each part of the model at one quantization."""

    attention: int  # one layer: q, k, v, o
    small: int  # one layer: 4 norms + router gate
    shared_mlp: int  # one layer's dense MLP
    expert: int  # one routed expert
    embed: int
    head: int  # lm_head + final norm
    kv_per_token: int  # all layers


def sizes(cfg: Grok2Config, quant: str, group: int = 128) -> Sizes:
    d, h, kh, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    i, im, v = cfg.intermediate_size, cfg.moe_intermediate_size, cfg.vocab_size
    p = "model.layers.0."

    def fmt(name: str, n: int, k: int) -> int:
        return weight_format(name, n, k, quant, group).nbytes(n, k)

    norm = 4 if quant == "float32" else 2
    attention = (fmt(p + "self_attn.q_proj", h * dh, d) + 2 * fmt(p + "self_attn.k_proj", kh * dh, d)
                 + fmt(p + "self_attn.o_proj", d, h * dh))
    small = 4 * d * norm + fmt(p + "block_sparse_moe.gate", cfg.num_local_experts, d)
    shared = 2 * fmt(p + "mlp.gate_proj", i, d) + fmt(p + "mlp.down_proj", d, i)
    ex = p + "block_sparse_moe.experts.0."
    expert = 2 * fmt(ex + "w1", im, d) + fmt(ex + "w2", d, im)
    head = fmt("lm_head", v, d) + d * norm
    kv = 2 * cfg.num_hidden_layers * kh * dh * KV_BYTES
    return Sizes(attention, small, shared, expert, v * d * norm, head, kv)


def model_bytes(cfg: Grok2Config, quant: str, group: int = 128) -> int:
    s = sizes(cfg, quant, group)
    per_layer = s.attention + s.small + s.shared_mlp + cfg.num_local_experts * s.expert
    return cfg.num_hidden_layers * per_layer + s.embed + s.head


def workspace_bytes(cfg: Grok2Config, context: int, chunk: int = PREFILL_CHUNK) -> int:
    """Peak activations of one prefill chunk on the fast device: fp32 attention scores (and the
    softmax copy) for a block of queries over the whole context, plus the MLP intermediates."""
    t = min(chunk, context)
    scores = 3 * cfg.num_attention_heads * min(QUERY_CHUNK, t) * context * 4
    mlp = 3 * t * max(cfg.intermediate_size, cfg.moe_intermediate_size) * 4
    return scores + mlp + 8 * t * cfg.hidden_size * 4


@dataclass(frozen=True)
class Bandwidths:
    """Bytes per second. `measured` names the ones that came from this machine's probe."""

    gpu: float = 900 * GB  # a workstation card's HBM/GDDR read rate
    cpu: float = 60 * GB  # DRAM read rate seen by the expert kernel
    pcie: float = 25 * GB  # pinned host-to-device
    measured: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    cfg: Grok2Config
    quant: str
    group: int
    context: int
    gpu_budget: int
    cpu_budget: int
    gpu_mlp_layers: tuple[int, ...]  # layers whose shared MLP lives on the GPU
    embed_on_gpu: bool
    stream_slots: int  # expert-sized GPU buffers for prefill streaming (0: off)
    gpu_expert_layers: tuple[int, ...] = ()  # layers whose routed experts fit on the GPU too
    gpu_parts: dict[str, int] = field(default_factory=dict)  # bytes per item on the GPU
    cpu_parts: dict[str, int] = field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_budget > 0

    @property
    def gpu_total(self) -> int:
        return sum(self.gpu_parts.values())

    @property
    def cpu_total(self) -> int:
        return sum(self.cpu_parts.values())

    @property
    def weight_total(self) -> int:
        """Weight bytes over both tiers (equals model_bytes: nothing lost, nothing twice)."""
        parts = {**self.gpu_parts, **{"cpu " + k: v for k, v in self.cpu_parts.items()}}
        return sum(v for k, v in parts.items() if k.removeprefix("cpu ") not in NOT_WEIGHTS)

    @property
    def stream_layer_ahead(self) -> bool:
        """True when a whole layer's experts are double-buffered (else one expert ahead)."""
        return self.stream_slots >= 2 * self.cfg.num_local_experts

    def tier_of(self, name: str) -> str:
        """'gpu' or 'cpu' for a module or parameter name of the Grok2 tree."""
        if not self.has_gpu:
            return "cpu"
        if name.startswith("model.embed_tokens"):
            return "gpu" if self.embed_on_gpu else "cpu"
        if ".block_sparse_moe.experts" in name:
            return "gpu" if int(name.split(".")[2]) in self.gpu_expert_layers else "cpu"
        if ".mlp." in name or name.endswith(".mlp"):
            layer = int(name.split(".")[2])
            return "gpu" if layer in self.gpu_mlp_layers else "cpu"
        return "gpu"

    def bytes_per_token(self, kv_tokens: int = 1024) -> dict[str, int]:
        """Bytes one decoded token reads from each place, with `kv_tokens` of context."""
        cfg, s = self.cfg, sizes(self.cfg, self.quant, self.group)
        n_gpu_mlp, layers = len(self.gpu_mlp_layers), cfg.num_hidden_layers
        active = cfg.num_experts_per_tok * s.expert
        experts = layers * active
        gpu_experts = len(self.gpu_expert_layers) * active
        dense = layers * (s.attention + s.small) + s.head + kv_tokens * s.kv_per_token
        row = cfg.hidden_size * 2
        if not self.has_gpu:
            return {"gpu": 0, "cpu": dense + layers * s.shared_mlp + experts + row, "pcie": 0}
        hops = layers - len(self.gpu_expert_layers)  # layers that go to the CPU and back
        return {"gpu": dense + n_gpu_mlp * s.shared_mlp + gpu_experts
                + (row if self.embed_on_gpu else 0),
                "cpu": experts - gpu_experts + (layers - n_gpu_mlp) * s.shared_mlp,
                "pcie": 4 * hops * row + (0 if self.embed_on_gpu else row)}

    def decode_bound(self, bw: Bandwidths, kv_tokens: int = 1024) -> float:
        """Tokens/s no implementation can beat: the GPU's serial part, then the GPU's shared MLPs
        in parallel with the CPU's experts (Grok-2 adds them:
        docs/grok2.md#dense-mlp-and-the-combination), then the hops."""
        cfg, s = self.cfg, sizes(self.cfg, self.quant, self.group)
        b = self.bytes_per_token(kv_tokens)
        if not self.has_gpu:
            return bw.cpu / b["cpu"]
        gpu_mlp = len(self.gpu_mlp_layers) * s.shared_mlp
        hops = cfg.num_hidden_layers - len(self.gpu_expert_layers)
        seconds = ((b["gpu"] - gpu_mlp) / bw.gpu + max(gpu_mlp / bw.gpu, b["cpu"] / bw.cpu)
                   + b["pcie"] / bw.pcie + 2 * hops * HOP_LATENCY_S)
        return 1.0 / seconds


def make_plan(cfg: Grok2Config, quant: str, gpu_budget: int, cpu_budget: int,
              context: int = 8192, group: int = 128) -> Plan:
    """Place everything, or raise PlanError explaining what does not fit and what would."""
    plan = _try_plan(cfg, quant, gpu_budget, cpu_budget, context, group)
    if isinstance(plan, Plan):
        return plan
    raise PlanError(plan + " " + suggest(cfg, quant, gpu_budget, cpu_budget, context, group))


def _try_plan(cfg: Grok2Config, quant: str, gpu_budget: int, cpu_budget: int, context: int,
              group: int) -> Plan | str:
    s, layers = sizes(cfg, quant, group), cfg.num_hidden_layers
    experts = layers * cfg.num_local_experts * s.expert
    if gpu_budget <= 0:
        total = model_bytes(cfg, quant, group) + context * s.kv_per_token
        cpu = {"all weights": total - context * s.kv_per_token, "KV cache": context * s.kv_per_token,
               "workspace": workspace_bytes(cfg, context), "reserve": CPU_RESERVE}
        if sum(cpu.values()) > cpu_budget:
            return (f"CPU-only at {quant} needs {_gb(sum(cpu.values()))} of RAM, the budget is "
                    f"{_gb(cpu_budget)}.")
        return Plan(cfg, quant, group, context, 0, cpu_budget, (), False, 0, (), {}, cpu)
    gpu = {"attention": layers * s.attention, "norms and router gates": layers * s.small,
           "output head": s.head, "KV cache": context * s.kv_per_token,
           "workspace": workspace_bytes(cfg, context), "reserve": GPU_RESERVE}
    if sum(gpu.values()) > gpu_budget:
        return (f"The GPU needs {_gb(sum(gpu.values()))} just for attention, the output head and "
                f"a {context:,}-token KV cache at {quant}, the budget is {_gb(gpu_budget)}.")
    room = gpu_budget - sum(gpu.values())
    slots = 2 if room >= 2 * s.expert else 0  # prefill streaming, one expert ahead
    room -= slots * s.expert
    n_mlp = min(layers, room // s.shared_mlp)
    room -= n_mlp * s.shared_mlp
    if n_mlp == layers and room >= (2 * cfg.num_local_experts - slots) * s.expert:
        room -= (2 * cfg.num_local_experts - slots) * s.expert
        slots = 2 * cfg.num_local_experts  # a whole layer ahead, double-buffered
    embed_on_gpu = room >= s.embed
    room -= s.embed if embed_on_gpu else 0
    layer_experts = cfg.num_local_experts * s.expert
    n_exp = min(layers, room // layer_experts) if n_mlp == layers and embed_on_gpu else 0
    if n_exp:
        gpu[f"routed experts ({n_exp} of {layers} layers)"] = n_exp * layer_experts
    if n_mlp:
        gpu[f"shared MLPs ({n_mlp} of {layers})"] = n_mlp * s.shared_mlp
    if slots:
        gpu["prefill expert buffers"] = slots * s.expert
    if embed_on_gpu:
        gpu["embedding"] = s.embed
    cpu = {"routed experts": experts - n_exp * layer_experts, "reserve": CPU_RESERVE}
    if n_mlp < layers:
        cpu[f"shared MLPs ({layers - n_mlp} of {layers})"] = (layers - n_mlp) * s.shared_mlp
    if not embed_on_gpu:
        cpu["embedding"] = s.embed
    if sum(cpu.values()) > cpu_budget:
        return (f"With a {_gb(gpu_budget)} GPU, the CPU side at {quant} (routed experts"
                f"{'' if n_mlp == layers else ' and ' + str(layers - n_mlp) + ' shared MLPs'}) "
                f"needs {_gb(sum(cpu.values()))} of RAM including {_gb(CPU_RESERVE)} for the "
                f"system, the budget is {_gb(cpu_budget)}.")
    return Plan(cfg, quant, group, context, gpu_budget, cpu_budget, tuple(range(n_mlp)),
                embed_on_gpu, slots, tuple(range(n_exp)), gpu, cpu)


def suggest(cfg: Grok2Config, quant: str, gpu_budget: int, cpu_budget: int, context: int,
            group: int = 128) -> str:
    """Plain options that would fit: other quantizations, a shorter context, more memory."""
    options = []
    for q in ("int4", "int8", "bf16"):
        if q != quant and isinstance(_try_plan(cfg, q, gpu_budget, cpu_budget, context, group), Plan):
            options.append(f"--quant {q}")
    for ctx in (8192, 4096, 2048):
        if ctx < context and isinstance(_try_plan(cfg, quant, gpu_budget, cpu_budget, ctx, group),
                                        Plan):
            options.append(f"--context {ctx}")
            break
    need_cpu = _smallest(lambda c: _try_plan(cfg, quant, gpu_budget, c, context, group))
    if need_cpu:
        options.append(f"{_gb(need_cpu)} of RAM")
    if gpu_budget > 0:
        need_gpu = _smallest(lambda g: _try_plan(cfg, quant, g, cpu_budget, context, group))
        if need_gpu:
            options.append(f"a {_gb(need_gpu)} GPU")
    s = sizes(cfg, "int4", group)
    int4_experts = cfg.num_hidden_layers * cfg.num_local_experts * s.expert
    hint = f"(int4 routed experts alone need about {_gb(int4_experts)} of RAM.)"
    if not options:
        return f"Nothing fits these budgets. {hint}"
    return f"What would fit: {'; or '.join(options)}. {hint}"


def _smallest(attempt) -> int:
    """Smallest budget (GB steps, up to 4 TB) for which attempt(budget) returns a Plan."""
    for gb in range(1, 4097):
        if isinstance(attempt(gb * GB), Plan):
            return gb * GB
    return 0


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def describe(plan: Plan, bw: Bandwidths, kv_tokens: int = 1024) -> str:
    """The placement, the memory per tier, bytes per token and the decode bound, for people."""
    cfg, lines = plan.cfg, []
    lines.append(f"Grok-2 ({cfg.num_hidden_layers} layers, {cfg.num_local_experts} experts, "
                 f"hidden {cfg.hidden_size}) at {plan.quant}: {_gb(model_bytes(cfg, plan.quant, plan.group))}"
                 f" of weights; context {plan.context:,} tokens")
    width = max((len(name) for name in (*plan.gpu_parts, *plan.cpu_parts)), default=28)
    width = max(width, 28)  # one column for both tiers, as wide as the longest part name
    for tier, parts, budget in (("GPU", plan.gpu_parts, plan.gpu_budget),
                                ("CPU", plan.cpu_parts, plan.cpu_budget)):
        if not parts:
            lines.append(f"{tier}: not used")
            continue
        lines.append(f"{tier}: {_gb(sum(parts.values()))} of {_gb(budget)}")
        lines.extend(f"  {name:<{width}} {_gb(n):>10}" for name, n in parts.items())
    if plan.has_gpu:
        stream = ("off (no room)" if not plan.stream_slots else
                  "a layer ahead" if plan.stream_layer_ahead else "an expert ahead")
        lines.append(f"Compute: attention, router and head on the GPU; routed experts on the CPU "
                     f"in parallel with the GPU's shared MLPs; prefill streams experts {stream}.")
    b = plan.bytes_per_token(kv_tokens)
    lines.append(f"Per decoded token ({kv_tokens:,} tokens of context): GPU reads {_gb(b['gpu'])}, "
                 f"CPU reads {_gb(b['cpu'])}, PCIe moves {b['pcie'] / 1e6:.1f} MB")
    src = lambda k: "measured" if k in bw.measured else "assumed"
    lines.append(f"Bandwidths: GPU {bw.gpu / GB:.0f} GB/s ({src('gpu')}), CPU {bw.cpu / GB:.1f} "
                 f"GB/s ({src('cpu')}), PCIe {bw.pcie / GB:.1f} GB/s ({src('pcie')})")
    lines.append(f"Decode bound: {plan.decode_bound(bw, kv_tokens):.2f} tokens/s")
    return "\n".join(lines)


def plan_dict(plan: Plan, bw: Bandwidths, kv_tokens: int = 1024) -> dict:
    return {"quant": plan.quant, "context": plan.context, "gpu_budget": plan.gpu_budget,
            "cpu_budget": plan.cpu_budget, "gpu_parts": plan.gpu_parts,
            "cpu_parts": plan.cpu_parts, "gpu_total": plan.gpu_total,
            "cpu_total": plan.cpu_total, "gpu_mlp_layers": len(plan.gpu_mlp_layers),
            "embed_on_gpu": plan.embed_on_gpu, "stream_slots": plan.stream_slots,
            "gpu_expert_layers": len(plan.gpu_expert_layers),
            "bytes_per_token": plan.bytes_per_token(kv_tokens),
            "bandwidths": {"gpu": bw.gpu, "cpu": bw.cpu, "pcie": bw.pcie,
                           "measured": list(bw.measured)},
            "decode_bound_tok_s": plan.decode_bound(bw, kv_tokens)}
