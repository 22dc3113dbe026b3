"""Resumable, verified download of a hub snapshot into a folder.

Layout of the target folder while downloading:
    NAME                       a file that arrived whole and matched the hub's checksum
    .grok-download/NAME.part   the bytes of NAME received so far (kept across restarts)
    .grok-download/state.json  the commit and, per verified file, size, checksum and mtime
                               (replaced atomically)
A rerun asks only for the bytes after the end of each `.part` (HTTP Range), so no byte is
fetched twice. A file counts only once its size and sha256 (LFS) or git blob sha1 (small files)
match the hub's; a mismatch deletes it and fetches it again once, then stops with one line.
A file already in the folder (say from `hf download`) is hashed and kept when it matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.atomic import atomic_write_text
from app.download.hub import DownloadError, RemoteFile, Snapshot, hub_error, open_range

STATE_DIR = ".grok-download"
STATE = "state.json"
CHUNK = 1 << 20
REPORT_EVERY_S = 0.1  # progress callbacks at most this often (and at each file's end)
ATTEMPTS = 2  # a file whose checksum fails is fetched again once, then refused


@dataclass(frozen=True)
class Progress:
    """What the views show. Bytes; `rate` in bytes/s over this session; `eta_s` None until a
    rate is known."""

    stage: str  # "downloading", "verifying", "preparing", "done"
    file: str
    file_done: int
    file_size: int
    done: int  # bytes of the snapshot on disk (verified files + partial files)
    total: int
    rate: float = 0.0
    eta_s: float | None = None
    files_done: int = 0
    files_total: int = 0


ProgressFn = Callable[[Progress], None]


class Stopped(Exception):
    """The user paused or cancelled; what was received is kept."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Control:
    """Pause or cancel a download from another thread: checked after each piece received, and
    the response being read is closed at once, so a stalled connection stops too."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._close: Callable[[], None] | None = None

    def stop(self, reason: str = "paused") -> None:
        self.reason = reason
        self._event.set()
        close = self._close
        if close is not None:
            with contextlib.suppress(Exception):  # the reader sees the stop either way
                close()

    def reading(self, close: Callable[[], None] | None) -> None:
        """The download thread names how to abort the read in progress (None: none)."""
        self._close = close
        if close is not None and self._event.is_set():
            with contextlib.suppress(Exception):
                close()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Stopped(self.reason)


def _abort(response) -> Callable[[], None]:
    """How another thread ends a blocked read of `response`: shut its socket down (a plain
    close does not wake a thread waiting in recv); the reader then sees an error, notices the
    stop and closes the response itself. Without a socket to reach, the stop is seen when the
    next bytes arrive (or the read times out)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None

    def abort() -> None:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)

    return abort


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _git_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def matches(path: Path, remote: RemoteFile) -> bool:
    """The file has the hub's size and checksum (sha256 for LFS files, else git blob sha1)."""
    if path.stat().st_size != remote.size:
        return False
    if remote.sha256:
        return _sha256(path) == remote.sha256
    if remote.blob_id:
        return _git_sha1(path) == remote.blob_id
    return True


