"""Prepare while downloading: each source file is converted into its pieces of the prepared
units as soon as it has arrived, then deleted, so the disk holds the prepared model plus about
one source file; an interruption anywhere resumes; the result is the one the plain download +
`prepare` gives, byte for byte and token for token."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app.checkpoint_files import unit_names
from app.download import budget, fetch
from app.download.fetch import Control, Downloader, Stopped
from app.download.pipeline import Request, look, run
from app.engine import pieces as pieces_mod
from app.engine.config import Grok2Config
from app.engine.engine import Engine
from app.engine.piece_plan import header_shapes, parse_job, plan_jobs, splits
from app.engine.plan import GB, Format
from app.engine.prepare import MANIFEST, convert_tensor, prepare
from app.errors import UserError
from app.messages import GenerationParams, Token

GREEDY = GenerationParams(temperature=0, max_tokens=16)
STATE_SLACK = 256 * 1024  # the download's and the journal's JSON files


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


def _disk(*folders: Path) -> int:
    """Bytes of every file under `folders` (apparent sizes: a staged unit counts whole)."""
    return sum(p.stat().st_size for f in folders if f.exists() for p in f.rglob("*")
               if p.is_file())


def _digests(folder: Path) -> dict[str, str]:
    files = json.loads((folder / MANIFEST).read_text())["files"]
    return {u: f["sha256"] for u, f in files.items()}


class Sampler:
    """Progress callback measuring the disk (prepared folder + download folder) each time."""

    def __init__(self, out: Path, stop_when=None, control: Control | None = None) -> None:
        self.out, self.source = out, out.with_name(out.name + ".download")
        self.peak, self.samples, self.stages = 0, 0, []
        self.stop_when, self.control = stop_when, control

    def __call__(self, p) -> None:
        self.stages.append(p.stage)
        self.peak = max(self.peak, _disk(self.out, self.source))
        self.samples += 1
        if self.stop_when and self.stop_when(p) and self.control:
            self.control.stop("paused")


def _bound(repo: Path, prepared: Path, files: int = 2) -> int:
    """The prepared folder + the `files` largest source weight files + the small files."""
    weights = sorted((p.stat().st_size for p in repo.glob("*.safetensors")), reverse=True)
    small = sum(p.stat().st_size for p in repo.iterdir() if p.suffix != ".safetensors")
    return _disk(prepared) + sum(weights[:files]) + small + STATE_SLACK


def _expert_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.glob("*-TP-0*.safetensors"))


@pytest.mark.parametrize("quant", ["int4", "int8", "bf16"])
def test_pieces_equal_prepare_and_disk_stays_at_prepared_plus_a_file(
        wide_hub, wide_repo_folder, tmp_path, quant):
    reference = prepare(wide_repo_folder, tmp_path / "reference", quant)
    out = tmp_path / f"grok-2-{quant}"
    lk = look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant=quant))
    w2 = {f for j, fs in lk.needs.items() if len(fs) > 1 for f in fs}
    if quant == "int8":  # one scale per row of w2 spans its 8 rank files: read together
        assert w2 == {f"pytorch_model-00007-TP-{r:03d}.safetensors" for r in range(8)}
    else:
        assert w2 == set()  # every piece reads one file
    sampler = Sampler(out)
    assert run(lk, on_progress=sampler) == out
    assert sampler.samples > 50 and any(s.startswith("preparing layer-") for s in sampler.stages)
    assert _digests(out) == _digests(reference)
    assert {p.name for p in out.iterdir()} == {p.name for p in reference.iterdir()} | {
        "LICENSE", "README.md"}
    assert not lk.source.exists()
    assert wide_hub.overlaps() == {}
    # the measured disk: prepared + 2 source files (int8: + all of w2's rank files), which the
    # old scheme (every expert file on disk before any expert unit was written) exceeds
    w2_bytes = sum((wide_repo_folder / f).stat().st_size for f in w2)
    bound = _bound(wide_repo_folder, out) + w2_bytes
    assert sampler.peak <= bound
    assert _disk(out) + _expert_bytes(wide_repo_folder) > bound
    # the disk check's figure for the source files is the largest file (int8: w2's files)
    largest = max(p.stat().st_size for p in wide_repo_folder.glob("*.safetensors"))
    peak = budget.source_peak(lk.snapshot, tmp_path / "fresh", lambda n: 0, lk.needs, set(),
                              lk.cfg)
    assert peak == (w2_bytes if quant == "int8" else largest)
    if quant != "bf16":
        assert _tokens(out) == _tokens(reference)


def test_narrow_shards_fall_back_to_whole_tensors(hub, repo_folder, tmp_path):
    """The default toy's expert shards are 8 rows/columns, narrower than an int4 group and a
    packing block: those tensors are read from all their rank files together, still exact."""
    reference = prepare(repo_folder, tmp_path / "reference", "int4")
    out = tmp_path / "grok-2-int4"
    lk = look(Request(out, endpoint=hub.endpoint, prepared_only=True, quant="int4"))
    grouped = [j for j, fs in lk.needs.items() if len(fs) > 1]
    assert grouped and all(parse_job(j)[0].endswith("-experts") for j in grouped)
    run(lk)
    assert _digests(out) == _digests(reference)


def _stop_after_pieces_before_delete(monkeypatch):
    """Stop (as a crash would) right after an expert file's pieces are recorded, before the
    file is deleted."""
    real = Downloader.consume
    hit = []

    def consume(self, name):
        if "-TP-0" in name and not hit:
            hit.append(name)
            raise Stopped("crash before delete")
        return real(self, name)

    monkeypatch.setattr(Downloader, "consume", consume)
    return hit


def _crash_mid_piece(monkeypatch):
    """Write a shard's bytes wrong (half-written) into its place, then crash before the piece
    is recorded."""
    real = pieces_mod.put_shard
    calls = []

    def put(views, name, shard, fmt, dim, start):
        calls.append(name)
        if len(calls) == 40:
            real(views, name, shard * 3 + 1, fmt, dim, start)
            raise Stopped("crash mid-piece")
        return real(views, name, shard, fmt, dim, start)

    monkeypatch.setattr(pieces_mod, "put_shard", put)
    return calls


def _crash_before_manifest(monkeypatch):
    """Crash after a finished unit is moved into the prepared folder, before the manifest
    records it."""
    real = pieces_mod._save_manifest
    hit = []

    def save(out, manifest):
        if not hit and any(u.endswith("-experts") for u in manifest["files"]):
            hit.append(1)
            raise Stopped("crash before manifest")
        return real(out, manifest)

    monkeypatch.setattr(pieces_mod, "_save_manifest", save)
    return hit


@pytest.mark.parametrize("where", ["after-pieces-before-delete", "mid-piece", "mid-download",
                                   "before-manifest"])
@pytest.mark.parametrize("quant", ["int4", "int8"])
def test_interrupted_anywhere_and_resumed_equals_prepare(wide_hub, wide_repo_folder, tmp_path,
                                                        where, quant):
    reference = prepare(wide_repo_folder, tmp_path / "reference", quant)
    out = tmp_path / "grok-2"
    control = Control()
    shard = "pytorch_model-00006-TP-005.safetensors"
    half = len(wide_hub.files[shard]) // 2
    hit: list = []
    # the injected fault lives in its own patch context: undoing it must not undo the
    # fixtures' patches (the app_home fixture's GROK_DESKTOP_HOME among them)
    with pytest.MonkeyPatch.context() as faults:
        if where == "after-pieces-before-delete":
            hit = _stop_after_pieces_before_delete(faults)
        elif where == "mid-piece":
            hit = _crash_mid_piece(faults)
        elif where == "before-manifest":
            hit = _crash_before_manifest(faults)
        else:
            wide_hub.stall = (shard, half)
        sampler = Sampler(out, lambda p: where == "mid-download" and p.file == shard
                          and p.file_done >= half, control)
        lk = look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant=quant))
        first_need = lk.disk().need
        with pytest.raises(Stopped):
            run(lk, control, sampler)
    assert hit or where == "mid-download"
    assert not json.loads((out / MANIFEST).read_text())["complete"]
    journal = json.loads((lk.source / ".grok-download" / "prepare" / "pieces.json").read_text())
    if where == "after-pieces-before-delete":
        assert (lk.source / hit[0]).is_file()  # pieces recorded, file still there
        assert any(hit[0] in j for j in journal["done"])
    resumed = Sampler(out)
    again = look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant=quant))
    assert again.disk().need < first_need  # the check counts what is already written
    assert run(again, on_progress=resumed) == out
    assert _digests(out) == _digests(reference)
    assert not lk.source.exists()
    # not one byte twice: files already prepared (or on disk) are not fetched again
    assert wide_hub.overlaps() == {}
    assert sum(wide_hub.bytes_served(n) for n in wide_hub.files) == lk.snapshot.total_bytes
    if where == "mid-download":
        assert wide_hub.served[shard][-1] == (half, len(wide_hub.files[shard]))  # the rest
    w2 = sum((wide_repo_folder / f).stat().st_size for fs in lk.needs.values() if len(fs) > 1
             for f in fs)
    assert max(sampler.peak, resumed.peak) <= _bound(wide_repo_folder, out) + w2
    if quant == "int4" and where == "mid-piece":
        assert _tokens(out) == _tokens(reference)


def test_a_tensor_missing_from_the_repo_is_refused_before_any_piece(wide_repo_folder,
                                                                   tmp_path):
    """A unit is complete once its pieces are written, so a repo lacking one tensor (here the
    pre-attention norm of layer 1) must be refused up front, not prepared with zeros."""
    import shutil

    from safetensors.torch import load_file, save_file

    from app.errors import ModelFileError
    from tests.download.hub import StandInHub

    repo = tmp_path / "repo"
    shutil.copytree(wide_repo_folder, repo)
    name = "pytorch_model-00013-TP-common.safetensors"
    tensors = load_file(repo / name)
    del tensors["model.layers.1.pre_attn_norm.weight"]
    save_file(tensors, repo / name, {"format": "pt"})
    server = StandInHub(repo).start()
    try:
        out = tmp_path / "grok-2"
        with pytest.raises(ModelFileError, match="model.layers.1.pre_attn_norm.weight"):
            run(look(Request(out, endpoint=server.endpoint, prepared_only=True)))
        assert not list((tmp_path / "grok-2.download").rglob("*.safetensors"))
    finally:
        server.stop()


def test_finished_folder_fetches_nothing_and_refuses_another_quant(wide_hub, tmp_path):
    out = tmp_path / "grok-2-int4"
    run(look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4")))
    wide_hub.served.clear()
    assert run(look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True))) == out
    assert wide_hub.served == {}
    with pytest.raises(UserError, match="prepared as int4"):
        look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int8"))


def test_disk_check_for_prepared_only_counts_prepared_plus_peak(hub, tmp_path):
    lk = look(Request(tmp_path / "p", endpoint=hub.endpoint, prepared_only=True, quant="int4"))
    check = lk.disk()
    plain = look(Request(tmp_path / "o", endpoint=hub.endpoint)).disk()
    assert check.need > 0 and "source files at a time" in check.detail
    assert plain.need == lk.snapshot.total_bytes
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.download").exists()


# ---- shard by shard = merged, on shapes like Grok-2's ------------------------------------

@pytest.mark.parametrize("kind", ["int4", "int8", "bf16"])
@pytest.mark.parametrize("dim", [0, 1])
def test_put_shard_writes_the_merged_tensors_bytes(kind, dim):
    """Eight shards converted one by one into a zeroed stored tensor give exactly the bytes
    of the merged weight's conversion (int8 along K: not splittable, see piece_plan)."""
    n, k = (1024, 256) if dim == 0 else (128, 2048)  # w1/w3: rows; w2: columns
    gen = torch.Generator().manual_seed(dim)
    w = (torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen)).bfloat16()
    fmt = None if kind == "bf16" else Format(kind, 128 if kind == "int4" else 0)
    width = w.shape[dim] // 8
    ok = splits(kind, 128, dim, (n, k), width)
    assert ok == (not (kind == "int8" and dim == 1))
    if not ok:
        return
    want = convert_tensor("x.weight", w, fmt)
    views = {name: torch.zeros_like(t) for name, t in want.items()}
    for rank in range(8):
        pieces_mod.put_shard(views, "x.weight", w.narrow(dim, rank * width, width).contiguous(),
                             fmt, dim, rank * width)
    for name in want:
        assert torch.equal(views[name].view(torch.uint8), want[name].view(torch.uint8)), name


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["int4", "int8", "bf16"]), st.sampled_from([0, 1]),
       st.sampled_from([64, 128, 192]), st.sampled_from([128, 256, 512]),
       st.sampled_from([1, 2, 4, 8]), st.sampled_from([32, 64, 128]), st.integers(0, 99))
