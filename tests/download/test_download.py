"""`grok-desktop download` against the stand-in hub: complete, interrupted and resumed (no byte
fetched twice), corrupt bytes, too little disk, 401, 429, the server going away, no network."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from app.cli import main
from app.download import budget, fetch, license
from app.download.fetch import Control, Stopped
from app.download.hub import DownloadError
from app.download.pipeline import Request, look, recent, run
from app.errors import StorageError
from tests.download.hub import StandInHub

WEIGHTS_ONLY = ".gitattributes"


@pytest.fixture(autouse=True)
def report_every_piece(monkeypatch):
    """Tiny files: report every piece received, so a stop can land mid-file."""
    monkeypatch.setattr(fetch, "REPORT_EVERY_S", 0.0)


def point_hf_endpoint_at(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """What HF_ENDPOINT=<hub> does when huggingface_hub is imported: both constants it sets."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def _request(hub: StandInHub, out: Path, **kw) -> Request:
    return Request(out, endpoint=hub.endpoint, **kw)


def _same_files(repo: Path, out: Path) -> None:
    want = {p.name for p in repo.iterdir() if p.is_file() and p.name != WEIGHTS_ONLY}
    got = {p.name for p in out.iterdir() if p.is_file()}
    assert got == want
    for name in want:
        assert (out / name).read_bytes() == (repo / name).read_bytes(), name


def test_complete_download(hub, repo_folder, tmp_path):
    """Every file arrives, byte-identical, each byte served exactly once; progress reports
    per-file and overall bytes, rate and an ETA, ending at the total."""
    seen = []
    lk = look(_request(hub, tmp_path / "grok-2"))
    folder = run(lk, on_progress=seen.append)
    _same_files(repo_folder, folder)
    assert hub.overlaps() == {}
    for name, data in hub.files.items():
        if name != WEIGHTS_ONLY:
            assert hub.bytes_served(name) == len(data), name
    assert seen[-1].done == seen[-1].total == lk.snapshot.total_bytes
    assert seen[-1].files_done == seen[-1].files_total == len(lk.snapshot.files)
    assert any(p.rate > 0 and p.eta_s is not None for p in seen)
    assert {p.file for p in seen if p.file} == {f.name for f in lk.snapshot.files}


def test_interrupted_then_resumed_fetches_no_byte_twice(hub, repo_folder, tmp_path):
    """Stopped mid-file (the app closing) after the hub sent half of a file, then a fresh run:
    it asks only for the rest of that file and for the files not started."""
    control = Control()
    name = "pytorch_model-00007-TP-003.safetensors"
    half = len(hub.files[name]) // 2
    hub.stall = (name, half)
    lk = look(_request(hub, tmp_path / "grok-2"))

    def stop_there(p):
        if p.file == name and p.file_done >= half:
            control.stop("cancelled")

    with pytest.raises(Stopped):
        run(lk, control, stop_there)
    part = tmp_path / "grok-2" / fetch.STATE_DIR / f"{name}.part"
    assert part.read_bytes() == hub.files[name][:half]  # the partial file is kept
    first = sum(hub.bytes_served(n) for n in hub.files)
    assert half <= first < lk.snapshot.total_bytes
    assert recent().out == tmp_path / "grok-2"  # offered for resuming after a restart
    folder = run(look(_request(hub, tmp_path / "grok-2")))
    assert recent() is None
    _same_files(repo_folder, folder)
    assert hub.overlaps() == {}
    assert sum(hub.bytes_served(n) for n in hub.files) == lk.snapshot.total_bytes
    assert hub.served[name] == [(0, half), (half, len(hub.files[name]))]


