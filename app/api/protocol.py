"""The OpenAI wire format for app/api/server.py: request bodies in, completion objects out.

`parse_body` reads the JSON (refusing NaN, Infinity and lone surrogates anywhere) and
`parse_job` checks a chat-completions or completions body and turns it into prompt ids and
`GenerationParams`, raising `ApiError` (an HTTP status and OpenAI's error JSON, with `param`
naming the JSON path) for anything it cannot serve. `Reply` builds the answer objects: whole
(`chat.completion`, `text_completion`) and streamed (`chat.completion.chunk` pieces).
No HTTP, no threads here.

What a body may hold (every optional field also takes `null`, meaning its default, as in the
OpenAI API reference; a wrong type or a value out of range is 400 naming the field and range):

- chat: `messages` (required; roles system, developer = system, user, assistant; content a
  string, a list of text parts, or null), SGLang's `continue_final_message` (a last assistant
  message is carried on); completions: `prompt` (a non-empty string, a list of one string, or
  a list of token ids inside the vocabulary).
- sampling: `temperature` >= 0 (0: greedy; below 1e-5 is greedy too, as in vLLM), `top_p` in
  (0, 1], `top_k` >= -1 (0 or -1: off), `min_p` in [0, 1), `repetition_penalty` in
  [0.01, 2] (1: off), `max_tokens` / `max_completion_tokens` >= 1 (absent: the rest of the
  context), `seed` in [0, 2**63), `stop` (a string or up to 16), `stream`,
  `stream_options.include_usage`. A missing field takes the app's default (`GenerationParams`).
- accepted and ignored: `model` (one model), `frequency_penalty` and `presence_penalty` (in
  [-2, 2]), `logit_bias`, `user`, and unknown fields. Refused with 400: `n` or `best_of` other
  than 1, `logprobs`, `top_logprobs`, `echo`, `suffix`, `tools`, `functions`, and response
  formats other than text.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable
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
MAX_STOPS = 16


class ServedEngine(Protocol):
    """What the server needs from app.engine.engine.Engine (`tokenizer.vocab_size`, when
    present, bounds the token ids of /v1/completions)."""

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


# ---- reading the body ----------------------------------------------------------------------


def parse_body(data: bytes) -> Any:
    """The JSON value of a request body (UTF-8, -16 or -32). ApiError 400 when it is not JSON,
    nests too deeply, or holds NaN, Infinity (also 1e999) or a lone surrogate anywhere."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON: it nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    _check_values(value)
    return value


def _check_values(value: Any) -> None:
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            shown = "NaN" if math.isnan(item) else "Infinity" if item > 0 else "-Infinity"
            raise ApiError(400, f"{_name(path)} is {shown} (or too large a number), which JSON "
                           "does not allow: send a finite number", param=path or None)
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, path)
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"{_name(path)} holds a lone surrogate ({text[exc.start]!r}) at "
                       f"character {exc.start}: send valid Unicode (escape pairs like "
                       "\\ud83d\\ude00 together)", param=path or None) from None


def _name(path: str) -> str:
    return f"'{path}'" if path else "the request body"


def _kind(value: Any) -> str:
    """The JSON type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _wrong(path: str, want: str, value: Any) -> ApiError:
    return ApiError(400, f"'{path}' must be {want} (got {_kind(value)})", param=path)


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
    """Check a request body and turn it into the prompt ids and settings to generate with.
    Raises ApiError (400) naming the JSON path of the first bad field and what it allows."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object (got {_kind(body)})")
    for name in REFUSED:
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server", param=name)
    for name in ("n", "best_of"):
        if _integer(body, name) not in (None, 1):
            raise ApiError(400, f"'{name}' must be 1: this server makes one choice", param=name)
    _response_format(body.get("response_format"))
    _optional(body, "model", str, "a string")
    _optional(body, "user", str, "a string")
    _optional(body, "logit_bias", dict, "an object")
    stream = _optional(body, "stream", bool, "true or false") is True
    options = _optional(body, "stream_options", dict, "an object") or {}
    usage = _optional(options, "include_usage", bool, "true or false", "stream_options.")
    stops = _stops(body.get("stop"))
    if chat:
        messages = _messages(body.get("messages"))
        ids = engine.chat_prompt_ids(messages, _continue(body, messages))
        stops = STOP_STRINGS + stops
    else:
        ids = _prompt_ids(body.get("prompt"), engine)
    return Job(chat, ids, _params(body, engine.context_length), stops, stream, usage is True)


def _optional(body: dict, name: str, kind: type, want: str, prefix: str = "") -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind)
                              or (kind is not bool and isinstance(value, bool))):
        raise _wrong(prefix + name, want, value)
    return value


def _response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _wrong("response_format", "an object like {\"type\": \"text\"}", value)
    if value.get("type") != "text":
        raise ApiError(400, "only text responses are supported ('response_format.type' must "
                       "be \"text\")", param="response_format.type")


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects "
                       f"(got {_kind(messages)})", param="messages")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong(where, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"'{where}.role' must be system, developer, user or assistant "
                           f"(got {role!r})", param=f"{where}.role")
        _optional(message, "name", str, "a string", f"{where}.")
        turns.append({"role": ROLES[role], "content": _text(message.get("content"), where)})
    return turns


