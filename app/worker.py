"""The bridge between the GUI and the engine: one long-lived engine thread.

Requests (frozen dataclasses, each given an id) go to the thread on a `queue.Queue`. Events
(`app.messages` dataclasses) come back to the GUI's asyncio loop through
`loop.call_soon_threadsafe` into a per-request `asyncio.Queue`, so GUI code reads them as
`async for event in worker.stream(request)`. Events of a request whose stream was closed are
dropped. Stop is a `threading.Event` set from the GUI thread and seen at the next decode step.
Any exception (CUDA out of memory, a bad model file) becomes one `Failed` event; the thread
lives on (a remote reply cut short is `continuable`). `torch.inference_mode()` is entered
inside the thread (it is thread-local).

The engine is the local Grok-2 engine or a remote OpenAI-compatible server (`LoadModel.remote`,
app/backends). The worker also owns the optional local API server (app/api/server.py) over the
loaded local engine: `start_api_server` / `stop_api_server` are safe from the GUI thread, and
the server is stopped before the model is released, replaced or the thread ends.

This module is the only one that knows both sides; it never touches a widget and imports the
engine (and torch) only inside the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from app.backends import RemoteConfig
from app.context import ContextFit, fit_context, reply_reserve
from app.errors import UserError
from app.messages import (
    CancelEvent,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    ModelInfo,
    Progress,
    ReplyStream,
    Token,
)

if TYPE_CHECKING:
    from app.api.protocol import ServedEngine

ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
INVALID_BYTES = "\ufffd"  # what the decoder makes of bytes that are not UTF-8
log = logging.getLogger("grok_desktop.worker")


class EngineLike(Protocol):
    """What the worker needs from `app.engine.engine.Engine` (tests pass fakes)."""

    info: ModelInfo

    def count_tokens(self, messages: list[ChatMessage]) -> int: ...

    def stream_chat(self, messages: list[ChatMessage], params: GenerationParams,
                    cancel: threading.Event | None = None,
                    continue_text: str | None = None) -> ReplyStream: ...

    def unload(self) -> None: ...


def _serves_api(engine: EngineLike) -> TypeGuard[ServedEngine]:
    """The local engine has `stream_ids`, which the API server drives; a remote backend not."""
    return hasattr(engine, "stream_ids")


# ---- requests and the worker's own events ---------------------------------------------------


@dataclass(frozen=True)
class LoadModel:
    """Load a Grok-2 folder, the built-in tiny demo model when `demo` is true, or connect to
    a remote OpenAI-compatible server when `remote` is given."""

    folder: str = ""
    demo: bool = False
    device: str | None = None  # None: CUDA if present
    quant: str | None = None
    remote: RemoteConfig | None = None
    budgets: tuple[int | None, int | None] | None = None  # (GPU, RAM) bytes; None: measured
    context_length: int | None = None  # None: the engine's default
    auto_quant: bool = False  # quant None means "auto": the first of bf16, int8, int4 that fits


@dataclass(frozen=True)
class Generate:
    """A reply to `messages`. With a `context_policy` (app/context.py) the worker first keeps
    what fits the model's context; without one, the engine refuses an overlong prompt."""

    messages: tuple[ChatMessage, ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    continue_text: str | None = None  # resume an interrupted assistant reply
    context_policy: str | None = None


@dataclass(frozen=True)
class Unload:
    pass


@dataclass(frozen=True)
class Unloaded:
    """The model was released (answer to `Unload`)."""


Request = LoadModel | Generate | Unload
Event = Token | Finished | Progress | Loaded | Failed | Unloaded
Loader = Callable[[LoadModel, Callable[[Progress], None]], EngineLike]
TERMINAL = (Finished, Loaded, Failed, Unloaded)
AFTER_CANCEL_EVENTS = 4  # events still taken from the engine after a stop


class _LoadCancelled(Exception):
    """Raised from the progress callback to abandon a load the user cancelled."""


@dataclass
class _Job:
    id: int
    request: Request
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=CancelEvent)  # remote: Stop at once
    started: float = field(default_factory=time.monotonic)


_SHUTDOWN = object()
_CLOSED = object()  # put in a stream's queue by close() to end a waiting reader


