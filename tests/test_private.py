"""Private by default: the app's folders are 0700 and the database with its WAL/SHM files and
backups 0600, created that way and repaired on start when found wider (POSIX modes)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import pytest

from app import paths
from app.store.store import Store

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)  # what a Debian desktop session has
    yield tmp_path / "home"
    os.umask(old)


def test_new_folders_and_database_are_private(home):
    """A fresh start creates every folder 0700 and the database (and its WAL/SHM) 0600."""
    for folder in (paths.config_dir(), paths.data_dir(), paths.cache_dir(), paths.log_dir()):
        assert mode(folder) == 0o700, folder
    db = paths.database_path()
    with Store.open(db) as store:
        store.create_conversation("secret")
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_wider_modes_are_repaired_on_start_with_a_log_line_each(home, caplog):
    """Folders and files an older version left 0755/0644 are put back, and it is logged."""
    data = home / "data"
    data.mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    db = data / "conversations.sqlite3"
    with Store.open(db):
        pass
    db.chmod(0o644)
    with caplog.at_level(logging.INFO, logger="app.paths"):
        assert paths.data_dir() == data
        with Store.open(db):
            for suffix in ("-wal", "-shm"):  # SQLite made them with the 0644 it found
                assert mode(db.with_name(db.name + suffix)) == 0o600
    assert mode(data) == 0o700 and mode(db) == 0o600
    repaired = {r.getMessage().split(" was readable")[0] for r in caplog.records
                if "readable by other users" in r.getMessage()}
    assert {str(data), str(db)} <= repaired


def test_settings_file_stays_private(home):
    from app.settings import Settings, save_settings

    assert mode(save_settings(Settings())) == 0o600


def test_cli_keeps_torch_caches_in_the_app_cache(home, tmp_path):
    """`import torch` makes /tmp/torchinductor_<user>; the CLI points it into the cache."""
    code = ("import os, sys; from app.cli import main; "
            "main(['list']); print(os.environ['TORCHINDUCTOR_CACHE_DIR'])")
    env = {**os.environ, "GROK_DESKTOP_HOME": str(home)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip().splitlines()[-1]
    assert out == str(home / "cache" / "torchinductor")
