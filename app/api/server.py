"""The OpenAI-compatible API server: editors and scripts use the loaded Grok-2 engine.

    GET  /v1/models             the one loaded model (with max_model_len)
    POST /v1/chat/completions   streaming (server-sent events) or not
    POST /v1/completions        a raw prompt (string or token ids), streaming or not

Request fields and their checks are in app/api/protocol.py's docstring (every optional field
takes null as its default; a bad value gets 400 naming the field and the allowed range).

HTTP is starlette on uvicorn (the stack SGLang, vLLM and llama-cpp-python serve with), run
in-process on one thread with its own event loop; the engine runs on a thread per generation.
From the outside in:

1. `RequestGuard` (app/api/guard.py): a Host that does not name this server, or an `Origin`
   that is not allowed, gets 403 (a web page cannot drive the model); one log line a request.
2. starlette's CORSMiddleware, only with allowed origins (`cors_origins`): their CORS headers
   and OPTIONS preflight answers.
3. The routes (404 / 405 otherwise). Every request needs the API key when one is set
   (`Authorization: Bearer KEY`, else 401). A POST with a Content-Type other than JSON gets
   415 (a page's no-preflight `text/plain` POST; no Content-Type at all is read as JSON, as
   FastAPI does: a browser's POST always carries an Origin). Bodies over `max_body_bytes`
   get 413, malformed JSON 400 with the parser's message.

Requests share the one engine: one generates, up to `max_queue` wait in arrival order, more
get 503. A client that disconnects (streaming or not, while waiting or generating) cancels its
generation or leaves the queue at once. Binds 127.0.0.1 unless `allow_remote`; any other
address also needs an API key. uvicorn's listen backlog (`BACKLOG`) keeps a burst of clients
from being reset, and its errors reach `log` as one line each, never a traceback.

`ApiServer(engine).start()` returns once it listens and serves on its own thread; `stop()`
cancels what runs, closes every connection and frees the port (the GUI's on/off switch; make a
new ApiServer to start again). Streams cut by `stop()` end without `[DONE]`, as a dropped
connection. `grok-desktop serve` (app/commands/serve.py) wraps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import __version__
from app.api.guard import RequestGuard, normalize_origin
from app.api.protocol import ApiError, Job, Reply, ServedEngine, parse_body, parse_job
from app.errors import UserError
from app.messages import Finished, ReplyStream, Token

DEFAULT_PORT = 1234
MAX_BODY_BYTES = 8 << 20  # a full 131k-token context is about 0.5 MB of text
DRAIN_BYTES = 64 << 20  # an oversized body is read and dropped up to this, so the 413 arrives
IDLE_TIMEOUT_S = 60  # a keep-alive connection that sends nothing is closed
BACKLOG = 512  # connections the kernel holds before accept (Python's socketserver used 5)
STOP_GRACE_S = 5  # stop(): uvicorn cancels what still runs after this
ROUTES = {"/v1/models": "GET", "/v1/chat/completions": "POST", "/v1/completions": "POST"}
# uvicorn's line for a response the app ended early: our streams cut by stop(), on purpose.
QUIET = ("ASGI callable returned without completing response.",)


class _Line:
    """Admission in arrival order: one request holds the engine, up to `limit` wait.
    Used on the server's event loop only; `waiting()` may be read from any thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closed = False
        self._tickets: deque[asyncio.Event] = deque()

    def waiting(self) -> int:
        return max(len(self._tickets) - 1, 0)

    @contextlib.asynccontextmanager
    async def turn(self, gone: asyncio.Event) -> AsyncIterator[bool]:
        """Wait for our turn; yields False if the client left or the server stops first.
        Raises ApiError 503 when `limit` requests wait already."""
        if self.closed:
            raise ApiError(503, "the server is stopping", "server_error")
        if len(self._tickets) > self.limit:
            raise ApiError(503, f"the server is busy: {self.limit} requests are waiting "
                           "already; try again later", "server_error")
        ticket = asyncio.Event()
        self._tickets.append(ticket)
        if self._tickets[0] is ticket:
            ticket.set()
        try:
            yield await self._wait(ticket, gone)
        finally:
            self._tickets.remove(ticket)
            if self._tickets:
                self._tickets[0].set()

    async def _wait(self, ticket: asyncio.Event, gone: asyncio.Event) -> bool:
        if not ticket.is_set():
            waits = [asyncio.ensure_future(ticket.wait()), asyncio.ensure_future(gone.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return ticket.is_set() and not gone.is_set() and not self.closed

    def close(self) -> None:
        """Refuse new requests and wake the waiting ones (they answer 503)."""
        self.closed = True
        for ticket in self._tickets:
            ticket.set()


# ---- the engine on its own thread ----------------------------------------------------------


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


async def _pump(events: Iterator[Token | Finished]) -> AsyncIterator[Token | Finished | _Failed]:
    """Run the engine's generator on a thread; yield its events here, then a _Failed if it
    raised. Ends only when the thread has closed the generator (one generation at a time)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            with contextlib.closing(events):  # type: ignore[type-var]
                for event in events:
                    put(event)
        except BaseException as exc:  # noqa: BLE001  (reported to the client, not raised here)
            put(_Failed(exc))
        finally:
            put(_END)

    threading.Thread(target=produce, name="api-generation", daemon=True).start()
    while (item := await queue.get()) is not _END:
        yield item  # type: ignore[misc]


# ---- one generation request, after its body was read and checked ---------------------------


class _Generation:
    """The ASGI response of a chat or completions request: queue, generate, answer."""

    def __init__(self, api: ApiServer, job: Job, events: ReplyStream,
                 cancel: threading.Event) -> None:
        self.api, self.job, self.events, self.cancel = api, job, events, cancel
        self.reply = Reply.new(job.chat, api.model_id)
        self.pumped = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def watch() -> None:  # the body is read: the next message is the disconnect
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            self.cancel.set()

        watcher = asyncio.ensure_future(watch())
        with self.api._lock:
            self.api._running.add(self.cancel)  # stop() cancels it from now on
        try:
            async with self.api.line.turn(gone) as admitted:
                if not admitted:
                    if not gone.is_set():
                        raise ApiError(503, "the server is stopping", "server_error")
                    return  # the client left while waiting: nothing to answer
                self.pumped = True
                events = _pump(self.events)
                if self.job.stream:
                    await self._stream(send, events)
                else:
                    await self._whole(scope, send, events, gone)
        except ApiError as exc:
            await _error_response(exc)(scope, receive, send)
        finally:
            self.cancel.set()  # a no-op after a whole reply; stops the engine if we left early
            with self.api._lock:
                self.api._running.discard(self.cancel)
            watcher.cancel()
            if not self.pumped:  # refused, or left the line: release the unstarted generator
                self.events.close()

    async def _whole(self, scope: Any, send: Any, events: AsyncIterator[Any],
                     gone: asyncio.Event) -> None:
        parts: list[str] = []
        done: Finished | None = None
        failed: _Failed | None = None
        async for event in events:
            if isinstance(event, Token):
                parts.append(event.text)
            elif isinstance(event, Finished):
                done = event
            else:
                failed = event
        if failed is not None:
            self.api.log(f"generation failed: {failed.error!r}")
            raise ApiError(500, f"generation failed: {failed.error}", "server_error")
        if done is None or done.reason == "cancelled":
            if gone.is_set():
                return
            raise ApiError(503, "the server is stopping", "server_error")
        answer = JSONResponse(self.reply.whole("".join(parts), done))
        await answer(scope, _no_receive, send)

    async def _stream(self, send: Any, events: AsyncIterator[Any]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache")]})

        async def event(data: dict) -> None:
            body = b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})

        if self.job.chat:
            await event(self.reply.piece(None, role=True))
        done: Finished | None = None
        failed: _Failed | None = None
        async for item in events:
            if isinstance(item, Token):
                if item.text and done is None:
                    await event(self.reply.piece(item.text))
            elif isinstance(item, Finished):
                done = item
            else:
                failed = item
        if failed is not None:  # the engine failed mid-reply (SGLang's way: an error event)
            self.api.log(f"generation failed: {failed.error!r}")
            await event(ApiError(500, f"generation failed: {failed.error}", "server_error").body())
        elif done is None or done.reason == "cancelled":
            return  # client gone, or stop(): end without [DONE], as a dropped connection
        else:
            await event(self.reply.piece(None if self.job.chat else "", done.reason))
            if self.job.include_usage:
                await event(self.reply.usage_piece(done.stats))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def _error_response(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status >= 500:
        headers["Connection"] = "close"
    return JSONResponse(exc.body(), exc.status, headers=headers)


# ---- addresses -----------------------------------------------------------------------------


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


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """The allow-list, normalised; UserError naming a bad entry and how to write it."""
    try:
        return tuple(dict.fromkeys(normalize_origin(o) for o in origins))
    except (TypeError, ValueError) as exc:
        raise UserError(f"--cors-origin: {exc}") from None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); "
                        "choose another port with --port") from exc
    return sock


class _LogBridge(logging.Handler):
    """uvicorn's warnings and errors as one line each through `log` (no tracebacks)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            message = record.getMessage().strip()
            if message in QUIET:
                return
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self._log(f"server: {message}")


class ApiServer:
    """The server object the CLI and the GUI switch hold: start() and stop() from any thread."""

    def __init__(self, engine: ServedEngine, *, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, api_key: str = "", allow_remote: bool = False,
                 model_id: str = "", max_queue: int = 8, max_body_bytes: int = MAX_BODY_BYTES,
                 cors_origins: Iterable[str] = (),
                 log: Callable[[str], None] | None = None) -> None:
        check_address(host, allow_remote, api_key)
        self.engine, self.api_key, self.max_body_bytes = engine, api_key, max_body_bytes
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.cors_origins = check_origins(cors_origins)
        self.model_id = model_id or ("grok-2-demo" if engine.info.is_demo else "grok-2")
        self.line = _Line(max_queue)
        self.log = log or (lambda line: None)
        self.started = int(time.time())
        self._running: set[threading.Event] = set()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bridge = _LogBridge(self.log)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def models(self) -> dict[str, Any]:
        model = {"id": self.model_id, "object": "model", "created": self.started,
                 "owned_by": "grok-desktop", "max_model_len": self.engine.context_length}
        return {"object": "list", "data": [model]}

    # ---- the ASGI application ----------------------------------------------------------

    def app(self) -> RequestGuard:
        """The whole stack: guard, CORS (allowed origins only), routes."""
        routes = [Route("/v1/models", self._models, methods=["GET"]),
                  Route("/v1/chat/completions", self._chat, methods=["POST"]),
                  Route("/v1/completions", self._completions, methods=["POST"])]
        middleware = [Middleware(CORSMiddleware, allow_origins=list(self.cors_origins),
                                 allow_methods=["GET", "POST"], allow_headers=["*"],
                                 allow_private_network=True)] if self.cors_origins else []
        handlers: dict[Any, Any] = {ApiError: _api_error, HTTPException: _http_error,
                                    ClientDisconnect: _client_gone}
        app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
        return RequestGuard(app, host=self.host, port=self.port, origins=self.cors_origins,
                            log=self.log)

    def _authorize(self, request: Request) -> None:
        key = self.api_key
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if key and not (scheme.lower() == "bearer"
                        and hmac.compare_digest(given.strip().encode(), key.encode())):
            raise ApiError(401, "missing or wrong API key: send the header "
                           "'Authorization: Bearer <key>'", "authentication_error")

    async def _models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse(self.models())

    async def _chat(self, request: Request) -> Any:
        return await self._generate(request, chat=True)

    async def _completions(self, request: Request) -> Any:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, chat: bool) -> Any:
        self._authorize(request)
        _check_content_type(request.headers.get("content-type"))
        body = parse_body(await self._read_body(request))
        try:
            return await run_in_threadpool(self._prepare, body, chat)
        except ApiError:
            raise
        except Exception as exc:  # the tokenizer or engine failed: 500, and serve on
            self.log(f"request failed: {exc!r}")
            raise ApiError(500, f"could not prepare the request: {exc}", "server_error") from exc

    def _prepare(self, body: Any, chat: bool) -> _Generation:
        """Check the body, tokenize, let the engine check the length (a worker thread)."""
        job = parse_job(body, self.engine, chat)
        cancel = threading.Event()
        try:
            events = self.engine.stream_ids(job.prompt_ids, job.params, cancel, job.stops)
        except UserError as exc:  # the prompt is empty or longer than the context
            raise ApiError(400, str(exc), param="messages" if chat else "prompt") from exc
        return _Generation(self, job, events, cancel)

    async def _read_body(self, request: Request) -> bytes:
        """The body, up to max_body_bytes (else 413, after reading and dropping the rest so
        that the client sees the answer, not a reset)."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        data = bytearray()
        if not (declared.isdigit() and int(declared) > limit):
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    break
            else:
                return bytes(data)
        dropped = len(data)
        with contextlib.suppress(RuntimeError):  # the stream was consumed already
            async for chunk in request.stream():
                dropped += len(chunk)
                if dropped > DRAIN_BYTES:
                    break
        size = f"{declared} bytes" if declared.isdigit() else f"more than {limit} bytes"
        raise ApiError(413, f"the request body is {size}; this server takes at most {limit} "
                       "bytes")

    # ---- start and stop ----------------------------------------------------------------

    def start(self) -> None:
        """Listen (port 0 picks a free one; `port` then tells which) and serve on a thread.
        Raises UserError when the address cannot be used."""
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_config=None, access_log=False, lifespan="off", loop="asyncio",
            ws="none", backlog=BACKLOG, timeout_keep_alive=IDLE_TIMEOUT_S,
            timeout_graceful_shutdown=STOP_GRACE_S, proxy_headers=False, server_header=False,
            headers=[("server", f"grok-desktop/{__version__}")])
        server = uvicorn.Server(config)
        logger = logging.getLogger("uvicorn")
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(self._bridge)
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            ready.set()
            await server.serve(sockets=[sock])

        def run() -> None:
            try:
                asyncio.run(serve())
            except BaseException as exc:  # noqa: BLE001  (uvicorn calls sys.exit on failures)
                self.log(f"server: stopped ({type(exc).__name__}: {exc})")
            finally:
                sock.close()
                logger.removeHandler(self._bridge)

        with self._lock:
            self._server = server
            self._thread = threading.Thread(target=run, name="api-server", daemon=True)
            self._thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 10
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not server.started:
            self.stop(0)
            raise UserError(f"the API server on {self.url} did not start; see the log")

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel running and queued requests, close every connection, free the port, then
        wait up to `timeout` s for the running generation to stop at its next step (the GUI
        may pass 0). Safe to call twice and from any thread."""
        with self._lock:
            server, self._server = self._server, None
            running = list(self._running)
        if server is None:
            return
        for cancel in running:
            cancel.set()
        loop, thread = self._loop, self._thread

        async def close() -> None:  # on the server's loop
            self.line.close()
            for listener in getattr(server, "servers", []):
                listener.close()  # the port is free from here on
            server.should_exit = True

        if loop is not None:
            with contextlib.suppress(Exception):  # the loop has ended already
                asyncio.run_coroutine_threadsafe(close(), loop).result(2)
        server.should_exit = True
        if thread is not None:
            thread.join(timeout)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """starlette's 404 and 405 in OpenAI's error format."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        return _error_response(ApiError(404, f"no such endpoint {path}; this server offers "
                                             f"{', '.join(ROUTES)}"))
    if exc.status_code == 405 and path in ROUTES:
        return _error_response(ApiError(405, f"{path} takes {ROUTES[path]} requests"))
    return _error_response(ApiError(exc.status_code, str(exc.detail)))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left while sending its body: nobody reads the answer."""
    return Response(status_code=400)


def _check_content_type(value: str | None) -> None:
    """415 for a body that is not declared as JSON (a web page's text/plain or form POST
    needs no CORS preflight). No Content-Type at all is taken as JSON."""
    if value is None:
        return
    media = value.partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/")
                                       and media.endswith("+json")):
        return
    raise ApiError(415, f"the request body must be JSON, sent with 'Content-Type: "
                   f"application/json' (got {value!r}); with curl add -H 'Content-Type: "
                   "application/json'")


def print_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
