"""The suite never touches the user's own folders (tests/conftest.py's session fixture)."""

from __future__ import annotations

from pathlib import Path

from app import paths


def test_a_test_that_undoes_its_monkeypatches_still_writes_under_a_temporary_home(monkeypatch,
                                                                                  tmp_path):
    """monkeypatch.undo() reverts a suite's own GROK_DESKTOP_HOME too; the session-wide one
    underneath keeps every app folder out of the real home."""
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "per-test"))
    monkeypatch.undo()
    real_home = Path.home().resolve()
    for folder in (paths.config_dir(), paths.data_dir(), paths.cache_dir(), paths.log_dir()):
        assert "app-home" in str(folder), folder
        assert not folder.resolve().is_relative_to(real_home / ".config"), folder
        assert not folder.resolve().is_relative_to(real_home / ".cache"), folder
