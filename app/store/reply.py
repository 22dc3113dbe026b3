"""ReplyWriter: what the GUI and `grok-desktop ask` feed streamed tokens to.

It keeps the reply text and writes it to its `streaming` row at least every 250 ms (when a token
arrives 250 ms or more after the last write), so a crash or kill -9 loses at most the tokens of
the last 250 ms plus one token gap. The caller drives it; it starts no thread of its own (a GUI
can call `flush_if_due()` from a timer as well).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.messages import Finished, GenerationStats, Token

if TYPE_CHECKING:
    from app.store.store import Store

WRITE_INTERVAL_S = 0.25


class ReplyWriter:
    """Accumulates one assistant reply and keeps its database row current."""

    def __init__(
        self,
        store: Store,
        message_id: int,
        *,
        text: str = "",
        interval_s: float = WRITE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.message_id = message_id
        self.interval_s = interval_s
        self._clock = clock
        self._parts = [text] if text else []
        self._last_write = clock()
        self._dirty = False
        self.writes = 0  # how many streaming updates reached the database
        self.done = False

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def add(self, piece: str) -> None:
        """Append streamed text; writes the row when the last write is 250 ms old."""
        if piece:
            self._parts.append(piece)
            self._dirty = True
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self._dirty and self._clock() - self._last_write >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the text so far now (raises StorageError when the disk is full or read-only)."""
        if not self._dirty:
            return
        self.store.update_reply(self.message_id, self.text)
        self._dirty = False
        self._last_write = self._clock()
        self.writes += 1

    def feed(self, event: Token | Finished) -> None:
        """Take one engine event: a Token's text, or the Finished that completes the row."""
        if isinstance(event, Token):
            self.add(event.text)
        else:
            self.finish(event.reason, event.stats, getattr(event, "seed", None))

    def finish(
        self, reason: str, stats: GenerationStats | None = None, seed: int | None = None
    ) -> None:
        """Store the whole text as `complete` with its finish reason (stop, length, cancelled)."""
        self.store.finish_reply(self.message_id, self.text, reason, stats, seed)
        self._finished()

    def fail(self, error: str) -> None:
        """Store the text so far with status `error` and the one-line reason."""
        self.store.fail_reply(self.message_id, self.text, error)
        self._finished()

    def interrupt(self) -> None:
        """Store the text so far as `interrupted` (it can be continued or discarded later)."""
        self.store.interrupt_reply(self.message_id, self.text)
        self._finished()

    def _finished(self) -> None:
        self._dirty = False
        self.done = True
