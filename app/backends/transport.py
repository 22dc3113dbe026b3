"""Reaching a remote OpenAI-compatible server, and saying exactly what went wrong.

`RemoteConfig` is where the server is and how long to wait; `open_request` sends one request
and returns it only when the answer is 2xx, else raises `RemoteError`, whose `kind` and one-line
message name the problem (unknown host, refused, timeout, bad key, not an OpenAI server, HTTP
error with the server's own words). `RemoteDisconnected` is the error for a reply cut short.
Used by remote.py and connection_test.py.

The HTTP client is httpx, one client and one connection per request, with `trust_env`: the
HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY variables are honoured, and certificates are
checked against certifi's CA bundle (or SSL_CERT_FILE / SSL_CERT_DIR when set), which the
frozen macOS and Windows bundles carry, as httpx does by default.

Stop: a `CancelEvent` (app.messages) runs callbacks in the thread that sets it. `open_request`
registers one that shuts the request's socket down (the socket is taken from httpcore's
`trace` extension as the connection is made, the TLS one for https), so a read blocked in a
long prefill (SGLang sends its headers only after it) or in a silent stream returns at once;
no thread polls the flag. Shutting down, not closing: on Linux, close() does not wake a recv()
blocked in another thread. httpx timeouts and a flag checked per event were the alternative,
but Stop would then wait for the next event, minutes during the prefill of a long prompt. With
a plain threading.Event the flag is only checked at each server-sent event.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from app import __version__
from app.errors import UserError
from app.messages import GenerationStats

# Grok-2 ends a turn with <|separator|>, but SGLang stops on <|eos|> only
# (docs/grok2.md#stop-rules), so chat requests name the end-of-turn markers as stop strings, as
# the model card's test client does.
GROK2_STOPS = ("<|separator|>", "<|eos|>", "\nHuman:")
POLL_S = 0.05  # how often the API server's helper threads look at a flag or a socket


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

    def url(self, tail: str) -> httpx.URL:
        return httpx.URL(scheme=self.scheme, host=self.host, port=self.port, path=self.path(tail))


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
    """A request whose response headers said 2xx; `response` streams its body. Until
    `close()`, setting the `cancel` given to open_request (a CancelEvent) shuts the socket
    down, so a blocked read returns at once."""

    client: httpx.Client
    response: httpx.Response
    forget: Callable[[], None]  # unregisters the cancel callback

    def close(self) -> None:
        self.forget()
        self.response.close()
        self.client.close()


class _Connection:
    """What httpcore reports about the request's connection (its `trace` extension): the host
    it dialled (the proxy's, when one is used) and the socket to shut down on Stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.dialled: tuple[str, int] | None = None
        self.stopped = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            self.dialled = (str(info.get("host")), int(info.get("port") or 0))
            return
        get_extra_info = getattr(info.get("return_value"), "get_extra_info", None)
        if not event.endswith(".complete") or get_extra_info is None:
            return
        sock = get_extra_info("socket")  # after start_tls: the TLS socket
        if isinstance(sock, socket.socket):
            with self.lock:
                self.sock, stopped = sock, self.stopped
            if stopped:
                shutdown(sock)

    def stop(self) -> None:
        """Called in the thread that sets the cancel event."""
        with self.lock:
            self.stopped, sock = True, self.sock
        if sock is not None:
            shutdown(sock)


def on_cancel(cancel: threading.Event | None, action: Callable[[], None]) -> Callable[[], None]:
    """Run `action` when `cancel` is set, if it can tell (a CancelEvent); returns the
    unregister function (a no-op for a plain Event, whose flag the caller checks itself)."""
    register = getattr(cancel, "on_set", None)
    return register(action) if register is not None else (lambda: None)


def open_request(config: RemoteConfig, method: str, tail: str, body: Any = None,
                 read_timeout_s: float | None = None,
                 cancel: threading.Event | None = None, accept: str = "application/json",
                 ) -> Opened:
    """Send one request; RemoteError (with its kind) unless the answer is 2xx, and
    RequestCancelled if `cancel` is set while waiting for the answer (a long prefill).
    `read_timeout_s` (default: the config's) is the longest silence, headers or body."""
    end = parse_base_url(config.base_url)
    read_s = read_timeout_s or config.read_timeout_s
    timeout = httpx.Timeout(read_s, connect=config.connect_timeout_s,
                            pool=config.connect_timeout_s)
    headers = {"User-Agent": f"grok-desktop/{__version__}", "Accept": accept}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    data = None
    if body is not None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    client = httpx.Client(timeout=timeout, trust_env=True, follow_redirects=False)
    connection = _Connection()
    forget = on_cancel(cancel, connection.stop)
    try:
        request = client.build_request(method, end.url(tail), content=data, headers=headers,
                                       extensions={"trace": connection.trace})
        response = client.send(request, stream=True)
    except httpx.HTTPError as exc:
        forget()
        client.close()
        if cancel is not None and cancel.is_set():
            raise RequestCancelled from exc
        raise request_problem(exc, end, config, read_s, connection.dialled) from exc
    except BaseException:
        forget()
        client.close()
        raise
    if not 200 <= response.status_code < 300:
        forget()
        text = read_some(response).decode("utf-8", "replace")
        response.close()
        client.close()
        raise http_problem(response.status_code, text, end, tail, bool(config.api_key))
    return Opened(client, response, forget)


def request_problem(exc: httpx.HTTPError, end: Endpoint, config: RemoteConfig, read_s: float,
                    dialled: tuple[str, int] | None = None) -> RemoteError:
    """The error for a request that got no HTTP answer (`dialled`: the host:port connected
    to, which names the proxy when the environment sets one)."""
    if isinstance(exc, httpx.ProxyError):
        return RemoteError(f"The proxy refused to connect to {end.label} ({exc}): check "
                           "HTTPS_PROXY / HTTP_PROXY and NO_PROXY.", "unreachable")
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        cause = _os_error(exc) or (TimeoutError() if isinstance(exc, httpx.ConnectTimeout)
                                   else OSError(str(exc)))
        if dialled is not None and dialled != (end.host, end.port):
            where = f"{dialled[0]}:{dialled[1]}"
            detail = cause.strerror or str(cause) or "no answer"
            return RemoteError(f"Cannot reach the proxy {where} on the way to {end.label} "
                               f"({detail}): check HTTPS_PROXY / HTTP_PROXY, or list the host "
                               "in NO_PROXY.", "unreachable")
        return connect_problem(cause, end, config.connect_timeout_s)
    if isinstance(exc, httpx.TimeoutException):
        return RemoteError(f"{end.label} accepted the connection but sent no answer within "
                           f"{read_s:g} s", "timeout")
    return RemoteError(f"{end.label} closed the connection without an answer ({exc}); "
                       "is it an HTTP server?", "not_openai")


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError under an httpx error (httpx wraps httpcore's, which wraps the socket's)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        todo += [e.__cause__, e.__context__, *(a for a in e.args if isinstance(a, BaseException))]
    return None


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
    reason = said or httpx.codes.get_reason_phrase(status) or "error"
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


def read_some(response: httpx.Response, limit: int = 65536, strict: bool = False) -> bytes:
    """Up to `limit` bytes of a response body. A failing connection ends it with what arrived,
    or, if `strict`, raises its httpx.HTTPError."""
    data = b""
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= limit:
                break
    except httpx.HTTPError:
        if strict:
            raise
    return data[:limit]


def shutdown(sock: socket.socket) -> None:
    """Shut both directions: a read blocked in another thread returns at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def call_when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Event:
    """Run `action` once, on a helper thread, as soon as `condition()` holds; polls every
    POLL_S until the returned event is set. (The API server's check for a client that left;
    the remote backend needs no such thread.)"""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if condition():
                action()
                return

    threading.Thread(target=watch, name="watch", daemon=True).start()
    return done
