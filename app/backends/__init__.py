"""Engines that live elsewhere: a remote OpenAI-compatible server (SGLang, vLLM, our `serve`).

`connect(config)` checks the server and returns a `RemoteBackend`, which the worker holds in
place of a local Engine (same interface, same events). httpx, no torch, no Qt.
"""

from __future__ import annotations

from app.backends.connection_test import ConnectionReport, check_connection, connect
from app.backends.remote import RemoteBackend
from app.backends.transport import RemoteConfig, RemoteDisconnected, RemoteError

__all__ = [
    "ConnectionReport",
    "RemoteBackend",
    "RemoteConfig",
    "RemoteDisconnected",
    "RemoteError",
    "check_connection",
    "connect",
]
