"""A folder made by `download --keep-prepared-only`: its loading errors name the command that
really finishes or repairs it (not `prepare`, which has no source folder to read), and
rerunning the download on a finished folder with a damaged or missing unit repairs exactly
that unit (fetching again only the source files it is made from) instead of reporting success.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from app.cli import main
from app.download import budget, fetch, license
from app.download.budget import size
from app.download.fetch import Downloader, Stopped
from app.download.pipeline import Request, look, run
from app.engine import pieces as pieces_mod
from app.engine.piece_plan import parse_job
from app.engine.plan import DISK_SLACK, model_bytes
from app.engine.prepare import MANIFEST, prepare, verify
from app.errors import ModelFileError
from tests.download.test_download import point_hf_endpoint_at

EXPERTS = "layer-000-experts"


@pytest.fixture(autouse=True)
def report_every_piece(monkeypatch):
    monkeypatch.setattr(fetch, "REPORT_EVERY_S", 0.0)


def _digests(folder: Path) -> dict[str, str]:
    files = json.loads((folder / MANIFEST).read_text())["files"]
    return {u: f["sha256"] for u, f in files.items()}


def _flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    st = path.stat()  # a new mtime even on a coarse clock: the check hashes the file
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _header_bytes(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def _interrupted_download(hub, out: Path, monkeypatch, revision: str | None = None) -> None:
    """A --keep-prepared-only run stopped (as a crash would) after an expert file's pieces
    were recorded: the prepared folder is incomplete and has no source folder of its own."""
    real = Downloader.consume

    def consume(self, name):
        if "-TP-0" in name:
            raise Stopped("crash")
        return real(self, name)

    monkeypatch.setattr(Downloader, "consume", consume)
    with pytest.raises(Stopped):
        run(look(Request(out, endpoint=hub.endpoint, revision=revision, prepared_only=True,
                         quant="int4")))
    monkeypatch.setattr(Downloader, "consume", real)


# ---- 1. the messages name the command that made the folder -----------------------------

def test_interrupted_download_folder_names_the_download_command(hub, tmp_path, monkeypatch):
    out = tmp_path / "grok-2"
    _interrupted_download(hub, out, monkeypatch, revision="main")
    with pytest.raises(ModelFileError) as err:
        verify(out)
    msg = str(err.value)
    assert "incomplete" in msg
    assert f"`grok-desktop download --keep-prepared-only --quant int4 --out {out} " \
           "--revision main` again" in msg
    assert "prepare" not in msg.replace("--keep-prepared-only", "")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["made_by"] == {"command": "download", "repo": "xai-org/grok-2",
                                   "revision": "main"}
    # an older manifest without "made_by": its source, the .download folder, tells
    del manifest["made_by"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=re.escape(
            f"run `grok-desktop download --keep-prepared-only --quant int4 --out {out}` "
            "again (the same --out) to finish it")):
        verify(out)


def test_interrupted_prepare_folder_still_names_prepare(repo_folder, tmp_path):
    out = tmp_path / "prepared"

    def stop(unit: str) -> None:
        raise Stopped("crash")

    with pytest.raises(Stopped):
        prepare(repo_folder, out, "int4", on_file=stop)
    with pytest.raises(ModelFileError, match=re.escape(
            "preparation is incomplete; run `grok-desktop prepare` again with the same --out "
            "to finish it")):
        verify(out)
    prepare(repo_folder, out, "int4")
    _flip_byte(out / f"{EXPERTS}.safetensors")
    with pytest.raises(ModelFileError, match="damaged\\); run prepare again to rewrite it$"):
        verify(out)
    (out / "layer-001.safetensors").unlink()
    (out / f"{EXPERTS}.safetensors").unlink()
    with pytest.raises(ModelFileError, match="missing from the prepared folder; run prepare "
                                             "again to rewrite it$"):
        verify(out)


# ---- 2. rerunning the download repairs a damaged or missing unit ------------------------

@pytest.mark.parametrize(("unit", "what"), [(EXPERTS, "damaged"), ("layer-001", "missing")])
def test_rerun_repairs_a_damaged_or_missing_unit(wide_hub, wide_repo_folder, tmp_path,
                                                 monkeypatch, capsys, unit, what):
    reference = prepare(wide_repo_folder, tmp_path / "reference", "int4")
    out = tmp_path / "grok-2"
    run(look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4")))
    assert _digests(out) == _digests(reference)
    path = out / f"{unit}.safetensors"
    if what == "damaged":
        _flip_byte(path)
    else:
        path.unlink()
    with pytest.raises(ModelFileError, match=re.escape(
            f"{path}: ") + ".*" + re.escape(
            f"run `grok-desktop download --keep-prepared-only --quant int4 --out {out}` "
            "again (the same --out): it fetches again the source files")):
        verify(out)
    wide_hub.served.clear()

    lk = look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4"))
    assert lk.repair == [(unit, what)] and not lk.finished
    files = lk.repair_files()
    sizes = {f.name: f.size for f in lk.snapshot.files}
    if unit == EXPERTS:  # a layer's experts draw on all 24 expert files (8 ranks x w1 w2 w3)
        assert len(files) == 24 and all("-TP-0" in f for f in files)
    else:
        assert files and not any("-TP-0" in f for f in files)
    assert lk.repair_note().startswith(f"{path}: {what}; the download fetches again the "
                                       f"{len(files)} source files it is made from "
                                       f"({size(sum(sizes[f] for f in files))})")
    # the disk check covers the repair: the unit written again + the source files at a time
    check = lk.disk()
    unit_bytes = (reference / f"{unit}.safetensors").stat().st_size
    assert check.need >= unit_bytes + max(sizes[f] for f in files)

    assert run(lk) == out
    verify(out)
    verify(out, full=True)
    assert _digests(out) == _digests(reference)
    for name in reference.iterdir():
        if name.suffix == ".safetensors":
            assert (out / name.name).read_bytes() == name.read_bytes(), name.name
    assert not lk.source.exists()
    assert wide_hub.overlaps() == {}
    for name, data in wide_hub.files.items():  # only the repair's files are fetched whole
        served = wide_hub.bytes_served(name)
        if name in files:
            assert served == len(data), name
        elif name.endswith(".safetensors"):
            assert served <= _header_bytes(data), name  # the header, to plan the pieces
    # a third run: intact, nothing to fetch, nothing to write
    wide_hub.served.clear()
    again = look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4"))
    assert again.finished and again.repair == [] and again.disk().need == 0
    assert run(again) == out and wide_hub.served == {}


def test_repair_interrupted_then_resumed_equals_prepare(wide_hub, wide_repo_folder, tmp_path,
                                                        monkeypatch):
    """A crash in the middle of a repair (after some of the unit's pieces) leaves a folder
    that loading calls incomplete, and the next rerun finishes it, byte for byte."""
    reference = prepare(wide_repo_folder, tmp_path / "reference", "int4")
    out = tmp_path / "grok-2"
    run(look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4")))
    _flip_byte(out / f"{EXPERTS}.safetensors")
    wide_hub.served.clear()
    real = pieces_mod.PieceWriter.save
    calls = []

    def save(self):
        real(self)
        calls.append(1)
        if len(calls) == 5:
            raise Stopped("crash mid-repair")

    monkeypatch.setattr(pieces_mod.PieceWriter, "save", save)
    with pytest.raises(Stopped):
        run(look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4")))
    monkeypatch.setattr(pieces_mod.PieceWriter, "save", real)
    journal = json.loads((out.with_name("grok-2.download") / ".grok-download" / "prepare"
                          / "pieces.json").read_text())
    assert any(parse_job(j)[0] == EXPERTS for j in journal["done"])  # stopped mid-unit
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and EXPERTS not in manifest["files"]
    with pytest.raises(ModelFileError, match="incomplete; run `grok-desktop download"):
        verify(out)
    lk = look(Request(out, endpoint=wide_hub.endpoint, prepared_only=True, quant="int4"))
    assert not lk.finished
    assert run(lk) == out
    verify(out, full=True)
    assert _digests(out) == _digests(reference)
    assert (out / f"{EXPERTS}.safetensors").read_bytes() == \
        (reference / f"{EXPERTS}.safetensors").read_bytes()
    # the pieces recorded before the crash are not fetched again: no byte twice in all
    assert wide_hub.overlaps() == {}
    expert_files = {f for j, fs in lk.needs.items() if parse_job(j)[0] == EXPERTS for f in fs}
    for name in expert_files:
        assert wide_hub.bytes_served(name) == len(wide_hub.files[name])


def test_cli_rerun_on_a_damaged_folder_repairs_and_says_so(hub, tmp_path, monkeypatch, capsys):
    point_hf_endpoint_at(hub, monkeypatch)
    license.accept()
    out = tmp_path / "grok-2"
    args = ["download", "--keep-prepared-only", "--quant", "int4", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    _flip_byte(out / f"{EXPERTS}.safetensors")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"{out / EXPERTS}.safetensors: damaged; the download fetches again the " \
           "24 source files" in captured.err
    assert "Disk: needs 0 bytes" not in captured.err
    verify(out, full=True)
    assert f"prepared (int4): {out}" in captured.out
    # intact now: the rerun fetches nothing, and its disk line says so
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Disk: needs 0 bytes at most (already prepared and intact: nothing to fetch)" \
        in captured.err


# ---- 3. the disk line's parts add up to its total ----------------------------------------

def test_disk_line_parts_add_up(hub, tmp_path):
    lk = look(Request(tmp_path / "p", endpoint=hub.endpoint, prepared_only=True, quant="int4"))
    check = lk.disk()
    small_files = [f for f in lk.snapshot.files if not f.name.endswith(".safetensors")]
    small = sum(f.size for f in small_files)
    peak = budget.source_peak(lk.snapshot, tmp_path / "p", lambda n: 0, lk.needs, set(), lk.cfg)
    prepared = int(model_bytes(lk.cfg, "int4") * DISK_SLACK)
    assert check.need == prepared + peak + small
    assert check.detail == (f"the int4 model {size(prepared)} + at most {size(peak)} of "
                            f"source files at a time + {size(small)} of small files "
                            f"({', '.join(f.name for f in small_files)})")
    assert check.line().startswith(f"Disk: needs {size(check.need)} at most ({check.detail})")


def test_another_quant_of_a_download_folder_names_the_download(hub, repo_folder, tmp_path,
                                                               capsys):
    """Asking a download-made int4 folder for int8 (loading, `plan --quant`) says to download
    it again as int8 into another folder: it has no source folder to prepare from."""
    from app.engine.loader import load_engine_model
    from app.errors import UserError

    out = tmp_path / "grok-2"
    run(look(Request(out, endpoint=hub.endpoint, prepared_only=True, quant="int4")))
    want = ("prepared as int4, not int8; download it again as int8 into another folder "
            "(`grok-desktop download --keep-prepared-only --quant int8 --out NEW_DIR`)")
    with pytest.raises(UserError, match=re.escape(want)):
        load_engine_model(out, quant="int8")
    assert main(["plan", "--model", str(out), "--quant", "int8"]) == 2
    assert "drop --quant, or download it again as int8" in capsys.readouterr().err
    reference = prepare(repo_folder, tmp_path / "reference", "int4")
    with pytest.raises(UserError, match="prepare it again with --quant int8 into another"):
        load_engine_model(reference, quant="int8")
