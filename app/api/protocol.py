"""The OpenAI wire format for app/api/server.py: request bodies in, completion objects out.

`parse_job` checks a chat-completions or completions body and turns it into prompt ids and
`GenerationParams` (rules in app/api/server.py's docstring), raising `ApiError` (an HTTP status and
OpenAI's error JSON) for anything it cannot serve. `Reply` builds the answer objects: whole
(`chat.completion`, `text_completion`) and streamed (`chat.completion.chunk` pieces).
No HTTP, no threads here.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from app.engine.chat_format import STOP_STRINGS
from app.messages import (
    Finished,
    GenerationParams,
    GenerationStats,
    ModelInfo,
    ReplyStream,
)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
REFUSED = ("tools", "functions", "logprobs", "top_logprobs", "echo", "suffix")
NUMBERS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float,
           "repetition_penalty": float, "seed": int}


class ServedEngine(Protocol):
    """What the server needs from app.engine.engine.Engine."""

    info: ModelInfo
    context_length: int
    tokenizer: Any  # .encode(text) -> list[int]

    def chat_prompt_ids(self, messages: list[dict], continue_text: str | None = None,
                        ) -> list[int]: ...

    def stream_ids(self, ids: list[int], params: GenerationParams,
                   cancel: threading.Event | None = None,
                   stop_strings: tuple[str, ...] = ()) -> ReplyStream: ...


class ApiError(Exception):
    """An HTTP error answer in OpenAI's error format."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param,
                          "code": None}}


# ---- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    chat: bool
    prompt_ids: list[int]
    params: GenerationParams
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse_job(body: Any, engine: ServedEngine, chat: bool) -> Job:
    """Check a request body and turn it into the prompt ids and settings to generate with."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in REFUSED:
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server", param=name)
    if body.get("n", 1) != 1:
        raise ApiError(400, "'n' must be 1: this server makes one choice", param="n")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise ApiError(400, "only text responses are supported", param="response_format")
    stops = _stops(body.get("stop"))
    if chat:
        messages = _messages(body.get("messages"))
        ids = engine.chat_prompt_ids(messages, _continue(body, messages))
        stops = STOP_STRINGS + stops
    else:
        ids = _prompt_ids(body.get("prompt"), engine)
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return Job(chat, ids, _params(body, engine.context_length), stops,
               body.get("stream") is True, usage)


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects",
                       param="messages")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant",
                           param="messages")
        turns.append({"role": ROLES[role], "content": _text(message.get("content"), i)})
    return turns


def _continue(body: dict, turns: list[dict]) -> str | None:
    """SGLang's continue_final_message: a last assistant message is a reply to carry on."""
    if body.get("continue_final_message") is True and turns[-1]["role"] == "assistant":
        return turns.pop()["content"]
    return None


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{i}].content must be text (a string or text parts); images "
                   "and other parts are not supported", param="messages")


def _prompt_ids(prompt: Any, engine: ServedEngine) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return engine.tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids",
                   param="prompt")


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if (not isinstance(stops, list) or len(stops) > 16
            or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, "'stop' must be a string or a list of up to 16 non-empty strings",
                       param="stop")
    return tuple(stops)


def _number(body: dict, name: str, kind: type) -> int | float | None:
    value = body.get(name)
    right = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if value is not None and (isinstance(value, bool) or not right):
        what = "an integer" if kind is int else "a number"
        raise ApiError(400, f"'{name}' must be {what}", param=name)
    return value


def _params(body: dict, context_length: int) -> GenerationParams:
    values: dict[str, Any] = {name: value for name, kind in NUMBERS.items()
                              if (value := _number(body, name, kind)) is not None}
    values["top_k"] = max(values.get("top_k", 0), 0)  # -1 means off (SGLang, vLLM)
    if not 0 <= values.get("seed", 0) < 2**63:
        raise ApiError(400, "'seed' must be between 0 and 2**63 - 1", param="seed")
    limit = _number(body, "max_completion_tokens", int)
    limit = _number(body, "max_tokens", int) if limit is None else limit
    values["max_tokens"] = context_length if limit is None else limit  # engine caps it to room
    try:
        return GenerationParams(**values)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc


# ---- answers -------------------------------------------------------------------------------


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


@dataclass(frozen=True)
class Reply:
    """Names one answer and builds its JSON objects (chat or text completion)."""

    chat: bool
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, chat: bool, model: str) -> Reply:
        prefix = "chatcmpl-" if chat else "cmpl-"
        return cls(chat, model, prefix + uuid.uuid4().hex[:24], int(time.time()))

    def _object(self, kind: str, choice: dict, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [choice] if choice else [], **extra}

    def whole(self, text: str, done: Finished) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": done.reason}
            return self._object("chat.completion", choice, usage=_usage(done.stats))
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.reason}
        return self._object("text_completion", choice, usage=_usage(done.stats))

    def piece(self, text: str | None, finish: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._object("chat.completion.chunk", choice)
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._object("text_completion", choice)

    def usage_piece(self, stats: GenerationStats) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._object(kind, {}, usage=_usage(stats))
