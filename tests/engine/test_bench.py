"""bench: the bandwidth probe is cached, the fastest CPU kernel is kept, a model is measured."""

from __future__ import annotations

import json
import time

import pytest
import torch

from app.cli import main
from app.engine import bench, cpu_int4, cpu_kernels, quantize
from app.engine.plan import GB, Bandwidths, make_plan
from app.engine.weights import load_model


def test_probe_is_measured_once_and_cached(monkeypatch):
    """The first probe measures (CPU only here); the second comes from the cache file."""
    calls = []
    real, real_best = bench.timed, bench.best_of
    monkeypatch.setattr(bench, "timed", lambda fn, *a, **k: calls.append(1) or real(fn, 1))
    monkeypatch.setattr(bench, "best_of", lambda fn, *a, **k: calls.append(1) or real_best(fn, 1))
    first = bench.probe_bandwidths(nbytes=8 * 2**20)
    second = bench.probe_bandwidths(nbytes=8 * 2**20)
    assert first.cpu > 0 and "cpu" in first.measured and second == first
    assert len(calls) == (1 if not torch.cuda.is_available() else 3)


def test_fastest_kernel_is_kept_and_fallback_agrees(monkeypatch):
    """select_cpu_kernels keeps the measured winner; the dequant fallback computes the same."""
    fake = {"int8": {"int8pack": {"seconds": 2.0}, "dequant": {"seconds": 1.0}},
            "int4": {"int4pack": {"seconds": 1.0}, "dequant": {"seconds": 3.0}}}
    monkeypatch.setattr(bench, "measure_cpu_kernels", lambda: fake)
    monkeypatch.setattr(quantize, "CPU_KERNELS", dict(quantize.CPU_KERNELS))
    assert bench.select_cpu_kernels(refresh=True) == {"int8": "dequant", "int4": "int4pack"}
    assert quantize.CPU_KERNELS["int8"] == "dequant"
    w, x = torch.randn(64, 128), torch.randn(2, 128)
    q = quantize.QuantLinear.from_weight(w, quantize.Format("int4", 128))
    fast = q(x)
    quantize.CPU_KERNELS["int4"] = "dequant"
    assert (q(x) - fast).norm() / fast.norm() < 0.01


def test_kernel_measurement_reports_rates():
    """Every candidate is timed at a small shape and gets a positive rate."""
    results = bench.measure_cpu_kernels(n=64, k=256, repeat=1)
    assert set(results) == {"int8", "int4", "bf16", "float32"}
    assert all(r["gb_per_s"] > 0 for kinds in results.values() for r in kinds.values())


def test_bench_model_reports_speed_next_to_bound(ckpt):
    """Prefill, decode, TTFT, peak memory and the bound are all reported."""
    model = load_model(ckpt, dtype=torch.float32)
    plan = make_plan(model.config, "float32", 0, 64 * GB, context=64)
    r = bench.bench_model(model, plan, Bandwidths(cpu=10 * GB), (8, 16), decode_tokens=3)
    assert [p["tokens"] for p in r["prefill"]] == [8, 16]
    assert r["decode_tokens_per_s"] > 0 and r["decode_bound_tokens_per_s"] > 0
    assert r["bytes_per_token"]["cpu"] > 0 and r["peak_cpu_bytes"] > 0
    assert r["threads"] == torch.get_num_threads()
    text = bench.format_result(r)
    assert "decode" in text and f"{r['threads']} CPU thread" in text
    if r["resident_cpu_bytes"] is not None:  # Linux: resident now and the peak, both
        assert 0 < r["resident_cpu_bytes"] <= r["peak_cpu_bytes"] + 64 * 2**20
        assert "GB resident after the run, peak" in text
    assert r["cpu_graphs"] == [] and "onnxruntime graphs" not in text  # float32: eager
    assert r["cpu_decode"] is False and "cpu_bf16" not in text


def test_bench_names_the_compiled_bf16_decode(ckpt):
    """A bf16 model with its compiled decode step (cpu_bf16.py): bench says so."""
    from app.engine import cpu_bf16

    if not cpu_bf16.available():
        pytest.skip("needs numba")
    model = load_model(ckpt, dtype=torch.bfloat16)
    model.cpu_decode = cpu_bf16.build(model, min_bytes=0)
    plan = make_plan(model.config, "bf16", 0, 64 * GB, context=64)
    r = bench.bench_model(model, plan, Bandwidths(cpu=10 * GB), (8,), decode_tokens=2)
    assert r["cpu_decode"] is True
    assert "decode: one numba call over the bf16 weights (cpu_bf16)" in bench.format_result(r)


@pytest.mark.skipif(not cpu_kernels.available(), reason="onnxruntime not installed")
def test_bench_names_the_layers_run_as_onnxruntime_graphs(ckpt, monkeypatch):
    """A CPU int8 model runs its layers and head as one onnxruntime graph; bench says so."""
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "nbits")
    model = quantize.quantize_model(load_model(ckpt, dtype=torch.bfloat16), "int8")
    quantize.build_cpu_kernels(model)
    plan = make_plan(model.config, "int8", 0, 64 * GB, context=64)
    r = bench.bench_model(model, plan, Bandwidths(cpu=10 * GB), (8,), decode_tokens=2)
    assert r["cpu_graphs"] == [[0, 1, True, False]]  # hidden 64: no compiled decode step
    text = bench.format_result(r)
    assert "CPU layers as onnxruntime graphs: layers 0..1 + final norm, output head" in text
    assert "cpu_step" not in text
    stepped = bench.format_result({**r, "cpu_graphs": [[0, 1, True, True]]})
    assert "output head (decode: one numba call, cpu_step)" in stepped


