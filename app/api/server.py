"""The OpenAI-compatible API server: editors and scripts use the loaded Grok-2 engine.

    GET  /v1/models             the one loaded model (with max_model_len)
    POST /v1/chat/completions   streaming (server-sent events) or not
    POST /v1/completions        a raw prompt (string or token ids), streaming or not

Sampling fields: temperature, top_p, top_k (0 or -1: off), min_p, repetition_penalty,
max_tokens or max_completion_tokens (absent: the rest of the context), seed, stop (a string or
up to 16), stream_options.include_usage, and SGLang's continue_final_message. A missing field
takes the app's default (`GenerationParams`). frequency_penalty, presence_penalty, logit_bias,
user and other unknown fields are accepted and ignored; n > 1, logprobs, echo, suffix, tools
and JSON response formats are refused with 400. The `model` field is not checked (one model).
Parsing and answer objects live in app/api/protocol.py.

Requests share the one engine: one generates, up to `max_queue` wait in arrival order, more
get 503. A client that disconnects (noticed within 0.1 s, streaming or not) cancels its
generation or leaves the queue. Binds 127.0.0.1 unless `allow_remote`; any other address also
needs an API key, checked on every request (`Authorization: Bearer KEY`, else 401). Bodies
over `max_body_bytes` get 413, malformed JSON 400 with the parser's message.

`ApiServer(engine).start()` returns at once and serves on its own threads; `stop()` cancels
what runs, closes every connection and frees the port (the GUI's on/off switch; make a new
ApiServer to start again). Streams cut by `stop()` end without `[DONE]`, as a dropped
connection. `grok-desktop serve` (app/commands/serve.py) wraps it.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import select
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from app import __version__
from app.api.protocol import ApiError, Job, Reply, ServedEngine, parse_job
from app.backends.transport import POLL_S, call_when
from app.errors import UserError
from app.messages import Finished, Token

DEFAULT_PORT = 1234
MAX_BODY_BYTES = 8 << 20  # a full 131k-token context is about 0.5 MB of text
IDLE_TIMEOUT_S = 60.0  # a keep-alive connection that sends nothing is closed
ROUTES = {"/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/completions": "POST"}


class _Line:
    """Admission in arrival order: one request holds the engine, up to `limit` wait."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closed = False
        self._tickets: deque[object] = deque()
        self._cond = threading.Condition()

    def waiting(self) -> int:
        with self._cond:
            return max(len(self._tickets) - 1, 0)

    @contextlib.contextmanager
    def turn(self, gone: Callable[[], bool]) -> Iterator[bool]:
        """Wait for our turn; yields False if the client left first. 503 when full."""
        ticket = object()
        with self._cond:
            if self.closed:
                raise ApiError(503, "the server is stopping", "server_error")
            if len(self._tickets) > self.limit:
                raise ApiError(503, f"the server is busy: {self.limit} requests are waiting "
                               "already; try again later", "server_error")
            self._tickets.append(ticket)
        try:
            yield self._wait(ticket, gone)
        finally:
            with self._cond:
                self._tickets.remove(ticket)
                self._cond.notify_all()

    def _wait(self, ticket: object, gone: Callable[[], bool]) -> bool:
        with self._cond:
            while self._tickets[0] is not ticket:
                if self.closed or gone():
                    return False
                self._cond.wait(2 * POLL_S)
            return not self.closed

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._tickets, timeout)


