"""Remote engine: an OpenAI-compatible chat-completions server (SGLang, vLLM, our `serve`).

`RemoteBackend` has the local engine's interface (info, count_tokens, stream_chat,
stream_prompt, unload) and yields the same events, so the worker holds it in place of an Engine.
One httpx connection per reply (transport.py: proxies, CA certificates, the error wording),
server-sent events parsed by httpx-sse.

How a reply ends:
* The server finishes (finish_reason stop or length): Token events, then Finished(reason,
  stats). Stats come from the stream's `usage` chunk (asked for with stream_options) and our
  own clock; Token.token_ids is empty (servers send text only).
* `cancel` is set: with a `CancelEvent` (what the worker passes) the thread that sets it shuts
  the socket down at once, so Stop works even while the server is silent in a long prefill
  (SGLang sends its response headers only after the prefill); a plain threading.Event is
  checked after each event. SGLang and vLLM abort a request whose client went away.
  The tokens received so far are followed by Finished("cancelled", stats).
* The connection drops, the server is silent for longer than `read_timeout_s`, or it aborts
  the request: the tokens received so far are yielded, then `RemoteDisconnected` is raised.
  It is a `UserError` (one line for the user) whose `continuable` attribute is True: the
  caller keeps the text as an `interrupted` reply and may resume it with `continue_text`.
* Nothing could be generated (bad URL, unreachable, refused, bad key, HTTP error): a
  `RemoteError` before any Token; its `kind` names the problem (see connection_test.py).

Continuing (`continue_text`): by default the partial reply is sent as a final assistant message
with `continue_final_message: true` (SGLang, vLLM and our `serve`; vLLM also wants
`add_generation_prompt: false`, which SGLang ignores). A server without that extension would
start a new turn instead; for it, `continue_via="completions"` renders Grok-2's chat template
here and asks `/v1/completions` to carry on the raw prompt, which every server above offers.

`count_tokens` is an estimate (the tokenizer is on the server): it only sizes the context meter.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from app.backends.transport import (
    GROK2_STOPS,
    Opened,
    RemoteConfig,
    RemoteDisconnected,
    RemoteError,
    RequestCancelled,
    open_request,
    parse_base_url,
    server_message,
)
from app.messages import (
    Finished,
    FinishReason,
    GenerationParams,
    GenerationStats,
    ModelInfo,
    ReplyStream,
    Token,
)

__all__ = ["GROK2_STOPS", "RemoteBackend", "RemoteConfig", "RemoteDisconnected", "RemoteError"]

CHARS_PER_TOKEN = 3.5  # Grok-2's tokenizer on English prose; only for the context estimate

ChatMessage = dict[str, str]


# ---- server-sent events --------------------------------------------------------------------


def stream_data(response: httpx.Response) -> Iterator[str]:
    """The data of each server-sent event of a streaming response, in order (httpx-sse's
    parser: comments and other fields skipped, an event cut off by the end of the stream
    dropped; events without data skipped). SSEError if the response is not an event stream."""
    for event in EventSource(response).iter_sse():
        if event.data:
            yield event.data


def sse_data(lines: Iterable[bytes]) -> Iterator[str]:
    """`stream_data` over raw bytes (lines or any chunks of an event stream)."""
    response = httpx.Response(200, headers={"Content-Type": "text/event-stream"},
                              content=iter(lines))
    yield from stream_data(response)


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    finish: str | None = None  # the server's finish_reason
    usage: dict | None = None
    error: str = ""  # an error event sent in the middle of the stream


def read_chunk(payload: str) -> Chunk:
    """One `chat.completion.chunk` or `text_completion` event (choice 0)."""
    try:
        chunk = json.loads(payload)
    except ValueError as exc:
        raise RemoteError(f"the server streamed something that is not JSON: {payload[:80]!r}",
                          "not_openai") from exc
    if not isinstance(chunk, dict):
        raise RemoteError("the server streamed JSON that is not a chunk object", "not_openai")
    if "error" in chunk or chunk.get("object") == "error":
        return Chunk(error=server_message(payload) or "unknown error")
    choices = chunk.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    delta = choice.get("delta") or {}
    text = delta.get("content") if "delta" in choice else choice.get("text")
    usage = chunk.get("usage")
    return Chunk(text if isinstance(text, str) else "", choice.get("finish_reason"),
                 usage if isinstance(usage, dict) else None)


# ---- the backend ---------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


def _render(messages: list[ChatMessage], continue_text: str | None = None) -> str:
    """Grok-2's chat prompt. Imported here, so that the GUI may import app.backends (for
    RemoteConfig and check_connection) without loading anything from app.engine."""
    from app.engine.chat_format import render_chat

    return render_chat(messages, continue_text=continue_text)


class RemoteBackend:
    """Chat with a model on an OpenAI-compatible server; same interface as app.engine Engine.
    Build it with `app.backends.connect(config)`, which checks the server first."""

    def __init__(self, config: RemoteConfig, context_length: int | None = None) -> None:
        self.config = config
        self.endpoint = parse_base_url(config.base_url)
        identity = f"{config.base_url}|{config.model}".encode()
        self.info = ModelInfo(
            name=f"{config.model or 'remote model'} (remote)", folder=config.base_url,
            config_hash=hashlib.sha256(identity).hexdigest()[:16],  # no config.json here
            quantization="remote", device=f"remote {self.endpoint.label}",
            context_length=context_length or config.context_length)
        self.context_length = self.info.context_length

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        """An estimate from the length of the rendered prompt (never a network call)."""
        return estimate_tokens(_render(messages))

    def unload(self) -> None:
        """Nothing is held between requests (one connection per reply)."""

    def stream_chat(self, messages: list[ChatMessage], params: GenerationParams,
                    cancel: threading.Event | None = None,
                    continue_text: str | None = None) -> ReplyStream:
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        estimate = self.count_tokens(turns) + estimate_tokens(continue_text or "")
        if continue_text is not None and self.config.continue_via == "completions":
            prompt = _render(turns, continue_text)
            body: dict[str, Any] = {"prompt": prompt, "stop": list(self.config.stop)}
            return self._stream("completions", body, params, cancel, estimate)
        body = {"messages": turns, "stop": list(self.config.stop)}
        if continue_text is not None:
            turns.append({"role": "assistant", "content": continue_text})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return self._stream("chat/completions", body, params, cancel, estimate)

    def stream_prompt(self, prompt: str, params: GenerationParams,
                      cancel: threading.Event | None = None) -> ReplyStream:
        """Raw completion of `prompt` (no chat template, no stop strings)."""
        return self._stream("completions", {"prompt": prompt}, params, cancel,
                            estimate_tokens(prompt))

    def request_body(self, body: dict[str, Any], params: GenerationParams) -> dict[str, Any]:
        full = {"model": self.config.model, **body, "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": params.temperature, "top_p": params.top_p,
                "max_tokens": params.max_tokens}
        # SGLang/vLLM extensions: sent only when they change something, so that a strict
        # server that rejects them still works with the default settings.
        if params.top_k > 0:
            full["top_k"] = params.top_k
        if params.min_p > 0:
            full["min_p"] = params.min_p
        if params.repetition_penalty != 1.0:
            full["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            full["seed"] = params.seed
        return full

    def _stream(self, tail: str, body: dict[str, Any], params: GenerationParams,
                cancel: threading.Event | None, prompt_estimate: int,
                ) -> ReplyStream:
        clock = _Clock(time.perf_counter(), prompt_estimate)
        cancelled = cancel.is_set if cancel is not None else (lambda: False)
        try:
            opened = open_request(self.config, "POST", tail, self.request_body(body, params),
                                  cancel=cancel, accept="text/event-stream")
        except RequestCancelled:  # stopped during the prefill, before any answer
            yield Finished("cancelled", clock.stats(), params.seed)
            return
        try:
            finish = yield from self._read(opened, clock, cancelled)
        except SSEError as exc:  # 2xx, but not an event stream (an httpx.TransportError)
            raise RemoteError(f"{self.endpoint.label} did not answer with a stream of "
                              f"server-sent events ({exc}); it is not an OpenAI-compatible "
                              "server", "not_openai") from exc
        except httpx.HTTPError as exc:
            if not cancelled():
                raise RemoteDisconnected(self._dropped(exc), clock.stats()) from exc
            finish = "cancelled"
        finally:
            opened.close()
        if cancelled():
            finish = "cancelled"
        if finish is None:
            raise RemoteDisconnected(f"{self.endpoint.label} closed the connection before the "
                                     "reply was finished; it can be continued", clock.stats())
        yield Finished(finish, clock.stats(), params.seed)

    def _read(self, opened: Opened, clock: _Clock,
              cancelled: Callable[[], bool]) -> Generator[Token, None, FinishReason | None]:
        """Yield the reply's text; return our finish reason, or None if the stream was cut."""
        finish: FinishReason | None = None
        for payload in stream_data(opened.response):
            if payload.strip() == "[DONE]":
                return finish or "stop"
            chunk = read_chunk(payload)
            if chunk.error or chunk.finish == "abort":
                raise RemoteDisconnected(f"{self.endpoint.label} stopped the reply: "
                                         f"{chunk.error or 'aborted'}", clock.stats())
            clock.usage = chunk.usage or clock.usage
            if chunk.text:
                clock.count()
                yield Token(chunk.text)
            if chunk.finish:
                finish = "length" if chunk.finish == "length" else "stop"
            if cancelled():
                return "cancelled"
        return finish

    def _dropped(self, exc: BaseException) -> str:
        if isinstance(exc, httpx.TimeoutException):
            return (f"{self.endpoint.label} sent nothing for {self.config.read_timeout_s:g} s; "
                    "the reply so far is kept and can be continued")
        detail = str(exc) or type(exc).__name__
        return (f"the connection to {self.endpoint.label} dropped mid-reply ({detail}); the "
                "reply so far is kept and can be continued")


@dataclass
class _Clock:
    """Client-side timing; token counts from the server's usage chunk when it sends one."""

    start: float
    prompt_estimate: int
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    usage: dict | None = None

    def count(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last
        self.chunks += 1

    def stats(self) -> GenerationStats:
        now = time.perf_counter()
        usage = self.usage or {}
        prompt = usage.get("prompt_tokens") or self.prompt_estimate
        done = usage.get("completion_tokens") or self.chunks
        decode_s = (self.last or now) - (self.first or now)
        rate = (done - 1) / decode_s if done > 1 and decode_s > 0 else 0.0
        ttft = (self.first or now) - self.start
        return GenerationStats(int(prompt), int(done), ttft, rate, now - self.start)
