"""Prepare while downloading: each unit is written as soon as its files have arrived, the bf16
files go as soon as no unit needs them, an interruption resumes, and the result is the one the
plain download + `prepare` gives, byte for byte and token for token."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.checkpoint_files import unit_names
from app.download import budget, fetch
from app.download.fetch import Control, Stopped
from app.download.pipeline import Request, look, run
from app.engine.engine import Engine
from app.engine.prepare import MANIFEST, prepare
from app.errors import UserError
from app.messages import GenerationParams, Token

GREEDY = GenerationParams(temperature=0, max_tokens=16)


@pytest.fixture(autouse=True)
def report_every_piece(monkeypatch):
    monkeypatch.setattr(fetch, "REPORT_EVERY_S", 0.0)


def _tokens(folder) -> list[int]:
    engine = Engine.load(folder, device="cpu", dtype=torch.float32, budgets=(0, 64 * 10**9))
    ids = []
    for event in engine.stream_prompt("The model", GREEDY):
        if isinstance(event, Token):
            ids.extend(event.token_ids)
    return ids


def test_interrupted_and_resumed_equals_download_then_prepare(hub, repo_folder, tmp_path):
    plain = run(look(Request(tmp_path / "plain", endpoint=hub.endpoint)))
    reference = prepare(plain, tmp_path / "plain-int4", "int4")
    hub.served.clear()

    out = tmp_path / "grok-2-int4"
    control, stages, source_bytes = Control(), [], []
    req = Request(out, endpoint=hub.endpoint, prepared_only=True, quant="int4")
    lk = look(req)
    source = lk.source

    def watch(p):
        stages.append(p.stage)
        source_bytes.append(sum(f.stat().st_size for f in source.glob("*.safetensors")))
        if p.stage == "preparing layer-000":
            control.stop("paused")

    with pytest.raises(Stopped):
        run(lk, control, watch)
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and "common" in manifest["files"]
    assert "layer-000" not in manifest["files"] or "layer-001" not in manifest["files"]
    # the embedding, head and final norm files were deleted once `common` was written
    assert not (source / "pytorch_model-00000-TP-common.safetensors").exists()

    folder = run(look(Request(out, endpoint=hub.endpoint, prepared_only=True, quant="int4")),
                 on_progress=watch)
    assert folder == out and not source.exists()
    assert hub.overlaps() == {}  # not one byte twice across the interruption
    assert sum(hub.bytes_served(n) for n in hub.files) == lk.snapshot.total_bytes

    got, want = json.loads((out / MANIFEST).read_text()), json.loads(
        (reference / MANIFEST).read_text())
    assert got["complete"] and set(got["files"]) == set(unit_names(2))
    assert {u: f["sha256"] for u, f in got["files"].items()} == \
           {u: f["sha256"] for u, f in want["files"].items()}
    assert {"LICENSE", "README.md", "config.json", "tokenizer.tok.json"} <= \
           {p.name for p in out.iterdir()}
    # bf16 source files never exceeded the planned peak
    sizes = {f.name: f.size for f in lk.snapshot.files}
    _, peak = budget.schedule(lk.needs, sizes, set(), lambda n: 0, unit_names(2))
    assert max(source_bytes) <= peak < sum(s for n, s in sizes.items()
                                           if n.endswith(".safetensors"))
    hub.served.clear()  # a rerun on the finished folder fetches nothing at all
    assert run(look(Request(out, endpoint=hub.endpoint, prepared_only=True))) == out
    assert hub.served == {}
    with pytest.raises(UserError, match="prepared as int4"):
        look(Request(out, endpoint=hub.endpoint, prepared_only=True, quant="int8"))
    ids = _tokens(out)
    assert ids and ids == _tokens(reference)


def test_disk_check_for_prepared_only_counts_prepared_plus_peak(hub, tmp_path):
    lk = look(Request(tmp_path / "p", endpoint=hub.endpoint, prepared_only=True, quant="int4"))
    check = lk.disk()
    plain = look(Request(tmp_path / "o", endpoint=hub.endpoint)).disk()
    assert check.need > 0 and "source files at a time" in check.detail
    assert plain.need == lk.snapshot.total_bytes
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.download").exists()


# ---- the schedule on the real Grok-2 layout (sizes from the spec, 3.2) -------------------

GB = 10**9


def _grok2_layout() -> tuple[dict[str, set[str]], dict[str, int]]:
    sizes: dict[str, int] = {}
    needs: dict[str, set[str]] = {}
    per_layer = {3: 34.36, 4: 34.36, 5: 34.36, 9: 1.074, 10: 8.59, 11: 8.59, 12: 1.074,
                 13: 0.001, 14: 0.001, 15: 0.001, 16: 0.001, 17: 0.008}
    for n, size in {0: 2.147, 1: 2.147, 2: 0.0001}.items():
        name = f"pytorch_model-{n:05d}-TP-common.safetensors"
        sizes[name] = int(size * GB)
        needs.setdefault("common", set()).add(name)
    for n, size in per_layer.items():
        name = f"pytorch_model-{n:05d}-TP-common.safetensors"
        sizes[name] = int(size * GB)
        for i in range(64):
            needs.setdefault(f"layer-{i:03d}", set()).add(name)
    for n in (6, 7, 8):
        for r in range(8):
            name = f"pytorch_model-{n:05d}-TP-{r:03d}.safetensors"
            sizes[name] = int(17.18 * GB)
            for i in range(64):
                needs.setdefault(f"layer-{i:03d}-experts", set()).add(name)
    return needs, sizes


def test_grok2_schedule_peak_is_the_24_expert_shards():
    """In the official layout every expert unit needs all 24 shard files: the bf16 peak is
    those 24 files (412 GB), not a layer's worth; the rest goes file group by file group."""
    needs, sizes = _grok2_layout()
    order, peak = budget.schedule(needs, sizes, set(), lambda n: 0, unit_names(64))
    assert sorted(order) == sorted(sizes)
    assert order[:3] == sorted(n for n in needs["common"])
    assert peak == 24 * int(17.18 * GB)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([f"u{i}" for i in range(6)]),
                       st.sets(st.sampled_from([f"f{i}" for i in range(8)]), min_size=1),
                       min_size=1),
       st.dictionaries(st.sampled_from([f"f{i}" for i in range(8)]),
                       st.integers(1, 10**6), min_size=8),
       st.sets(st.sampled_from([f"u{i}" for i in range(6)])))
def test_schedule_fetches_each_needed_file_once(needs, sizes, done):
    order, peak = budget.schedule(needs, sizes, done, lambda n: 0, sorted(needs))
    wanted = {f for u, fs in needs.items() if u not in done for f in fs}
    assert sorted(order) == sorted(wanted)
    biggest_unit = max((sum(sizes[f] for f in fs) for u, fs in needs.items() if u not in done),
                       default=0)
    assert biggest_unit <= peak <= sum(sizes[f] for f in wanted) or not wanted


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=30).filter(lambda s: s != "__metadata__"),
                       st.lists(st.integers(1, 9), max_size=3), max_size=8))
def test_tensor_names_reads_any_header(shapes):
    header = {"__metadata__": {"format": "pt"}}
    header.update({k: {"dtype": "BF16", "shape": v, "data_offsets": [0, 0]}
                   for k, v in shapes.items()})
    raw = json.dumps(header).encode()
    assert sorted(budget.tensor_names(struct.pack("<Q", len(raw)) + raw)) == sorted(shapes)
