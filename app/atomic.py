"""Atomic file writes: after a crash, a kill or a full disk the target holds either its old
content or the new one, never a mix.

Every writer in the app goes through here: settings.json, exports (Markdown, text, HTML, JSON,
PDF), `prepare`'s safetensors files and manifest, the tokenizer and benchmark caches.

The recipe: a temporary file `.NAME.XXXXXXXX.tmp` in the target's folder (a rename is atomic
only within one file system), its mode set before any byte is written, the data written,
flushed and fsynced, `os.replace` over the target, then the folder fsynced so the rename itself
is durable (POSIX; Windows cannot open a folder for fsync, and NTFS journals the rename). On any
failure the temporary file is removed and the OSError propagates unchanged: callers word it
(one line naming the file and the fix).

Modes are explicit, not derived from the umask (reading the umask means changing it, which
races with other threads): ordinary documents and caches 0644, settings 0600. On Windows only
the read-only bit exists; chmod errors there are ignored.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

DEFAULT_MODE = 0o644  # an ordinary document: the owner writes, everyone may read
TEMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = DEFAULT_MODE) -> None:
    """Replace `path` with `data` atomically and durably (see the module docstring).

    Creates the parent folder if needed. Raises OSError (disk full, permission denied, ...)
    with the temporary file removed and `path` untouched."""
    with atomic_file(path, mode) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, mode: int = DEFAULT_MODE,
                      encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` for text, encoded with `encoding` (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding), mode)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int = DEFAULT_MODE) -> Iterator[BinaryIO]:
    """A binary file to stream into; it replaces `path` when the block ends without an
    exception. If the block raises, the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        _chmod(fd, tmp, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = DEFAULT_MODE) -> Iterator[Path]:
    """A temporary path beside `path` for writers that want a file name (Qt's QPdfWriter).
    When the block ends without an exception the file is fsynced and replaces `path`;
    if it raises, the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        _chmod(fd, tmp, mode)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def remove_temps(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` (for the target `name`, a
    glob; every target by default) and return them. Only for a folder this process alone
    writes to: another writer's file in progress would be deleted too."""
    removed = []
    for p in Path(folder).glob(f".{name}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _chmod(fd: int, tmp: str, mode: int) -> None:
    with contextlib.suppress(OSError, NotImplementedError):  # Windows: no permission bits
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:
            os.chmod(tmp, mode)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable. Not on Windows (a folder cannot be opened there);
    file systems that refuse it (some network mounts) are ignored: the data is already
    replaced, this only narrows the window in which a power cut could undo the rename."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
