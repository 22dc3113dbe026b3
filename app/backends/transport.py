"""Reaching a remote OpenAI-compatible server, and saying exactly what went wrong.

`RemoteConfig` is where the server is and how long to wait; `open_request` sends one request
and returns it only when the answer is 2xx, else raises `RemoteError`, whose `kind` and one-line
message name the problem (unknown host, refused, timeout, bad key, not an OpenAI server, HTTP
error with the server's own words). `RemoteDisconnected` is the error for a reply cut short.
Stdlib only (http.client); used by remote.py and connection_test.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from app import __version__
from app.errors import UserError
from app.messages import GenerationStats

# Grok-2 ends a turn with <|separator|>, but SGLang stops on <|eos|> only
# (docs/grok2.md#stop-rules), so chat requests name the end-of-turn markers as stop strings, as
# the model card's test client does.
GROK2_STOPS = ("<|separator|>", "<|eos|>", "\nHuman:")
POLL_S = 0.05  # how often helper threads look at a cancel flag or a socket


@dataclass(frozen=True)
class RemoteConfig:
    """Where the remote server is and how long to wait for it (the Settings fields)."""

    base_url: str  # "http://gpu-server:30000"; a trailing "/v1" is accepted
    model: str = ""  # as the server lists it in /v1/models; "" takes the first one listed
    api_key: str = ""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0  # longest silence while a reply streams (a long prefill)
    context_length: int = 131072  # used when the server does not report max_model_len
    continue_via: Literal["chat", "completions"] = "chat"
    stop: tuple[str, ...] = GROK2_STOPS

    def __post_init__(self) -> None:
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be > 0 seconds")
        if self.continue_via not in ("chat", "completions"):
            raise ValueError("continue_via must be 'chat' or 'completions'")


class RemoteError(UserError):
    """The remote server could not be used. `kind`: bad_url, unreachable, refused, timeout,
    auth, not_openai, wrong_model, busy, server_error, dropped."""

    continuable = False

    def __init__(self, message: str, kind: str = "server_error", status: int | None = None,
                 ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status  # the HTTP status, when the server answered one


class RemoteDisconnected(RemoteError):
    """The reply stopped before the server finished it; the text so far is good to keep."""

    continuable = True  # the worker stores the reply `interrupted`, not `error`

    def __init__(self, message: str, stats: GenerationStats) -> None:
        super().__init__(message, "dropped")
        self.stats = stats


# ---- addresses and requests ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    prefix: str  # path before "/v1" (a reverse proxy may add one)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def path(self, tail: str) -> str:
        return f"{self.prefix}/v1/{tail}"


def parse_base_url(url: str) -> Endpoint:
    text = url.strip()
    if text and "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1
            or any(c.isspace() or not c.isprintable() for c in text)):
        raise RemoteError(f"'{url}' is not a server address; write it like "
                          "http://gpu-server:30000", "bad_url")
    prefix = parts.path.rstrip("/").removesuffix("/v1")
    return Endpoint(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                    prefix)


class RequestCancelled(Exception):
    """`cancel` was set before the server answered (open_request's caller finishes quietly)."""


@dataclass
class Opened:
    """A request whose response headers said 2xx. Until `close()`, setting the `cancel` given
    to open_request shuts the socket down, so a blocked read returns at once."""

    conn: http.client.HTTPConnection
    response: http.client.HTTPResponse
    watch: threading.Event

    def close(self) -> None:
        self.watch.set()
        self.response.close()
        self.conn.close()


def open_request(config: RemoteConfig, method: str, tail: str, body: Any = None,
                 read_timeout_s: float | None = None,
                 cancel: threading.Event | None = None) -> Opened:
    """Send one request; RemoteError (with its kind) unless the answer is 2xx, and
    RequestCancelled if `cancel` is set while waiting for the answer (a long prefill)."""
    end = parse_base_url(config.base_url)
    kind = http.client.HTTPSConnection if end.scheme == "https" else http.client.HTTPConnection
    conn = kind(end.host, end.port, timeout=config.connect_timeout_s)
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        raise connect_problem(exc, end, config.connect_timeout_s) from exc
    sock = conn.sock
    sock.settimeout(read_timeout_s or config.read_timeout_s)
    watch = (call_when(cancel.is_set, lambda: shutdown(sock)) if cancel is not None
             else threading.Event())
    headers = {"User-Agent": f"grok-desktop/{__version__}", "Accept": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    data = None
    if body is not None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, end.path(tail), body=data, headers=headers)
        response = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        watch.set()
        conn.close()
        if cancel is not None and cancel.is_set():
            raise RequestCancelled from exc
        if isinstance(exc, TimeoutError):
            raise RemoteError(f"{end.label} accepted the connection but sent no answer within "
                              f"{sock.gettimeout():g} s", "timeout") from exc
        raise RemoteError(f"{end.label} closed the connection without an answer ({exc}); "
                          "is it an HTTP server?", "not_openai") from exc
    if not 200 <= response.status < 300:
        watch.set()
        text = _read_some(response)
        conn.close()
        raise http_problem(response.status, text, end, tail, bool(config.api_key))
    return Opened(conn, response, watch)


def connect_problem(exc: OSError, end: Endpoint, timeout_s: float) -> RemoteError:
    """The error for a connection that could not be made."""
    if isinstance(exc, socket.gaierror):
        return RemoteError(f"Cannot find the host '{end.host}': check the server address.",
                           "unreachable")
    if isinstance(exc, ConnectionRefusedError):
        return RemoteError(f"{end.label} refused the connection: nothing listens on port "
                           f"{end.port}. Is the server running, and is the port right?",
                           "refused")
    if isinstance(exc, TimeoutError):
        return RemoteError(f"No answer from {end.label} within {timeout_s:g} s: the host is down "
                           "or unreachable, or a firewall drops the connection.", "timeout")
    if isinstance(exc, ssl.SSLError):
        return RemoteError(f"The TLS handshake with {end.label} failed ({exc.reason}): use "
                           "http:// if the server has no TLS, or check its certificate.",
                           "unreachable")
    return RemoteError(f"Cannot reach {end.label}: {exc.strerror or exc}.", "unreachable")


def http_problem(status: int, text: str, end: Endpoint, tail: str, has_key: bool) -> RemoteError:
    """The error for an HTTP answer that is not 2xx (`text`: its body)."""
    said = server_message(text)
    if status in (401, 403):
        if not has_key:
            message = f"{end.label} requires an API key (HTTP {status}): enter it in Settings."
        else:
            message = f"{end.label} rejected the API key (HTTP {status}): check it in Settings."
        return RemoteError(message, "auth", status)
    if status in (404, 405) and "model" not in said.lower():  # vLLM: "model x does not exist"
        return RemoteError(f"{end.label} has no {end.path(tail)} (HTTP {status}): it is not an "
                           "OpenAI-compatible server, or the address needs another port or "
                           "path.", "not_openai", status)
    if status in (429, 503):
        return RemoteError(f"{end.label} is busy (HTTP {status}): "
                           f"{said or 'try again in a moment'}.", "busy", status)
    reason = said or http.client.responses.get(status, "error")
    return RemoteError(f"{end.label} answered HTTP {status}: {reason}", "server_error", status)


def server_message(text: str) -> str:
    """The error text of an OpenAI/SGLang/FastAPI error body, on one line ("" if none)."""
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    if isinstance(data, dict):
        inner = data.get("error")
        said = inner.get("message") if isinstance(inner, dict) else inner
        said = said or data.get("message") or data.get("detail")
        if said:
            return " ".join(str(said).split())[:300]
    return ""


def _read_some(response: http.client.HTTPResponse, limit: int = 65536) -> str:
    try:
        return response.read(limit).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def shutdown(sock: socket.socket) -> None:
    """Shut both directions: a read blocked in another thread returns at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def call_when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Event:
    """Run `action` once, on a helper thread, as soon as `condition()` holds; polls every
    POLL_S until the returned event is set."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if condition():
                action()
                return

    threading.Thread(target=watch, name="watch", daemon=True).start()
    return done