def test_every_shard_that_splits_converts_exactly(kind, dim, n, k, ranks, group, seed):
    """Whatever the shape, rank count and group: when piece_plan.splits says a shard converts
    on its own, the shards written one by one are byte for byte the merged conversion."""
    if (n, k)[dim] % ranks or k % group:
        return
    width = (n, k)[dim] // ranks
    fmt = None if kind == "bf16" else Format(kind, group if kind == "int4" else 0)
    if not splits(kind, group, dim, (n, k), width):
        return
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=gen) * 3).bfloat16()
    want = convert_tensor("x.weight", w, fmt)
    views = {name: torch.full_like(t, 7) for name, t in want.items()}  # not zero: all written
    for rank in range(ranks):
        pieces_mod.put_shard(views, "x.weight", w.narrow(dim, rank * width, width).contiguous(),
                             fmt, dim, rank * width)
    for name in want:
        assert torch.equal(views[name].view(torch.uint8), want[name].view(torch.uint8)), name


def test_int4_packing_layout_holds_on_this_pytorch():
    pieces_mod.check_int4_packing()


# ---- the plan on the real Grok-2 layout (shapes from the config, spec 3.2) ---------------

def _grok2_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    from app.engine.tiny import COMMON_FILES, EXPERT_FILES, common_name, shard_name
    from app.engine.weights import build_meta_model

    cfg = Grok2Config()
    meta = {n: tuple(p.shape) for n, p in build_meta_model(cfg).state_dict(keep_vars=True).items()}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for n, patterns in COMMON_FILES.items():
        names = [p.format(i=i) for p in patterns for i in range(cfg.num_hidden_layers)]
        shapes[common_name(n)] = {name: meta[name] for name in dict.fromkeys(names)}
    for n, w in EXPERT_FILES.items():
        dim = 1 if w == "w2" else 0
        for r in range(8):
            part = {}
            for i in range(cfg.num_hidden_layers):
                for e in range(cfg.num_local_experts):
                    name = f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"
                    s = list(meta[name])
                    s[dim] //= 8
                    part[name] = tuple(s)
            shapes[shard_name(n, r)] = part
    return shapes


