"""Every directory the app writes to or reads its bundled files from.

User directories come from platformdirs; `GROK_DESKTOP_HOME=DIR` puts config, data, cache and
logs under DIR instead (tests and portable installs).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from app import APP_ID

_HOME_ENV = "GROK_DESKTOP_HOME"


def _base(kind: str) -> Path:
    home = os.environ.get(_HOME_ENV)
    if home:
        return Path(home).expanduser() / kind
    getter = {
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "cache": platformdirs.user_cache_dir,
        "logs": platformdirs.user_log_dir,
    }[kind]
    return Path(getter(APP_ID, appauthor=False))


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    return _ensure(_base("config"))


def data_dir() -> Path:
    return _ensure(_base("data"))


def cache_dir() -> Path:
    return _ensure(_base("cache"))


def log_dir() -> Path:
    return _ensure(_base("logs"))


def database_path() -> Path:
    return data_dir() / "conversations.sqlite3"


def settings_path() -> Path:
    return config_dir() / "settings.json"


def demo_model_dir() -> Path:
    """Where the built-in tiny demo checkpoint is written on first use."""
    return cache_dir() / "demo-model"


def resources_dir() -> Path:
    """Bundled icons, themes and demo text: `app/resources` when installed, else the repo's."""
    installed = Path(__file__).resolve().parent / "resources"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "resources"