def test_pause_stops_a_stalled_connection_at_once(hub, repo_folder, tmp_path):
    """Pausing from another thread (the GUI) while the hub sends nothing closes the read: the
    download stops within a second, keeps what arrived, and resumes from there."""
    name = "pytorch_model-00004-TP-common.safetensors"
    hub.stall = (name, 1000)
    control, arrived, outcome = Control(), threading.Event(), []
    lk = look(_request(hub, tmp_path / "grok-2"))

    def watch(p):
        if p.file == name and p.file_done >= 1000:
            arrived.set()

    def download():
        try:
            run(lk, control, watch)
        except Stopped as stop:
            outcome.append(stop.reason)

    worker = threading.Thread(target=download)
    worker.start()
    assert arrived.wait(20)
    t0 = time.monotonic()
    control.stop("paused")
    worker.join(5)
    assert outcome == ["paused"] and time.monotonic() - t0 < 2
    hub.release.set()
    run(look(_request(hub, tmp_path / "grok-2")))
    assert hub.overlaps() == {}
    assert hub.served[name] == [(0, 1000), (1000, len(hub.files[name]))]


def test_corrupt_bytes_are_fetched_again(hub, repo_folder, tmp_path):
    """A file whose bytes do not match the hub's sha256 is discarded and fetched again."""
    name = "pytorch_model-00003-TP-common.safetensors"
    hub.corrupt[name] = 1
    folder = run(look(_request(hub, tmp_path / "grok-2")))
    _same_files(repo_folder, folder)
    assert hub.bytes_served(name) == 2 * len(hub.files[name])


def test_corrupt_twice_is_refused_and_not_kept(hub, tmp_path):
    name = "pytorch_model-00003-TP-common.safetensors"
    hub.corrupt[name] = 5
    with pytest.raises(DownloadError) as exc:
        run(look(_request(hub, tmp_path / "grok-2")))
    assert name in str(exc.value) and "sha256" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "grok-2" / name).exists()