def _sizes(shapes) -> dict[str, int]:
    out = {}
    for f, ts in shapes.items():
        total = 0
        for s in ts.values():
            count = 2
            for d in s:
                count *= d
            total += count
        out[f] = total
    return out


def test_grok2_peak_is_the_largest_file_at_int4_and_bf16_and_w2_at_int8():
    """The figures for the real download (sizes from the shapes, bf16): the source files on
    disk at once are one 34.4 GB dense-MLP file at int4 and bf16, and the 8 w2 rank files
    (137 GB) at int8, against all 24 expert files (412 GB) before."""
    shapes = _grok2_shapes()
    sizes = _sizes(shapes)
    assert len(sizes) == 39 and abs(sum(sizes.values()) / GB - 539.0) < 0.5
    largest = max(sizes.values())
    assert abs(largest / GB - 34.36) < 0.01
    hint = unit_names(64)
    for quant, want in (("int4", largest), ("bf16", largest),
                        ("int8", 8 * sizes["pytorch_model-00007-TP-000.safetensors"])):
        jobs = plan_jobs(shapes, quant)
        order, peak = budget.schedule(jobs, sizes, set(), lambda n: 0, sorted(jobs))
        assert sorted(order) == sorted(sizes)
        assert peak == want, quant
    old = 24 * sizes["pytorch_model-00006-TP-000.safetensors"]
    assert abs(old / GB - 412.3) < 0.1 and hint


