"""Plain frozen dataclasses shared by the engine, the worker, the store and the GUI.

No torch and no Qt here: this is the vocabulary the threads speak. The engine yields
`Token` and `Finished`; the worker adds `Progress`, `Loaded` and `Failed` and tags every event
with the id of the request it answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from app.validation import check_fields

FinishReason = Literal["stop", "length", "cancelled"]


class CancelEvent(threading.Event):
    """The Stop flag of one request: a threading.Event that also runs callbacks, in the thread
    that sets it. A backend blocked in a network read registers one that shuts its socket
    down, so Stop takes effect at once without a thread polling the flag. Engines that only
    call `is_set()` between steps treat it as a plain Event."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks_lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        with self._callbacks_lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` once when the event is set (now, if it is already set). Returns a
        function that unregisters it; callbacks must be quick and must not raise."""
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings. temperature 0 is greedy; top_k 0, top_p 1, min_p 0 disable those."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # types and finiteness first: NaN and true pass the range checks
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.min_p < 1:
            raise ValueError("min_p must be in [0, 1)")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        """From JSON data: unknown keys are ignored, missing keys take the default; raises
        ValueError naming the key for a wrong type, a non-finite number or a value out of range."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0  # time from request to first generated token
    tokens_per_s: float = 0.0  # decode rate after the first token
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model, recorded with every assistant message."""

    name: str  # e.g. "grok-2" or "Demo (tiny model, not Grok-2)"
    folder: str
    config_hash: str  # sha256 of config.json, first 16 hex digits
    quantization: str  # "bf16", "int8", "int4", "float32"...
    device: str  # where the weights live, for the status bar: "cuda", "cpu", "cuda+cpu"
    context_length: int
    is_demo: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """New text. `text` is always whole UTF-8 characters; ids are the tokens it came from."""

    text: str
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    stats: GenerationStats = field(default_factory=GenerationStats)
    seed: int | None = None  # the sampling seed actually used (drawn at random if none given)


# What an engine's stream_* methods return: Tokens, then one Finished. A generator, so a caller
# that stops reading early can close() it (the engine then releases its lock).
ReplyStream = Generator[Token | Finished, None, None]


@dataclass(frozen=True)
class Progress:
    stage: str  # human words: "reading headers", "loading weights", ...
    done: int
    total: int
    eta_s: float | None = None


@dataclass(frozen=True)
class Loaded:
    info: ModelInfo


@dataclass(frozen=True)
class Failed:
    error: str  # one line for the user
    detail: str = ""  # traceback or extra text for a "details" box
    continuable: bool = False  # the reply so far is kept as `interrupted` (a remote dropped)