# ---- HTTP ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    server_version = f"grok-desktop/{__version__}"
    timeout = IDLE_TIMEOUT_S
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.api._track(self.connection, True)

    def finish(self) -> None:
        self.server.api._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def log_message(self, format: str, *args: Any) -> None:
        self.server.api.log(f"{self.address_string()} {format % args}")

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        self._streaming = False
        self._client_close = self.close_connection  # the client's own "Connection: close"
        self._unread = method == "POST"  # an error may come before the body is read
        self.close_connection = self.close_connection or self._unread
        try:
            if path not in ROUTES:
                raise ApiError(404, f"no such endpoint {path}; this server offers "
                               f"{', '.join(ROUTES)}")
            if ROUTES[path] != method:
                raise ApiError(405, f"{path} takes {ROUTES[path]} requests")
            self._authorize()
            if path == "/v1/models":
                self._send_json(200, self.server.api.models())
            else:
                self._generate(path == "/v1/chat/completions")
        except ApiError as exc:
            extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
            self._drain()
            self._send_json(exc.status, exc.body(), extra)
        except OSError:  # the client went away
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001  (the engine failed: answer 500, keep serving)
            self.server.api.log(f"generation failed: {exc!r}")
            self.close_connection = True
            if not self._streaming:
                self._send_json(500, ApiError(500, f"generation failed: {exc}",
                                              "server_error").body())

    def _authorize(self) -> None:
        key = self.server.api.api_key
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if key and not (scheme.lower() == "bearer"
                        and hmac.compare_digest(given.strip().encode(), key.encode())):
            raise ApiError(401, "missing or wrong API key: send the header "
                           "'Authorization: Bearer <key>'", "authentication_error")

    def _body(self) -> Any:
        if "Transfer-Encoding" in self.headers or "Content-Length" not in self.headers:
            raise ApiError(411, "send the request body with a Content-Length header")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            raise ApiError(400, "the Content-Length header is not a number") from None
        limit = self.server.api.max_body_bytes
        if length > limit:
            raise ApiError(413, f"the request body is {length} bytes; this server takes at "
                           f"most {limit} bytes")
        data = self.rfile.read(length)
        self._unread = False
        self.close_connection = self._client_close or len(data) < length
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None

    def _drain(self) -> None:
        """Read and drop an unread body (up to 64 MiB) before an error answer: closing a socket
        with unread input resets it, and the client would see the reset, not our message."""
        if not self._unread:
            return
        self._unread = False
        with contextlib.suppress(OSError, ValueError):
            left = int(self.headers.get("Content-Length", "0"))
            while 0 < left <= 64 << 20:
                chunk = self.rfile.read(min(left, 1 << 16))
                left = left - len(chunk) if chunk else 0

    def _generate(self, chat: bool) -> None:
        api = self.server.api
        job = parse_job(self._body(), api.engine, chat)
        cancel = threading.Event()
        try:
            events = api.engine.stream_ids(job.prompt_ids, job.params, cancel, job.stops)
        except UserError as exc:  # the prompt is empty or longer than the context
            raise ApiError(400, str(exc), param="messages" if chat else "prompt") from exc
        reply = Reply.new(chat, api.model_id)
        api._running.add(cancel)  # stop() cancels it from now on
        try:
            with api.line.turn(self._client_gone) as admitted:
                if not admitted:
                    self.close_connection = True
                    return
                watch = call_when(self._client_gone, cancel.set)
                try:
                    with contextlib.closing(events):
                        (self._stream if job.stream else self._whole)(job, reply, events)
                finally:
                    watch.set()
        finally:
            api._running.discard(cancel)

    def _whole(self, job: Job, reply: Reply, events: Iterator[Token | Finished]) -> None:
        parts: list[str] = []
        for event in events:
            if isinstance(event, Finished):
                if event.reason == "cancelled":  # client gone, or the server is stopping
                    raise ApiError(503, "the server is stopping", "server_error")
                self._send_json(200, reply.whole("".join(parts), event))
                return
            parts.append(event.text)

    def _stream(self, job: Job, reply: Reply, events: Iterator[Token | Finished]) -> None:
        self._streaming = True
        self.send_response(200)
        for name, value in (("Content-Type", "text/event-stream; charset=utf-8"),
                            ("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")):
            self.send_header(name, value)
        self.end_headers()
        try:
            if job.chat:
                self._event(reply.piece(None, role=True))
            done = self._stream_text(reply, events)
            if done is None:  # cancelled: end without [DONE], like a dropped connection
                self.close_connection = True
                return
            if isinstance(done, ApiError):  # the engine failed mid-reply (SGLang's way)
                self._event(done.body())
            else:
                self._event(reply.piece(None if job.chat else "", done.reason))
                if job.include_usage:
                    self._event(reply.usage_piece(done.stats))
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except OSError:  # the client went away mid-write
            self.close_connection = True

    def _stream_text(self, reply: Reply, events: Iterator[Token | Finished],
                     ) -> Finished | ApiError | None:
        """Send the text; then the Finished, an error if the engine failed, None if cancelled."""
        try:
            for event in events:
                if isinstance(event, Finished):
                    return None if event.reason == "cancelled" else event
                if event.text:
                    self._event(reply.piece(event.text))
        except OSError:
            raise  # the client went away: _stream's business
        except Exception as exc:  # noqa: BLE001  (an engine failure ends the reply, not the server)
            self.server.api.log(f"generation failed: {exc!r}")
            return ApiError(500, f"generation failed: {exc}", "server_error")
        return None

    def _event(self, data: dict) -> None:
        self._chunk(b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send_json(self, status: int, data: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def _client_gone(self) -> bool:
        """The client closed its end (readable with nothing to read), or the socket failed."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    api: ApiServer

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version does a slow DNS lookup
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, allow_remote: bool, api_key: str) -> None:
    """Loopback is always allowed; any other address needs the explicit flag and a key."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise UserError(f"listening on {host} lets other machines use the model; pass "
                        "--allow-remote (with --api-key) to mean it, or keep 127.0.0.1")
    if not api_key:
        raise UserError(f"listening on {host} needs an API key: add --api-key KEY "
                        "(clients send 'Authorization: Bearer KEY')")


class ApiServer:
    """The server object the CLI and the GUI switch hold: start() and stop() from any thread."""

    def __init__(self, engine: ServedEngine, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, api_key: str = "", allow_remote: bool = False,
                 model_id: str = "", max_queue: int = 8, max_body_bytes: int = MAX_BODY_BYTES,
                 log: Callable[[str], None] | None = None) -> None:
        check_address(host, allow_remote, api_key)
        self.engine, self.api_key, self.max_body_bytes = engine, api_key, max_body_bytes
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.model_id = model_id or ("grok-2-demo" if engine.info.is_demo else "grok-2")
        self.line = _Line(max_queue)
        self.log = log or (lambda line: None)
        self.started = int(time.time())
        self._running: set[threading.Event] = set()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def models(self) -> dict[str, Any]:
        model = {"id": self.model_id, "object": "model", "created": self.started,
                 "owned_by": "grok-desktop", "max_model_len": self.engine.context_length}
        return {"object": "list", "data": [model]}

    def start(self) -> None:
        """Listen (port 0 picks a free one; `port` then tells which) and serve on a thread."""
        kind = _HttpServer6 if ":" in self.host else _HttpServer
        try:
            self._httpd = kind((self.host, self.port), _Handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                            "choose another port with --port") from exc
        self._httpd.api = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name="api-server", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel running and queued requests, close every connection, free the port, then
        wait up to `timeout` s for the running generation to stop at its next step (the GUI
        may pass 0). Safe to call twice and from any thread."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.line.close()
        for cancel in list(self._running):
            cancel.set()
        httpd.shutdown()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        self.line.wait_empty(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


def print_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
