"""The Settings "Test connection" button and the check made before using a remote server.

`check_connection(config)` answers with one exact sentence for the user and a `kind`:

    ok           the server answers, the model is served and /v1/chat/completions exists
    bad_url      the address cannot be parsed
    unreachable  the host name does not resolve, the network is unreachable, TLS failed
    refused      the host answers but nothing listens on that port
    timeout      no connection, or no answer, within the connect timeout
    auth         HTTP 401/403: a key is needed, or the key is wrong
    not_openai   HTTP answers, but no /v1/models list or no /v1/chat/completions endpoint
    wrong_model  the model name is not among those /v1/models lists (they are named)
    busy, server_error   any other HTTP failure, with the server's own message

`connect(config)` runs the same check and returns a ready `RemoteBackend` (the model name
filled in from the list when left empty, the context length from the server's max_model_len),
or raises `RemoteError` with that sentence. It is what the worker's loader calls.
Both block for at most a few timeouts: call them from the engine thread, never the GUI thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import httpx

from app.backends.remote import RemoteBackend
from app.backends.transport import (
    RemoteConfig,
    RemoteError,
    open_request,
    parse_base_url,
    read_some,
    request_problem,
)


@dataclass(frozen=True)
class ConnectionReport:
    kind: str
    message: str  # one line for the user
    models: tuple[str, ...] = ()  # what the server lists
    model: str = ""  # the model the app will use
    context_length: int | None = None  # the server's max_model_len for it, if reported

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def check_connection(config: RemoteConfig) -> ConnectionReport:
    """Ask the server for its models, then make sure it has a chat-completions endpoint."""
    try:
        label = parse_base_url(config.base_url).label
        listing = _get_models(config)
        models = tuple(_model_ids(listing, label))
        model = config.model or models[0]
        if model not in models:
            return ConnectionReport(
                "wrong_model", f"{label} does not serve a model named '{model}'; it serves "
                f"{', '.join(repr(m) for m in models)}. Enter one of those names in Settings.",
                models)
        _probe_chat(config, model)
    except RemoteError as exc:
        return ConnectionReport(exc.kind, str(exc))
    context = _context_length(listing, model)
    size = f", context {context} tokens" if context else ""
    return ConnectionReport("ok", f"Connected to {label}: model '{model}' is ready{size}.",
                            models, model, context)


def connect(config: RemoteConfig) -> RemoteBackend:
    """A checked RemoteBackend, or RemoteError with the check's one-line message."""
    report = check_connection(config)
    if not report.ok:
        raise RemoteError(report.message, report.kind)
    return RemoteBackend(replace(config, model=report.model), report.context_length)


def _get_models(config: RemoteConfig) -> Any:
    opened = open_request(config, "GET", "models", read_timeout_s=config.connect_timeout_s)
    try:
        return _json(read_some(opened.response, 1 << 22, strict=True))
    except httpx.HTTPError as exc:  # the list was cut off, or stalled
        end = parse_base_url(config.base_url)
        raise request_problem(exc, end, config, config.connect_timeout_s) from exc
    finally:
        opened.close()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _model_ids(listing: Any, label: str) -> list[str]:
    items = listing.get("data") if isinstance(listing, dict) else None
    ids = [m["id"] for m in items or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if not isinstance(items, list):
        raise RemoteError(f"{label} answers HTTP, but GET /v1/models gave no model list: it is "
                          "not an OpenAI-compatible server (check the port).", "not_openai")
    if not ids:
        raise RemoteError(f"{label} serves no model yet (empty /v1/models): wait until it has "
                          "loaded the model.", "wrong_model")
    return ids


def _context_length(listing: Any, model: str) -> int | None:
    for item in listing["data"]:
        if isinstance(item, dict) and item.get("id") == model:
            value = item.get("max_model_len") or item.get("context_length")
            return value if isinstance(value, int) and value > 0 else None
    return None


def _probe_chat(config: RemoteConfig, model: str) -> None:
    """An empty conversation: a chat server rejects it with 400/422 (or answers it with at most
    one token); a server without the endpoint says 404/405."""
    body = {"model": model, "messages": [], "max_tokens": 1, "stream": False}
    try:
        open_request(config, "POST", "chat/completions", body,
                     read_timeout_s=max(config.connect_timeout_s, 10.0)).close()
    except RemoteError as exc:
        if exc.kind == "not_openai":
            label = parse_base_url(config.base_url).label
            raise RemoteError(f"{label} lists models but has no /v1/chat/completions: it is not "
                              "a chat-completions server.", "not_openai") from exc
        if exc.status in (400, 422):
            return  # the endpoint exists and validated our empty request
        raise
