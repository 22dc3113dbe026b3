"""app.atomic: the one atomic-write helper every writer uses."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import atomic
from app.atomic import atomic_file, atomic_path, atomic_write_bytes, atomic_write_text

POSIX = pytest.mark.skipif(os.name == "nt", reason="permission bits and folder fsync are POSIX")


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_replaces_the_content_whole(tmp_path):
    """A longer file is replaced by a shorter one completely (no tail of the old content)."""
    target = tmp_path / "a.json"
    atomic_write_text(target, "x" * 1000)
    atomic_write_text(target, "short ✓")
    assert target.read_text(encoding="utf-8") == "short ✓"
    atomic_write_bytes(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert _names(tmp_path) == ["a.json"]


def test_creates_the_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "f.txt"
    atomic_write_text(target, "hi")
    assert target.read_text() == "hi"


@given(data=st.binary(max_size=5000))
@settings(max_examples=30, deadline=None)
def test_any_bytes_round_trip(tmp_path_factory, data):
    target = tmp_path_factory.mktemp("rt") / "f.bin"
    target.write_bytes(b"old content")
    atomic_write_bytes(target, data)
    assert target.read_bytes() == data
    assert _names(target.parent) == ["f.bin"]


def test_failed_replace_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    """os.replace failing (a full disk, a locked file on Windows): the OSError reaches the
    caller unchanged, the target keeps its old content, no temporary file is left."""
    target = tmp_path / "settings.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError) as err:
        atomic_write_text(target, "new")
    assert err.value.errno == 28 and err.value.strerror == "No space left on device"
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["settings.json"]


def test_failure_while_streaming_leaves_no_partial_file(tmp_path):
    """An error halfway through a streamed write: no partial file under either name."""
    target = tmp_path / "layer-000.safetensors"
    with pytest.raises(OSError, match="disk full"), atomic_file(target) as f:
        f.write(b"half of it")
        raise OSError("disk full")
    assert _names(tmp_path) == []
    with atomic_file(target) as f:
        f.write(b"all ")
        f.write(b"of it")
    assert target.read_bytes() == b"all of it"


def test_failed_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", broken)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["f"]


def test_atomic_path_for_writers_that_take_a_name(tmp_path):
    """QPdfWriter-style: the writer gets a temporary name beside the target."""
    target = tmp_path / "chat.pdf"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"%PDF-1.4")
        assert not target.exists()
    assert target.read_bytes() == b"%PDF-1.4" and _names(tmp_path) == ["chat.pdf"]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"broken")
        raise RuntimeError("renderer failed")
    assert target.read_bytes() == b"%PDF-1.4" and _names(tmp_path) == ["chat.pdf"]


@POSIX
@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_mode_is_set_and_kept(tmp_path, mode):
    """The new file gets `mode` whatever the old file had (settings stay 0600)."""
    target = tmp_path / "f"
    target.write_text("old")
    os.chmod(target, 0o666)
    atomic_write_text(target, "new", mode=mode)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    atomic_write_text(target, "newer", mode=mode)
    assert stat.S_IMODE(target.stat().st_mode) == mode


@POSIX
def test_default_mode_is_an_ordinary_document(tmp_path):
    target = tmp_path / "export.md"
    atomic_write_text(target, "# hi")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


@POSIX
def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    """The data is fsynced before the rename, and the folder after it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(kind)
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert events == ["file", "replace", "folder"]


def test_remove_temps_removes_only_leftovers(tmp_path):
    (tmp_path / "layer-001.safetensors").write_bytes(b"done")
    (tmp_path / ".layer-002.safetensors.k3j4h5g6.tmp").write_bytes(b"killed halfway")
    (tmp_path / ".hidden").write_bytes(b"not ours")
    removed = atomic.remove_temps(tmp_path)
    assert [p.name for p in removed] == [".layer-002.safetensors.k3j4h5g6.tmp"]
    assert _names(tmp_path) == [".hidden", "layer-001.safetensors"]