def _continue(body: dict, turns: list[dict]) -> str | None:
    """SGLang's continue_final_message: a last assistant message is a reply to carry on."""
    flag = _optional(body, "continue_final_message", bool, "true or false")
    if flag is True and turns[-1]["role"] == "assistant":
        return turns.pop()["content"]
    return None


def _text(content: Any, where: str) -> str:
    """A message's text: a string, text parts joined, or "" for null."""
    if content is None or isinstance(content, str):
        return content or ""
    path = f"{where}.content"
    if not isinstance(content, list):
        raise _wrong(path, "text: a string or a list of text parts", content)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _wrong(f"{path}[{j}]", "a text part {\"type\": \"text\", \"text\": ...}",
                         part)
        if part.get("type") != "text":
            raise ApiError(400, f"'{path}[{j}].type' is {part.get('type')!r}: only text parts "
                           "are supported (no images or other parts)", param=f"{path}[{j}].type")
        text = part.get("text")
        if not isinstance(text, str):
            raise _wrong(f"{path}[{j}].text", "a string", text)
        texts.append(text)
    return "".join(texts)


def _prompt_ids(prompt: Any, engine: ServedEngine) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "'prompt' must not be empty", param="prompt")
        return engine.tokenizer.encode(prompt)
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids "
                       f"(got {_kind(prompt) if prompt != [] else 'an empty list'})",
                       param="prompt")
    vocab = getattr(engine.tokenizer, "vocab_size", None)
    for i, token in enumerate(prompt):
        if isinstance(token, (str, list)):
            raise ApiError(400, "'prompt' must be one prompt: a string or a list of token ids "
                           "(batches of prompts are not supported)", param=f"prompt[{i}]")
        if isinstance(token, bool) or not isinstance(token, int):
            raise _wrong(f"prompt[{i}]", "a token id (an integer)", token)
        if token < 0 or (isinstance(vocab, int) and token >= vocab):
            top = f"0..{vocab - 1}" if isinstance(vocab, int) else "0 or more"
            raise ApiError(400, f"'prompt[{i}]' is {token}, outside the vocabulary: token ids "
                           f"are {top}", param=f"prompt[{i}]")
    return list(prompt)


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOPS} strings "
                       f"(got {_kind(stop) if not isinstance(stops, list) else len(stops)})",
                       param="stop")
    for i, text in enumerate(stops):
        where = "stop" if isinstance(stop, str) else f"stop[{i}]"
        if not isinstance(text, str) or not text:
            raise ApiError(400, f"'{where}' must be a non-empty string (got "
                           f"{_kind(text) if text != '' else 'an empty string'})", param=where)
    return tuple(stops)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _wrong(name, "an integer", value)
    return value


def _number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _wrong(name, "a number", value)
    return value


def _check(name: str, value: float | None, ok: Callable[[Any], bool], allowed: str) -> None:
    if value is not None and not ok(value):
        raise ApiError(400, f"'{name}' must be {allowed} (got {value!r})", param=name)


def _params(body: dict, context_length: int) -> GenerationParams:
    """GenerationParams from the sampling fields; ApiError 400 naming a value out of range."""
    temperature, top_p = _number(body, "temperature"), _number(body, "top_p")
    min_p, penalty = _number(body, "min_p"), _number(body, "repetition_penalty")
    top_k, seed = _integer(body, "top_k"), _integer(body, "seed")
    _check("temperature", temperature, lambda t: t >= 0, ">= 0 (0: greedy)")
    _check("top_p", top_p, lambda p: 0 < p <= 1, "in (0, 1]")
    _check("top_k", top_k, lambda k: k >= -1, ">= 0 (0 or -1: off)")
    _check("min_p", min_p, lambda m: 0 <= m < 1, "in [0, 1) (0: off)")
    _check("repetition_penalty", penalty, lambda r: 0.01 <= r <= 2,
           "between 0.01 and 2 (1: off)")
    for name in ("frequency_penalty", "presence_penalty"):  # accepted, not applied
        _check(name, _number(body, name), lambda v: -2 <= v <= 2, "between -2 and 2")
    _check("seed", seed, lambda v: 0 <= v < 2**63, "between 0 and 2**63 - 1")
    limit = _integer(body, "max_completion_tokens")
    _check("max_completion_tokens", limit, lambda n: n >= 1, ">= 1")
    if limit is None:
        limit = _integer(body, "max_tokens")
        _check("max_tokens", limit, lambda n: n >= 1, ">= 1")
    values: dict[str, Any] = {"max_tokens": context_length if limit is None else limit}
    if temperature is not None:
        values["temperature"] = float(temperature)  # the sampler treats < 1e-5 as greedy
    if top_p is not None:
        values["top_p"] = float(top_p)  # the sampler always keeps the most likely token
    if top_k is not None:
        values["top_k"] = max(top_k, 0)  # -1 means off (SGLang, vLLM)
    if min_p is not None:
        values["min_p"] = float(min_p)
    if penalty is not None:
        values["repetition_penalty"] = float(penalty)
    if seed is not None:
        values["seed"] = seed
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
