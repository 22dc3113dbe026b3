"""Fixtures for the download tests: a tiny Grok-2 in the official layout, served by the
stand-in hub on 127.0.0.1, and the app's folders in a temporary home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.download.hub import StandInHub


@pytest.fixture(scope="session")
def repo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of the stand-in repo: config.json, tokenizer.tok.json, 15 TP-common and
    24 TP-00R safetensors files (app.engine.tiny), LICENSE and README.md."""
    folder = _stand_in_repo(tmp_path_factory.mktemp("repo"), "", seed=7)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs\n")
    return folder


def _stand_in_repo(parent: Path, note: str, **tiny) -> Path:
    """A tiny checkpoint (app.engine.tiny, `tiny` passed on) with the repo's LICENSE and a
    README.md saying `note`."""
    from app.engine.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(parent / "grok-2", n_merges=120, **tiny)
    (folder / "LICENSE").write_text("Grok 2 Community License Agreement (stand-in text)\n")
    (folder / "README.md").write_text(f"# grok-2 (stand-in{note})\n")
    return folder


@pytest.fixture
def hub(repo_folder: Path) -> Iterator[StandInHub]:
    server = StandInHub(repo_folder).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home




WIDE_MOE = 1024  # 8 ranks of 128: each expert shard converts on its own at int4/bf16


@pytest.fixture(scope="session")
def wide_repo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in repo with experts wide enough (moe_intermediate_size 1024) that each TP
    shard is whole int4 groups and packing blocks, as in Grok-2 (2048 per rank)."""
    return _stand_in_repo(tmp_path_factory.mktemp("wide"), ", wide experts", seed=11,
                          moe_intermediate_size=WIDE_MOE)


@pytest.fixture
def wide_hub(wide_repo_folder: Path) -> Iterator[StandInHub]:
    server = StandInHub(wide_repo_folder).start()
    yield server
    server.stop()