def test_too_little_disk_is_refused_before_anything_is_written(hub, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(budget.shutil, "disk_usage", lambda p: Usage(10**12, 10**12, 1000))
    lk = look(_request(hub, tmp_path / "grok-2"))
    check = lk.disk()
    assert not check.ok and check.need == lk.snapshot.total_bytes and check.free == 1000
    with pytest.raises(StorageError) as exc:
        run(lk)
    assert "free disk" in str(exc.value) and "1000" not in str(exc.value).split("GB")[0][-3:]
    assert not (tmp_path / "grok-2").exists()
    assert not [p for m, p in hub.requests if m == "GET" and ".safetensors" in p]


def test_401_is_one_line(hub, tmp_path):
    hub.status = 401
    with pytest.raises(DownloadError) as exc:
        look(_request(hub, tmp_path / "grok-2"))
    msg = str(exc.value)
    assert "401" in msg and "HF_TOKEN" in msg and "\n" not in msg


def test_hf_token_from_the_environment_is_sent(hub, repo_folder, tmp_path, monkeypatch):
    """A gated repo: without a token one line saying how to log in; with HF_TOKEN it works."""
    hub.token = "hf_standin"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no login
    with pytest.raises(DownloadError, match="401.*HF_TOKEN"):
        look(_request(hub, tmp_path / "grok-2"))
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    folder = run(look(_request(hub, tmp_path / "grok-2")))
    _same_files(repo_folder, folder)


def test_403_and_429_are_one_line_each(hub, tmp_path):
    hub.status = 403
    with pytest.raises(DownloadError, match="403.*License"):
        look(_request(hub, tmp_path / "grok-2"))
    hub.status = 429
    with pytest.raises(DownloadError, match=r"429.*wait 30 s") as exc:
        look(_request(hub, tmp_path / "grok-2"))
    assert "\n" not in str(exc.value)


def test_unknown_repo_is_one_line(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"repository not found \(404\); check --repo"):
        look(Request(tmp_path / "g", repo="xai-org/grok-9", endpoint=hub.endpoint))


def test_no_network_is_one_line(tmp_path):
    dead = StandInHub(tmp_path)  # bound, never started: nothing answers
    endpoint = dead.endpoint
    dead.stop()
    with pytest.raises(DownloadError, match="cannot connect") as exc:
        look(Request(tmp_path / "grok-2", endpoint=endpoint))
    assert "\n" not in str(exc.value)


def test_server_gone_mid_way_keeps_the_partial_download(hub, repo_folder, tmp_path):
    """The hub disappears mid-file: one line; the next run (the hub back, on another address)
    resumes with the bytes that had arrived."""
    lk = look(_request(hub, tmp_path / "grok-2"))
    hub.cut_after = lk.snapshot.total_bytes // 3
    with pytest.raises(DownloadError) as exc:
        run(lk)
    msg = str(exc.value)
    assert ("connection" in msg or "cannot connect" in msg) and "kept" in msg
    assert "\n" not in msg
    before = {n: list(r) for n, r in hub.served.items()}
    again = StandInHub(repo_folder).start()
    try:
        folder = run(look(_request(again, tmp_path / "grok-2")))
    finally:
        again.stop()
    _same_files(repo_folder, folder)
    for name, ranges in before.items():
        again.served.setdefault(name, []).extend(ranges)
    assert again.overlaps() == {}


def test_full_disk_is_one_line_and_keeps_the_partial(hub, tmp_path, monkeypatch):
    lk = look(_request(hub, tmp_path / "grok-2"))
    real = fetch.os.fsync
    calls = []

    def full(fd):  # the disk fills up while weights arrive (the third weights file)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors.part"):
            calls.append(fd)
            if len(calls) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(fetch.os, "fsync", full)
    with pytest.raises(DownloadError, match="disk is full") as exc:
        run(lk)
    assert "kept" in str(exc.value) and "\n" not in str(exc.value)
    monkeypatch.setattr(fetch.os, "fsync", real)
    run(look(_request(hub, tmp_path / "grok-2")))
    assert hub.overlaps() == {}


def test_existing_verified_files_are_kept(hub, repo_folder, tmp_path):
    """Files already there (say from `hf download`) are hashed and kept, not fetched."""
    out = tmp_path / "grok-2"
    out.mkdir()
    shutil.copyfile(repo_folder / "config.json", out / "config.json")
    name = "pytorch_model-00001-TP-common.safetensors"
    shutil.copyfile(repo_folder / name, out / name)
    run(look(_request(hub, out)))
    assert hub.bytes_served(name) == 0 and hub.bytes_served("config.json") == 0


def test_a_damaged_file_already_there_is_fetched_again(hub, repo_folder, tmp_path):
    """A file of the right size but wrong bytes (a broken earlier download) is not loaded:
    it is fetched again and replaced."""
    out = tmp_path / "grok-2"
    out.mkdir()
    name = "pytorch_model-00010-TP-common.safetensors"
    (out / name).write_bytes(bytes(len(hub.files[name])))
    run(look(_request(hub, out)))
    assert (out / name).read_bytes() == (repo_folder / name).read_bytes()
    assert hub.bytes_served(name) == len(hub.files[name])


def test_cli_downloads_with_the_license_accepted_once(hub, repo_folder, tmp_path, monkeypatch,
                                                      capsys):
    point_hf_endpoint_at(hub, monkeypatch)
    out = tmp_path / "grok-2"
    assert main(["download", "--out", str(out)]) == 2  # not accepted, no terminal: refused
    err = capsys.readouterr().err
    assert "Grok 2 Community License" in err and "--accept-license" in err
    assert not out.exists()
    assert main(["download", "--out", str(out), "--accept-license"]) == 0
    captured = capsys.readouterr()
    assert "Plan for this machine" in captured.err or "Does not fit" in captured.err
    assert "Disk: needs" in captured.err
    assert f"--model {out}" in captured.out
    assert license.accepted()
    _same_files(repo_folder, out)
    assert main(["download", "--out", str(out)]) == 0  # accepted once; all there: no bytes
    assert hub.overlaps() == {}


def test_cli_error_is_one_line_exit_2(hub, tmp_path, monkeypatch, capsys):
    point_hf_endpoint_at(hub, monkeypatch)
    license.accept()
    hub.status = 401
    assert main(["download", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grok-desktop: error:") and "401" in err[0]
