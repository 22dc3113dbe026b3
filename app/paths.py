"""Every directory the app writes to or reads its bundled files from.

User directories come from platformdirs; `GROK_DESKTOP_HOME=DIR` puts config, data, cache and
logs under DIR instead (tests and portable installs). They are private: created 0700 and put
back to 0700 (with one log line) when found wider, since chats and settings live there and
Debian homes are 0755. On Windows they sit in the user's profile, private already.
"""

from __future__ import annotations

import logging
import os
import stat
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


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

log = logging.getLogger(__name__)


def make_private(path: Path, mode: int) -> None:
    """Give `path` exactly `mode` if group or others have any access to it (POSIX only; one
    log line when it repairs). Errors are left to the caller's next real access."""
    if os.name != "posix":
        return
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & 0o077:
            path.chmod(mode)
            log.info("%s was readable by other users (mode %o); made it %o",
                        path, current, mode)
    except OSError:
        pass


def _ensure(path: Path) -> Path:
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    make_private(path, PRIVATE_DIR)
    return path


def torch_cache_env() -> None:
    """Point torch's compile caches (inductor, triton) into the app's cache folder instead of
    /tmp/torchinductor_<user>, which `import torch` creates. Call before torch is imported;
    a value the user set is kept."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir() / "triton"))


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