def default_loader(request: LoadModel, progress: Callable[[Progress], None]) -> EngineLike:
    """Build the real engine (imported here, in the engine thread, so the GUI stays torch-free)."""
    if request.remote is not None:
        from app.backends import connect

        progress(Progress(f"connecting to {request.remote.base_url}", 0, 1))
        return connect(request.remote)
    from app.engine.engine import Engine

    if request.demo:
        return Engine.demo(progress=progress, device=request.device)
    budgets = None
    if request.budgets is not None:
        gpu, cpu = request.budgets
        if gpu is None or cpu is None:
            from app.engine.loader import detect_budgets

            found = detect_budgets()
            gpu, cpu = gpu if gpu is not None else found[0], cpu if cpu is not None else found[1]
        budgets = (gpu, cpu)
    quant = request.quant
    if quant is None and request.auto_quant:
        quant = _auto_quant(request, budgets)
    return Engine.load(request.folder, device=request.device, quant=quant,
                       progress=progress, budgets=budgets, context_length=request.context_length)


def _auto_quant(request: LoadModel, budgets: tuple[int, int] | None) -> str | None:
    """What "auto" loads: a prepared folder keeps its own format (None); an official folder
    gets the first of bf16, int8, int4 that fits the budgets (None: bf16, or nothing fits and
    the engine explains why)."""
    from app.engine.engine import DEFAULT_CONTEXT
    from app.engine.loader import detect_budgets
    from app.engine.prepare import is_prepared
    from app.placement import auto_quantization, read_config

    if is_prepared(request.folder):
        return None
    gpu, cpu = budgets or detect_budgets()
    if request.device == "cpu":
        gpu = 0
    cfg = read_config(request.folder)[0]
    context = min(request.context_length or DEFAULT_CONTEXT, cfg.max_position_embeddings)
    quant = auto_quantization(cfg, gpu, cpu, context)
    return None if quant in (None, "bf16") else quant


def describe_failure(exc: BaseException) -> Failed:
    """One line the user can act on, plus the traceback for a details box."""
    detail = "".join(traceback.format_exception(exc))
    if isinstance(exc, UserError):
        return Failed(str(exc), detail, continuable=bool(getattr(exc, "continuable", False)))
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return Failed("Out of GPU memory: lower the GPU memory budget, choose a smaller "
                      "quantization in Settings, or reduce Max tokens.", detail)
    if isinstance(exc, MemoryError):
        return Failed("Out of system memory: lower the CPU memory budget or use a smaller "
                      "quantization in Settings.", detail)
    return Failed(f"The engine failed: {type(exc).__name__}: {exc}", detail)