def test_synthetic_model_has_grok_proportions():
    """The synthetic builder makes a working quantized model of the asked shape."""
    cfg = bench.Grok2Config.from_dict({**bench.MID_CONFIG, "num_hidden_layers": 1,
                                       "hidden_size": 128, "head_dim": 16,
                                       "intermediate_size": 256, "moe_intermediate_size": 128,
                                       "vocab_size": 512})
    model = bench.synthetic_model(cfg, "int4")
    assert model.model.layers[0].block_sparse_moe.experts[0].w1.fmt.kind == "int4"
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()


def test_bench_command_json(ckpt, monkeypatch, capsys):
    """`grok-desktop bench --model DIR --json` prints one JSON object with the bound."""
    monkeypatch.setattr(bench, "probe_bandwidths", lambda refresh=False: Bandwidths())
    monkeypatch.setattr(bench, "select_cpu_kernels", lambda refresh=False: {})
    code = main(["bench", "--model", str(ckpt), "--gpu-mem", "0", "--cpu-mem", "16",
                 "--quant", "int8", "--context", "64", "--prompt-lengths", "4,8",
                 "--decode-tokens", "2", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan"] == "int8" and data["decode_bound_tokens_per_s"] > 0


def test_best_of_takes_the_fastest_call():
    """The bound is the fastest of the repeats (a loaded neighbour only ever slows a call)."""
    delays = iter([0.0, 0.03, 0.001, 0.02])  # warm-up, then three timed calls
    seconds = bench.best_of(lambda: time.sleep(next(delays)), repeat=3)
    assert 0.001 <= seconds < 0.015


def test_real_expert_row_reports_fraction_of_read_bound(monkeypatch):
    """The real-size expert row (here at a small stand-in shape) reports its rate against the
    probed read bandwidth: fraction = weight bytes / seconds / read rate."""
    monkeypatch.setattr(bench, "REAL_EXPERT", (256, 512))
    bw = Bandwidths(cpu=10 * GB, measured=("cpu",))
    for kind in ("int4", "int8"):
        row = bench.bench_real_expert(kind, bw, repeat=1)
        nbytes = 3 * quantize.Format(kind, 128).nbytes(512, 256)
        assert row["fraction_of_read"] == pytest.approx(nbytes / row["seconds"] / (10 * GB))
        # the setting's kernel, or for int4 in blocks of 128 the cpu_int4 kernel that runs it
        vnni = kind == "int4" and quantize.CPU_KERNELS[kind] == "nbits" and cpu_int4.available()
        assert row["kernel"] == ("vnni" if vnni else quantize.CPU_KERNELS[kind])
        text = bench.format_result({**_fake_result(), "real_expert": row})
        assert "real-size expert" in text and "% of the 10.0 GB/s read bound" in text
        names = {"nbits": "onnxruntime MatMulNBits", "vnni": "AVX512-VNNI int4 (cpu_int4)"}
        if row["kernel"] in names:  # the kernel by its name, not the setting's
            assert names[row["kernel"]] in text


def _fake_result() -> dict:
    return {"plan": "int8", "prefill": [{"tokens": 8, "tokens_per_s": 1.0, "seconds": 8.0}],
            "ttft_s": 8.0, "decode_tokens_per_s": 1.0, "decode_bound_tokens_per_s": 2.0,
            "decode_fraction_of_bound": 0.5, "bytes_per_token": {"gpu": 0, "cpu": 1, "pcie": 0},
            "peak_cpu_bytes": 1, "peak_gpu_bytes": 0, "threads": 2,
            "bandwidths": {"gpu": 0.0, "cpu": 10 * GB, "pcie": 0.0, "measured": ["cpu"]}}


def test_synthetic_bench_command_adds_the_real_expert_row(monkeypatch, capsys):
    """`bench --synthetic` (shrunk here) reports the real-size expert row; --no-real-expert
    leaves it out."""
    monkeypatch.setattr(bench, "probe_bandwidths", lambda refresh=False: Bandwidths(cpu=GB))
    monkeypatch.setattr(bench, "select_cpu_kernels", lambda refresh=False: {})
    monkeypatch.setattr(bench, "MID_CONFIG", dict(bench.MID_CONFIG, hidden_size=128,
                                                  num_hidden_layers=1, intermediate_size=256,
                                                  moe_intermediate_size=128, vocab_size=256))
    monkeypatch.setattr(bench, "REAL_EXPERT", (128, 256))
    args = ["bench", "--synthetic", "--quant", "int4", "--gpu-mem", "0", "--cpu-mem", "16",
            "--context", "64", "--prompt-lengths", "4", "--decode-tokens", "2", "--json"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)["real_expert"]
    assert row["seconds"] > 0 and row["fraction_of_read"] > 0
    assert main([*args, "--no-real-expert"]) == 0
    assert "real_expert" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("args,message", [
    (["--threads", "0"], "0 must be 1 or more"),
    (["--threads", "-3"], "-3 must be 1 or more"),
    (["--decode-tokens", "0"], "0 must be 1 or more"),
    (["--threads", "two"], "'two' is not a whole number"),
])
def test_bench_rejects_counts_below_one(args, message, capsys):
    """Thread and token counts below 1 are one usage error (exit 2), not a traceback or a
    silent default."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--synthetic", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_rejects_a_zero_prompt_length(capsys):
    assert main(["bench", "--synthetic", "--gpu-mem", "0", "--prompt-lengths", "0"]) == 2
    assert "1 or more" in capsys.readouterr().err