class Downloader:
    """Fetches files of `snapshot` into `folder`, resumably; reports `Progress`."""

    def __init__(self, snapshot: Snapshot, folder: str | Path, *, token: str | bool | None = None,
                 control: Control | None = None, on_progress: ProgressFn | None = None) -> None:
        self.snapshot, self.folder = snapshot, Path(folder)
        self.token, self.control = token, control or Control()
        self.on_progress = on_progress
        self.work = self.folder / STATE_DIR  # created on the first write
        self.state = self._load_state()
        self.fetched = 0  # bytes received from the network in this session
        self._started = time.monotonic()
        self._last_report = 0.0
        self.stage = "downloading"
        self._base_done = self._current = 0
        self._mismatch: set[tuple[str, int, int]] = set()  # (name, size, mtime) hashed, wrong

    # state -------------------------------------------------------------------------------
    def _load_state(self) -> dict:
        path = self.work / STATE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or state.get("commit") != self.snapshot.commit:
                raise ValueError
            state.setdefault("files", {})
            return state
        except (OSError, ValueError):
            return {"repo": self.snapshot.repo, "commit": self.snapshot.commit, "files": {}}

    def save_state(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.work / STATE, json.dumps(self.state, indent=1))

    def part_path(self, name: str) -> Path:
        return self.work / f"{name}.part"

    def is_verified(self, name: str) -> bool:
        """Recorded as verified and still the same file (size and mtime, else re-hashed)."""
        entry, path = self.state["files"].get(name), self.folder / name
        if not path.is_file():
            return False
        stat = path.stat()
        if entry and stat.st_size == entry["size"] and stat.st_mtime_ns == entry["mtime_ns"]:
            return True
        key = (name, stat.st_size, stat.st_mtime_ns)
        if key in self._mismatch:
            return False
        if matches(path, self.snapshot.file(name)):  # a changed mtime, or a file there before
            self._record(name)                       # us (say from `hf download`)
            return True
        self._mismatch.add(key)  # fetched again (into the partial file, then replaced)
        return False

    def _record(self, name: str) -> None:
        stat = (self.folder / name).stat()
        self.state["files"][name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        self.save_state()

    def consume(self, name: str) -> None:
        """Delete a verified file whose contents were prepared; it counts as received."""
        self.state.setdefault("consumed", []).append(name)
        self.state["files"].pop(name, None)
        self.save_state()
        (self.folder / name).unlink(missing_ok=True)

    def seed(self, name: str, data: bytes) -> None:
        """Start the partial file of `name` with its first bytes, read before the download
        started (app.download.budget.prefetch), unless a partial file is already there."""
        if self.is_verified(name) or name in self.state.setdefault("consumed", []):
            return
        part = self.part_path(name)
        if part.is_file() and part.stat().st_size >= len(data):
            return
        self.work.mkdir(parents=True, exist_ok=True)
        with part.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def on_disk(self, name: str) -> int:
        """Bytes of `name` received: the whole file if verified (or prepared and deleted),
        else the partial file."""
        if name in self.state.setdefault("consumed", []):
            return self.snapshot.file(name).size
        if name in self.state["files"] and (self.folder / name).is_file():
            return self.state["files"][name]["size"]
        part = self.part_path(name)
        return part.stat().st_size if part.is_file() else 0

    # progress ----------------------------------------------------------------------------
    def report(self, name: str, file_done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.on_progress or (not force and now - self._last_report < REPORT_EVERY_S):
            return
        self._last_report = now
        files = self.snapshot.files
        done = sum(self.on_disk(f.name) for f in files) if force else self._done_estimate
        elapsed = max(now - self._started, 1e-6)
        rate = self.fetched / elapsed if self.fetched else 0.0
        left = self.snapshot.total_bytes - done
        eta = left / rate if rate > 0 else None
        size = self.snapshot.file(name).size if name else 0
        self.on_progress(Progress(self.stage, name, file_done, size, done,
                                  self.snapshot.total_bytes, rate, eta,
                                  sum(1 for f in files if f.name in self.state["files"]
                                      or f.name in self.state.get("consumed", ())),
                                  len(files)))

    @property
    def _done_estimate(self) -> int:
        return self._base_done + self._current

    # fetching ----------------------------------------------------------------------------
    def fetch(self, name: str, upto: int | None = None) -> Path:
        """Make `name` present and verified (or, with `upto`, its first `upto` bytes present
        in the partial file, for reading a header). Returns the file's path (the partial
        file's with `upto`). Raises DownloadError, Stopped."""
        remote = self.snapshot.file(name)
        final = self.folder / name
        if self.is_verified(name):
            return final
        for attempt in range(ATTEMPTS):
            part = self._receive(remote, remote.size if upto is None else min(upto, remote.size))
            if upto is not None and upto < remote.size:
                return part
            if matches(part, remote):
                os.replace(part, final)
                self._record(name)
                self.report(name, remote.size, force=True)
                return final
            part.unlink()
            if attempt + 1 == ATTEMPTS:
                what = f"sha256 {remote.sha256}" if remote.sha256 else f"git blob {remote.blob_id}"
                raise DownloadError(f"{name}: the bytes received twice do not match the hub's "
                                    f"{what} (size {remote.size:,}); the file was not kept. "
                                    "Check the network or proxy, then run the download again")
        raise AssertionError("unreachable")

    def _receive(self, remote: RemoteFile, end: int) -> Path:
        part = self.part_path(remote.name)
        have = part.stat().st_size if part.is_file() else 0
        if have > remote.size:  # not this commit's file: start over
            part.unlink()
            have = 0
        self._base_done = sum(self.on_disk(f.name) for f in self.snapshot.files
                              if f.name != remote.name)
        self._current = have
        self.control.check()
        if have >= end:
            return part
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            with open_range(self.snapshot, remote.name, have, end if end < remote.size else None,
                            self.token) as response:
                self.control.reading(_abort(response))
                if response.status_code == 200 and have:  # the server ignored Range
                    have = 0
                    mode = "wb"
                else:
                    mode = "ab"
                with part.open(mode) as f:
                    for block in response.iter_bytes():  # as it arrives: none held back
                        room = end - have
                        block = block[:room]
                        f.write(block)
                        have += len(block)
                        self.fetched += len(block)
                        self._current = have
                        self.report(remote.name, have)
                        if have >= end:
                            break
                        if self.control.stopped:
                            f.flush()
                            os.fsync(f.fileno())
                            self.control.check()
                    f.flush()
                    os.fsync(f.fileno())
        except (DownloadError, Stopped):
            raise
        except Exception as exc:  # a read error, a full disk: one line
            if self.control.stopped:  # the pause closed the connection mid-read
                raise Stopped(self.control.reason) from exc
            raise hub_error(exc, remote.name) from exc
        finally:
            self.control.reading(None)
        if have < end:
            raise DownloadError(f"{remote.name}: the connection closed after {have:,} of "
                                f"{end:,} bytes; the partial download is kept; run the "
                                "download again to resume")
        return part

    def fetch_all(self, names: list[str] | None = None) -> None:
        """Fetch and verify every file (or `names`), small files first."""
        names = names if names is not None else [f.name for f in self.snapshot.files]
        for name in sorted(names, key=lambda n: (self.snapshot.file(n).size, n)):
            self.fetch(name)
