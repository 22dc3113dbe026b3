"""Who may talk to the local API server: the Host and Origin checks (no starlette, no torch).

A web page in the user's browser can send requests to http://127.0.0.1:PORT. Two rules keep
it out (browser access is opt-in, per origin):

- **Host** (DNS rebinding): a page on evil.example whose name is re-pointed at 127.0.0.1
  sends `Host: evil.example:PORT`. A server on a loopback address answers only Host values
  that name it: 127.0.0.1, localhost or [::1], with its port or none (a missing Host is a
  non-browser client: browsers always send one). A server on another address (allowed only
  with an API key, which a page cannot know) takes any Host: clients name it by IP or by
  whatever their network calls it.
- **Origin**: browsers send `Origin` with every cross-origin request and every POST. One that
  is neither this server's own nor in the allow-list (`--cors-origin`, Settings
  `api_cors_origins`) gets 403; allowed ones get CORS headers (starlette's CORSMiddleware,
  set up in app/api/server.py). Refusing a POST that is not JSON (415) is the server's part.

`RequestGuard` is the outermost ASGI layer: it applies both rules and writes one access-log
line per request. `normalize_origin` checks an allow-list entry for the CLI and Settings.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def normalize_origin(text: str) -> str:
    """An allow-list entry as browsers write `Origin`: scheme://host[:port], lower case, no
    default port, no path. Raises ValueError (TypeError for a non-string) saying what is
    wrong and how to write it."""
    if not isinstance(text, str):
        raise TypeError(f"an allowed origin must be text like http://localhost:3000 "
                         f"(got {type(text).__name__})")
    value = text.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username is not None or parts.password is not None):
        raise ValueError(f"{text!r} is not a web origin: write it as scheme://host[:port], "
                         "for example http://localhost:3000 (no path, no '*')")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _split_host(value: str) -> tuple[str, str] | None:
    """'name:port' or '[v6]:port' -> (name lower-cased, port or ''); None when malformed."""
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        return name.lower() + "]", rest[1:]
    if value.count(":") > 1:  # a bare IPv6 address is not a valid Host
        return None
    name, _, port = value.partition(":")
    return name.lower().rstrip("."), port


def _is_loopback_host(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware: Host and Origin checks (403), then the app; logs one line a request.

    `port` is the port the server listens on; `origins` the allow-list (normalised);
    `log(line)` receives "client METHOD path status" lines and refusals."""

    def __init__(self, app: App, *, host: str, port: int, origins: Iterable[str],
                 log: Callable[[str], None]) -> None:
        self.app, self.port, self.log = app, port, log
        self.origins = frozenset(normalize_origin(o) for o in origins)
        self.check_host = _is_loopback_host(host)
        names = set(LOOPBACK_NAMES)
        names.add(f"[{host}]" if ":" in host else host.lower())
        self.names = frozenset(names)
        self.own = frozenset(f"http://{n}:{port}" for n in names)

    def host_ok(self, value: str | None) -> bool:
        """True for a Host header that names this server (or none at all)."""
        if value is None or not self.check_host:
            return True
        split = _split_host(value)
        return split is not None and split[0] in self.names and split[1] in ("", str(self.port))

    def origin_ok(self, value: str | None) -> bool:
        """True without an Origin, for this server's own origin, and for allowed ones."""
        if value is None:
            return True
        try:
            origin = normalize_origin(value)
        except ValueError:  # "null" (sandboxed frames, file://) and anything malformed
            return False
        return origin in self.origins or origin in self.own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        client = scope.get("client") or ("-", 0)
        line = f"{client[0]} {scope['method']} {scope['path']}"
        if not self.host_ok(headers.get("host")):
            self.log(f"{line} 403 (Host {headers['host']!r} does not name this server)")
            await _refuse(send, f"the Host header {headers['host']!r} does not name this "
                          "server; use http://127.0.0.1:PORT or http://localhost:PORT")
            return
        origin = headers.get("origin")
        if not self.origin_ok(origin):
            self.log(f"{line} 403 (Origin {origin!r} not allowed)")
            await _refuse(send, f"requests from the web page at {origin} are refused; to let "
                          f"pages from it use this server, start it with --cors-origin "
                          f"{origin} (or add it under Settings > API server)")
            return
        if scope["path"] not in ("", "/"):  # /v1/models/ is /v1/models
            scope["path"] = scope["path"].rstrip("/")
        status = [0]

        async def logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged)
        except Exception as exc:  # noqa: BLE001  (one line, never a traceback; answer if we can)
            self.log(f"{line}: {type(exc).__name__}: {exc}")
            if not status[0]:
                status[0] = 500
                await _refuse(send, f"internal error: {exc}", 500, "server_error")
        self.log(f"{line} {status[0] or '-'}")


async def _refuse(send: Send, message: str, status: int = 403,
                  kind: str = "permission_error") -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": None}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
