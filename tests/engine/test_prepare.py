"""prepare: official folder -> prepared folder; resumable, verified, memory-mapped on load."""

from __future__ import annotations

import json
import os

import pytest
import torch

from app.engine import prepare as prep
from app.engine.loader import load_engine_model
from app.engine.plan import GB
from app.engine.quantize import quantize_model
from app.engine.weights import load_model
from app.errors import ModelFileError, StorageError, UserError

IDS = torch.tensor([[5, 17, 250, 3, 99, 42, 7]])
CPU_ONLY = (0, 64 * GB)


def _logits(folder, **kw):
    with torch.inference_mode():
        return load_engine_model(folder, CPU_ONLY, dtype=torch.float32, **kw)(IDS)


def test_prepared_int4_equals_quantized_official(ckpt, tmp_path):
    """Loading the prepared folder gives the logits of quantizing the official one in memory;
    loading the official folder with quant=int4 gives the same."""
    out = prep.prepare(ckpt, tmp_path / "p", "int4")
    want = quantize_model(load_model(ckpt, dtype=torch.float32), "int4")(IDS)
    assert torch.equal(_logits(out), want)
    assert torch.equal(_logits(ckpt, quant="int4"), want)
    manifest = json.loads((out / prep.MANIFEST).read_text())
    assert manifest["complete"] and manifest["quant"] == "int4"
    assert set(manifest["files"]) == set(prep.unit_names(2))


def test_experts_are_contiguous_aligned_and_mapped(ckpt, tmp_path):
    """Each expert's tensors sit together, page-aligned, and load as views of the file."""
    out = prep.prepare(ckpt, tmp_path / "p", "int4")
    tensors = prep.mmap_tensors(out / "layer-000-experts.safetensors")
    names = [n for n in tensors]
    e0 = [n for n in names if ".experts.0." in n]
    assert names.index(e0[-1]) - names.index(e0[0]) == len(e0) - 1
    assert all(t.data_ptr() % prep.ALIGN == 0 for t in tensors.values())
    model = load_engine_model(out, CPU_ONLY)
    w = model.model.layers[0].block_sparse_moe.experts[0].w1.qweight
    assert not w.untyped_storage().resizable()  # a view of the mapping, not an owned copy


def test_interrupted_prepare_resumes_to_the_same_output(ckpt, tmp_path):
    """An interruption after two files, then a rerun: only the rest is written, same result."""
    written = []

    def crash_after_two(unit):
        written.append(unit)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prep.prepare(ckpt, tmp_path / "p", "int8", on_file=crash_after_two)
    with pytest.raises(ModelFileError, match="incomplete"):
        load_engine_model(tmp_path / "p", CPU_ONLY)
    leftover = tmp_path / "p" / f".{prep.unit_names(2)[2]}.safetensors.x1y2z3.tmp"
    leftover.write_bytes(b"a killed run's file in progress")
    resumed = []
    prep.prepare(ckpt, tmp_path / "p", "int8", on_file=resumed.append)
    assert resumed == prep.unit_names(2)[2:]
    assert not leftover.exists()  # the rerun cleans what a kill left
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]
    fresh = prep.prepare(ckpt, tmp_path / "q", "int8")
    assert torch.equal(_logits(tmp_path / "p"), _logits(fresh))


def test_corrupted_file_is_detected(ckpt, tmp_path):
    """A flipped byte is caught on load (mtime changed -> checksum); a same-mtime edit is
    caught by a full verify; prepare then rewrites only that file."""
    out = prep.prepare(ckpt, tmp_path / "p", "int4")
    path = out / "layer-001-experts.safetensors"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="layer-001-experts"):
        load_engine_model(out, CPU_ONLY)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelFileError, match="damaged"):
        prep.verify(out, full=True)
    path.write_bytes(bytes(data))  # mtime moves again
    redone = []
    prep.prepare(ckpt, out, "int4", on_file=redone.append)
    assert redone == ["layer-001-experts"]
    prep.verify(out, full=True)


def test_verify_works_without_hashlib_file_digest(ckpt, tmp_path, monkeypatch):
    """hashlib.file_digest is Python 3.11+; on 3.10 (requires-python) a full verify and the
    checksum of a touched file still work, and still catch a damaged file."""
    import hashlib

    out = prep.prepare(ckpt, tmp_path / "p", "int4")
    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    prep.verify(out, full=True)
    path = out / "layer-001-experts.safetensors"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # mtime moved: rehash
    with pytest.raises(ModelFileError, match="layer-001-experts"):
        prep.verify(out)
    with pytest.raises(ModelFileError, match="damaged"):
        prep.verify(out, full=True)


def test_free_disk_is_checked_first(ckpt, tmp_path, monkeypatch):
    """Too little free space stops before any weight file is written."""
    class Usage:
        free = 1000

    monkeypatch.setattr(prep.shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(StorageError, match="free disk space"):
        prep.prepare(ckpt, tmp_path / "p", "int4")
    assert not list((tmp_path / "p").glob("*.safetensors"))


def test_refuses_foreign_or_mismatched_output(ckpt, tmp_path):
    """A non-empty folder without a manifest, or one prepared differently, is refused."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prep.prepare(ckpt, tmp_path / "x", "int4")
    prep.prepare(ckpt, tmp_path / "p", "int4")
    with pytest.raises(UserError, match="different preparation"):
        prep.prepare(ckpt, tmp_path / "p", "int8")
    with pytest.raises(UserError, match="prepared as int4"):
        load_engine_model(tmp_path / "p", CPU_ONLY, quant="int8")


def test_older_int4_zeros_load_exactly_with_one_log_line(ckpt, tmp_path, monkeypatch, caplog):
    """A folder prepared by the older int4 quantizer (bf16 zeros off the integer-zero-point
    grid) still loads and gives exactly what its stored weights mean, on PyTorch's kernel; the
    log says once, naming the folder, that preparing again gives the faster kernel."""
    from app.engine import quantize

    def older_codes(w, group):  # the previous grid: zero = lo + 8 * scale, any bf16 value
        n, k = w.shape
        wg = w.float().reshape(n, k // group, group)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15.0).clamp(min=1e-8).to(torch.bfloat16).float()
        zero = (lo + 8.0 * scale).to(torch.bfloat16).float()
        q = torch.round((wg - zero[..., None]) / scale[..., None] + 8.0).clamp(0, 15)
        scales = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        return q.to(torch.uint8).reshape(n, k), scales.to(torch.bfloat16)

    with pytest.MonkeyPatch.context() as older:  # not monkeypatch.undo(): that would undo
        older.setattr(quantize, "int4_codes", older_codes)  # the fixtures' isolated home too
        out = prep.prepare(ckpt, tmp_path / "old", "int4")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "nbits")
    monkeypatch.setitem(quantize.CPU_KERNELS, "int8", "int8pack")  # the int8 head: PyTorch too
    with caplog.at_level("WARNING", logger="app.engine.loader"):
        model = load_engine_model(out, CPU_ONLY, dtype=torch.float32)
    lines = [r.getMessage() for r in caplog.records if "prepare again" in r.getMessage()]
    assert len(lines) == 1 and str(out) in lines[0]
    assert quantize.exact_fallbacks(model) > 0
    with torch.inference_mode():
        got = model(IDS)
    monkeypatch.setitem(quantize.CPU_KERNELS, "int4", "int4pack")
    with torch.inference_mode():
        want = load_engine_model(out, CPU_ONLY, dtype=torch.float32)(IDS)
    assert torch.equal(got, want)
