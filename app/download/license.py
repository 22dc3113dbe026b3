"""The Grok 2 Community License: shown with its link before the first download, accepted once.

The acceptance is recorded in the app's config folder (`licenses.json`: which license, when,
for which repo), so the question is asked once per user, not once per download. The text is the
LICENSE file of xai-org/grok-2; the app shows its title and link, and does not paraphrase it.
"""

from __future__ import annotations

import json
import time

from app import paths
from app.atomic import atomic_write_text
from app.download.hub import LICENSE_URL, REPO

LICENSE_ID = "grok-2-community-license"
RECORD = "licenses.json"
TITLE = "Grok 2 Community License Agreement"
SUMMARY = (
    f"The Grok-2 weights ({REPO}) are published by xAI under the {TITLE}. Downloading and "
    f"using them means accepting its terms: read it at {LICENSE_URL} (the LICENSE file is "
    "also downloaded into the model folder)."
)


def _path():
    return paths.config_dir() / RECORD


def accepted() -> bool:
    """True once the user accepted the Grok 2 Community License on this account."""
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get(LICENSE_ID), dict)


def accept() -> None:
    """Record the acceptance (atomically; other licenses in the file are kept)."""
    path = _path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[LICENSE_ID] = {"url": LICENSE_URL, "repo": REPO,
                        "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(path, json.dumps(data, indent=1))