@pytest.mark.parametrize(("quant", "need_gb", "old_gb"), [
    ("int4", 182.5, 560.5), ("int8", 413.6, 688.4), ("bf16", 584.2, 962.1)])
def test_grok2_disk_check_figures(tmp_path, quant, need_gb, old_gb):
    """The disk check a user sees for the real download (nothing on disk yet): the prepared
    model (model_bytes + 2 %) plus the source peak, next to the old scheme's figure (the
    prepared model plus all 24 expert files)."""
    from app.download.hub import RemoteFile, Snapshot

    shapes, cfg = _grok2_shapes(), Grok2Config()
    sizes = _sizes(shapes)
    snapshot = Snapshot("xai-org/grok-2", "0" * 40, tuple(
        RemoteFile(n, s, "0" * 64, None) for n, s in sizes.items()), "http://127.0.0.1:9")
    check = budget.disk_check(snapshot, tmp_path, lambda n: 0, prepared_only=True, cfg=cfg,
                              quant=quant, needs=plan_jobs(shapes, quant))
    assert round(check.need / GB, 1) == need_gb
    old = check.need - budget.source_peak(snapshot, tmp_path, lambda n: 0,
                                          plan_jobs(shapes, quant), set(), cfg) \
        + 24 * sizes["pytorch_model-00006-TP-000.safetensors"]
    assert round(old / GB, 1) == old_gb
    assert "source files at a time" in check.detail


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
def test_header_shapes_reads_any_header(shapes):
    header = {"__metadata__": {"format": "pt"}}
    header.update({k: {"dtype": "BF16", "shape": v, "data_offsets": [0, 0]}
                   for k, v in shapes.items()})
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw
    assert header_shapes(data) == {k: tuple(v) for k, v in shapes.items()}