class EventStream:
    """The events of one request, read with `async for`; `close()` drops the rest."""

    def __init__(self, worker: EngineWorker, job: _Job, events: asyncio.Queue) -> None:
        self._worker = worker
        self._job = job
        self._events = events
        self.done = False

    @property
    def request_id(self) -> int:
        return self._job.id

    def cancel(self) -> None:
        """Ask the engine to stop at its next step; the final `Finished` still arrives."""
        self._job.cancel.set()

    def close(self) -> None:
        """Cancel and stop listening: events still on their way are dropped, and a reader
        waiting in `async for` ends its loop."""
        self._job.cancel.set()
        if not self.done:
            self._finish()
            self._events.put_nowait(_CLOSED)

    def _finish(self) -> None:
        self.done = True
        self._worker._listeners.pop(self._job.id, None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self.done:
            raise StopAsyncIteration
        event = await self._events.get()
        if event is _CLOSED:
            raise StopAsyncIteration
        if isinstance(event, TERMINAL):
            self._finish()
        return event


class EngineWorker:
    """Owns the engine thread. Create once per app; call `shutdown()` when closing."""

    def __init__(self, loader: Loader = default_loader) -> None:
        self._loader = loader
        self._requests: queue.Queue[Any] = queue.Queue()
        self._listeners: dict[int, asyncio.Queue] = {}
        self._ids = itertools.count(1)
        self._current: _Job | None = None
        self._engine: EngineLike | None = None
        self._torch: Any = None
        self._server: Any = None  # app.api.server.ApiServer while the API switch is on
        self._server_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # ---- GUI-thread side ----------------------------------------------------------------

    @property
    def info(self) -> ModelInfo | None:
        """The loaded model, or None."""
        engine = self._engine
        return engine.info if engine is not None else None

    @property
    def busy(self) -> bool:
        return self._current is not None

    def stream(self, request: Request) -> EventStream:
        """Submit `request` now; iterate the result with `async for` on the running loop."""
        loop = asyncio.get_running_loop()
        job = _Job(next(self._ids), request, loop)
        events: asyncio.Queue = asyncio.Queue()
        self._listeners[job.id] = events
        self._requests.put(job)
        return EventStream(self, job, events)

    def stop(self) -> None:
        """Stop whatever runs now (generation or loading) at its next step."""
        job = self._current
        if job is not None:
            job.cancel.set()

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int | None:
        """Prompt tokens by the loaded model's tokenizer (thread-safe: tokenizer only)."""
        engine = self._engine
        if engine is None:
            return None
        try:
            return engine.count_tokens(list(messages))
        except Exception:  # noqa: BLE001  (a count is a hint; never let it break typing)
            return None

    def gpu_memory_bytes(self) -> int | None:
        """GPU memory held by this process's tensors, if torch is loaded and sees CUDA."""
        torch = self._torch  # set by the engine thread once the import has finished
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return int(torch.cuda.memory_allocated())

    # ---- the local API server (GUI-thread safe) ------------------------------------------

    @property
    def api_server_url(self) -> str | None:
        """Where the API server listens (http://host:port/v1), or None when it is off."""
        server = self._server
        return server.url if server is not None else None

    def start_api_server(self, port: int, api_key: str = "", allow_remote: bool = False,
                         cors_origins: list[str] | tuple[str, ...] = ()) -> str:
        """Serve the loaded local model as an OpenAI-compatible API; returns its URL. Raises
        UserError with the reason when there is no local model, or the port is taken.
        `cors_origins`: web origins whose pages may call it from a browser."""
        from app.api.server import ApiServer

        engine = self._engine
        if engine is None:
            raise UserError("The API server needs a loaded model: load Grok-2 (or the demo "
                            "model) first.")
        if not _serves_api(engine):
            raise UserError("The API server shares the local Grok-2 engine; the backend is a "
                            "remote server now, so give your tools that server's address "
                            "instead.")
        with self._server_lock:
            self._stop_server_locked(0.0)
            server = ApiServer(engine, host="0.0.0.0" if allow_remote else "127.0.0.1",
                               port=port, api_key=api_key, allow_remote=allow_remote,
                               cors_origins=cors_origins, log=_server_log)
            server.start()
            self._server = server
        return server.url

    def stop_api_server(self, timeout: float = 0.5) -> None:
        """Close the port at once and cancel API requests (waits up to `timeout` s for a
        running one to stop). Does nothing when the server is off."""
        with self._server_lock:
            self._stop_server_locked(timeout)

    def _stop_server_locked(self, timeout: float) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(timeout)

    def shutdown(self, timeout: float = 1.5) -> bool:
        """Cancel everything, let the thread release the model; True if it ended in time."""
        self.stop_api_server(timeout=0.0)
        self._drain_queue()
        self.stop()
        self._requests.put(_SHUTDOWN)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _drain_queue(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._requests.get_nowait()
                if isinstance(job, _Job):
                    job.cancel.set()
                    self._post(job, Finished("cancelled"))

    def _deliver(self, job_id: int, event: Event) -> None:
        events = self._listeners.get(job_id)
        if events is not None:  # else the request is stale: drop
            events.put_nowait(event)

    # ---- engine-thread side ---------------------------------------------------------------

    def _post(self, job: _Job, event: Event) -> None:
        try:
            job.loop.call_soon_threadsafe(self._deliver, job.id, event)
        except (RuntimeError, AttributeError):
            pass  # the loop is closed: the app is exiting and nobody listens

    def _run(self) -> None:
        with _inference_mode() as torch:
            self._torch = torch
            while True:
                job = self._requests.get()
                if job is _SHUTDOWN:
                    break
                self._current = job
                try:
                    self._handle(job)
                except Exception as exc:  # any failure becomes one event, and a log entry
                    log.error("%s failed: %s", type(job.request).__name__, exc,
                              exc_info=not isinstance(exc, UserError) and exc)
                    self._post(job, describe_failure(exc))
                finally:
                    self._current = None
            self._release()

    def _handle(self, job: _Job) -> None:
        request = job.request
        if job.cancel.is_set():
            self._post(job, Finished("cancelled"))
        elif isinstance(request, LoadModel):
            self._load(job, request)
        elif isinstance(request, Generate):
            self._generate(job, request)
        elif isinstance(request, Unload):
            self._release()
            self._post(job, Unloaded())
        else:
            raise AssertionError(f"unknown request {request!r}")

    def _load(self, job: _Job, request: LoadModel) -> None:
        self._release()  # never hold two models: Grok-2 barely fits once

        def progress(event: Progress) -> None:
            if job.cancel.is_set():
                raise _LoadCancelled
            self._post(job, _with_eta(event, job.started))

        try:
            self._engine = self._loader(request, progress)
        except _LoadCancelled:
            self._post(job, Finished("cancelled"))
            return
        self._post(job, Loaded(self._engine.info))

    def _generate(self, job: _Job, request: Generate) -> None:
        engine = self._engine
        if engine is None:
            self._post(job, Failed("No model is loaded: choose a Grok-2 folder in Settings or "
                                   "try the demo model."))
            return
        messages = list(request.messages)
        if request.context_policy is not None:
            fit = fit_for_engine(engine, messages, request.params, request.context_policy,
                                 request.continue_text)
            if fit.stopped:
                self._post(job, Failed(fit.stopped))
                return
            messages = fit.messages
        events = engine.stream_chat(messages, request.params, cancel=job.cancel,
                                    continue_text=request.continue_text)
        with contextlib.closing(events):
            for event in events:
                if isinstance(event, Finished):
                    self._post(job, event)
                    return
                if isinstance(event, Token) and INVALID_BYTES in event.text:
                    # bytes that never become UTF-8 (the demo makes them): show nothing
                    event = Token(event.text.replace(INVALID_BYTES, ""), event.token_ids)
                self._post(job, event)
                if job.cancel.is_set():
                    self._finish_cancelled(job, events)
                    return
        self._post(job, Finished("cancelled" if job.cancel.is_set() else "stop"))

    def _finish_cancelled(self, job: _Job, events: Iterator[Token | Finished]) -> None:
        """The engine sees `cancel` before its next step and ends with held-back text and a
        Finished carrying the stats; an engine that ignores `cancel` is cut off here."""
        for _ in range(AFTER_CANCEL_EVENTS):
            event = next(events, None)
            if event is None:
                break
            self._post(job, event)
            if isinstance(event, Finished):
                return
        self._post(job, Finished("cancelled"))

    def _release(self) -> None:
        self.stop_api_server(timeout=2.0)  # API requests use the engine: stop them first
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.unload()


def _server_log(line: str) -> None:
    """The API server's lines: failures to the log file, requests only at debug level."""
    api_log = logging.getLogger("grok_desktop.api")
    if "failed" in line or "error" in line.lower():
        api_log.warning("%s", line)
    else:
        api_log.debug("%s", line)


def fit_for_engine(engine: EngineLike, messages: list[ChatMessage], params: GenerationParams,
                   policy: str, continue_text: str | None = None) -> ContextFit:
    """`app.context.fit_context` with the engine's tokenizer and context length; the text of
    a reply being continued counts as part of the last message."""
    extra = 0
    if continue_text:
        extra = engine.count_tokens([{"role": "assistant", "content": continue_text}])
    limit = engine.info.context_length
    return fit_context(messages, lambda m: engine.count_tokens(m) + extra, limit, policy,
                       reply_reserve(params.max_tokens, limit))


def _with_eta(event: Progress, started: float) -> Progress:
    """Fill in the time left from the rate so far when the engine did not."""
    if event.eta_s is not None or event.done <= 0 or event.total <= 0:
        return event
    elapsed = time.monotonic() - started
    eta = elapsed / event.done * max(event.total - event.done, 0)
    return Progress(event.stage, event.done, event.total, eta)


@contextlib.contextmanager
def _inference_mode() -> Iterator[Any]:
    """torch.inference_mode for the whole engine thread (torch is imported here, not above)."""
    try:
        import torch
    except ImportError:  # a remote backend needs no torch
        yield None
        return
    with torch.inference_mode():
        yield torch
