"""Placement plans for the real Grok-2 config: budgets respected, sizes add up, clear refusals."""

from __future__ import annotations

import pytest

from app.cli import main
from app.engine.config import Grok2Config
from app.engine.plan import GB, Bandwidths, PlanError, make_plan, model_bytes, sizes, weight_format

REAL = Grok2Config()


@pytest.mark.parametrize("gpu", [24, 48, 80])
@pytest.mark.parametrize("cpu", [128, 256])
@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_real_config_plans_add_up_and_fit(gpu, cpu, quant):
    """Every feasible plan holds each weight exactly once, within both budgets."""
    try:
        plan = make_plan(REAL, quant, gpu * GB, cpu * GB)
    except PlanError as exc:
        assert "What would fit" in str(exc) or "Nothing fits" in str(exc)
        return
    assert plan.weight_total == model_bytes(REAL, quant)
    assert plan.gpu_total <= gpu * GB and plan.cpu_total <= cpu * GB
    assert "KV cache" in plan.gpu_parts and plan.gpu_parts["KV cache"] == 8192 * 256 * 1024


def test_expected_shapes_of_the_workstation_plans():
    """48 GB holds all 64 shared MLPs at int4 with 128 GB RAM; 24 GB holds part and needs 256."""
    p48 = make_plan(REAL, "int4", 48 * GB, 128 * GB)
    assert len(p48.gpu_mlp_layers) == 64 and p48.embed_on_gpu
    p24 = make_plan(REAL, "int4", 24 * GB, 256 * GB)
    assert 10 < len(p24.gpu_mlp_layers) < 64 and p24.stream_slots >= 2
    with pytest.raises(PlanError, match="RAM"):
        make_plan(REAL, "int4", 24 * GB, 128 * GB)
    p80 = make_plan(REAL, "int4", 80 * GB, 256 * GB)
    assert p80.gpu_expert_layers and p80.decode_bound(Bandwidths()) > p48.decode_bound(Bandwidths())


def test_impossible_budget_lists_options():
    """int8 with 48 GB + 128 GB is refused with the options that fit, int4 among them."""
    with pytest.raises(PlanError) as err:
        make_plan(REAL, "int8", 48 * GB, 128 * GB)
    text = str(err.value)
    assert "--quant int4" in text and "109.5 GB" in text and "\n" not in text


def test_tiers_and_bytes_per_token():
    """Experts live on the CPU; a 48 GB plan reads 2 experts per layer from RAM per token."""
    plan = make_plan(REAL, "int4", 48 * GB, 256 * GB)
    assert plan.tier_of("model.layers.5.block_sparse_moe.experts.3.w1") == "cpu"
    assert plan.tier_of("model.layers.5.self_attn.q_proj") == "gpu"
    assert plan.tier_of("model.layers.5.block_sparse_moe.gate") == "gpu"
    s = sizes(REAL, "int4")
    cpu_layers = sum(plan.tier_of(f"model.layers.{i}.block_sparse_moe.experts.0.w1") == "cpu"
                     for i in range(64))
    assert 48 <= cpu_layers <= 64  # a 48 GB card has room for few, if any, layers of experts
    assert plan.bytes_per_token()["cpu"] == cpu_layers * 2 * s.expert
    assert abs(64 * 2 * s.expert / 1e9 - 27.4) < 0.1  # docs/grok2.md#size-and-memory
    slow, fast = Bandwidths(cpu=60 * GB), Bandwidths(cpu=200 * GB)
    assert 1.8 < plan.decode_bound(slow) < plan.decode_bound(fast) < 7.4


def test_cpu_only_plan_puts_everything_on_cpu():
    """Without a GPU budget every part is on the CPU tier."""
    plan = make_plan(REAL, "int4", 0, 256 * GB)
    assert not plan.has_gpu and plan.tier_of("lm_head") == "cpu"
    assert plan.weight_total == model_bytes(REAL, "int4")


def test_router_gate_stays_bf16_and_head_int8():
    """The plan never quantizes the router; int4 keeps the output head at int8."""
    assert weight_format("model.layers.0.block_sparse_moe.gate", 8, 8192, "int4").kind == "bf16"
    assert weight_format("lm_head", 131072, 8192, "int4").kind == "int8"
    assert weight_format("model.layers.0.mlp.up_proj", 32768, 8192, "int4").group == 128


def test_plan_command_prints_bound(monkeypatch, capsys):
    """`grok-desktop plan` on the built-in real config prints placement and bound."""
    monkeypatch.setattr("app.engine.bench.probe_bandwidths", lambda refresh=False: Bandwidths())
    assert main(["plan", "--gpu-mem", "48", "--cpu-mem", "128"]) == 0
    out = capsys.readouterr().out
    assert "shared MLPs (64 of 64)" in out and "Decode bound: 2.1" in out


def test_plan_command_refuses_with_one_line(monkeypatch, capsys):
    """An impossible budget exits 2 with one explanatory line."""
    monkeypatch.setattr("app.engine.bench.probe_bandwidths", lambda refresh=False: Bandwidths())
    assert main(["plan", "--gpu-mem", "24", "--cpu-mem", "64", "--quant", "int4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "What would fit" in err


def test_plan_counts_the_model_attention_block():
    """plan.py's workspace estimate uses the same query block as model.py."""
    from app.engine import model, plan

    assert plan.QUERY_CHUNK == model.QUERY_CHUNK
