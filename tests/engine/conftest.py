"""Fixtures for engine tests: tiny checkpoints in the official layout, written per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.config import Grok2Config
from app.engine.tiny import TINY_CONFIG, _random_weights, config_json, write_weights

SMALL = {**TINY_CONFIG, "vocab_size": 300, "attn_temperature_len": 4}


def write_weights_only(folder: Path, seed: int = 0, sharded: bool = True, **overrides) -> Path:
    """Config + weights, no tokenizer: enough for model tests (fast, no BPE training)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = Grok2Config.from_dict({**SMALL, **overrides})
    write_weights(folder, cfg, _random_weights(cfg, seed), sharded=sharded)
    (folder / "config.json").write_text(json.dumps(config_json(cfg)))
    return folder


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_weights_only(tmp_path / "grok2-tiny")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
