"""Conversation and Message dataclasses and the message-tree logic (no SQL, no Qt, no torch).

A conversation is a tree of messages linked by `parent_id`: editing a user message or
regenerating a reply adds a sibling and keeps the old one. `current_leaf_id` remembers which
branch the user is looking at; the current path is that leaf and its ancestors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Literal

from app.messages import GenerationParams

Role = Literal["system", "user", "assistant"]
Status = Literal["complete", "streaming", "interrupted", "error"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
STATUSES: tuple[str, ...] = ("complete", "streaming", "interrupted", "error")
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "cancelled")
TITLE_CHARS = 60


@dataclass(frozen=True)
class Message:
    """One row of the tree. Assistant rows also carry what produced them."""

    id: int
    conversation_id: int
    parent_id: int | None
    role: str
    content: str
    status: str
    created_at: float  # unix seconds, millisecond resolution
    updated_at: float
    finish_reason: str | None = None  # stop | length | cancelled (None while not finished)
    model: dict[str, Any] | None = None  # app.messages.ModelInfo as a dict
    params: dict[str, Any] | None = None  # app.messages.GenerationParams as a dict
    seed: int | None = None
    stats: dict[str, Any] | None = None  # app.messages.GenerationStats as a dict
    error: str | None = None


@dataclass(frozen=True)
class ConversationSummary:
    """What the sidebar and `grok-desktop list` show; no messages."""

    id: int
    uuid: str
    title: str
    pinned: bool
    created_at: float
    updated_at: float
    deleted_at: float | None = None  # set while the conversation is in the trash


@dataclass(frozen=True)
class Conversation:
    """A conversation with every message of every branch, ordered by id (parents first)."""

    id: int
    uuid: str
    title: str
    pinned: bool
    system_prompt: str
    params: dict[str, Any]
    created_at: float
    updated_at: float
    current_leaf_id: int | None
    deleted_at: float | None
    messages: tuple[Message, ...] = ()

    @cached_property
    def _by_id(self) -> dict[int, Message]:
        return {m.id: m for m in self.messages}

    @cached_property
    def _children(self) -> dict[int | None, list[Message]]:
        children: dict[int | None, list[Message]] = {}
        for m in self.messages:
            children.setdefault(m.parent_id, []).append(m)
        return children

    def message(self, message_id: int) -> Message:
        try:
            return self._by_id[message_id]
        except KeyError:
            raise KeyError(f"message {message_id} is not in conversation {self.id}") from None

    def current_path(self) -> list[Message]:
        """Root-to-leaf messages of the branch the user is looking at."""
        return path_to(self.messages, self.current_leaf_id)

    def children(self, message_id: int | None) -> list[Message]:
        return list(self._children.get(message_id, []))

    def siblings(self, message_id: int) -> list[Message]:
        """The message and its alternatives (same parent), oldest first: the "< 2/3 >" arrows."""
        return self.children(self.message(message_id).parent_id)

    def sibling_position(self, message_id: int) -> tuple[int, int]:
        """(1-based index, count) of the message among its siblings."""
        ids = [m.id for m in self.siblings(message_id)]
        return ids.index(message_id) + 1, len(ids)

    def generation_params(self, default: GenerationParams | None = None) -> GenerationParams:
        """The conversation's own settings over `default` (the app's settings): a setting the
        conversation does not store comes from `default`."""
        if default is None:
            return GenerationParams.from_dict(self.params)
        return GenerationParams.from_dict({**default.to_dict(), **self.params})

    def chat_messages(self, upto_id: int | None = None) -> list[dict[str, str]]:
        """The engine's input: system prompt, then the path ending at `upto_id` (or the leaf)."""
        leaf = self.current_leaf_id if upto_id is None else upto_id
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        out += [{"role": m.role, "content": m.content} for m in path_to(self.messages, leaf)]
        return out


def path_to(messages: tuple[Message, ...] | list[Message], leaf_id: int | None) -> list[Message]:
    """`leaf_id` and its ancestors, root first; empty when `leaf_id` is None."""
    by_id = {m.id: m for m in messages}
    path: list[Message] = []
    node = by_id.get(leaf_id) if leaf_id is not None else None
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id is not None else None
    path.reverse()
    return path


def newest_leaf_under(messages: tuple[Message, ...] | list[Message], message_id: int) -> int:
    """Follow the newest child down from `message_id`: where switching to a branch lands."""
    children: dict[int | None, list[int]] = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m.id)
    node = message_id
    while children.get(node):
        node = max(children[node])
    return node


def make_title(text: str) -> str:
    """A one-line title from the first user message, without Markdown emphasis, heading or
    code marks (a pasted code block becomes its first words)."""
    text = re.sub(r"^ {0,3}(#{1,6}|>|[-*+]|\d+\.)\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"(`{3,}|~{3,})[^\n]*", " ", text)
    text = re.sub(r"(\*\*|\*|`|~~)(?=\S)(.+?)(?<=\S)\1", r"\2", text)
    text = re.sub(r"(?<!\w)(__|_)(?=\S)(.+?)(?<=\S)\1(?!\w)", r"\2", text)
    line = " ".join(text.split())
    if len(line) <= TITLE_CHARS:
        return line or "New conversation"
    return line[: TITLE_CHARS - 1].rstrip() + "…"


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def iso_from_ms(ms: int) -> str:
    """UTC ISO 8601 with milliseconds, e.g. 2025-01-31T12:00:00.123Z (inverse: ms_from_iso)."""
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def ms_from_iso(text: str) -> int:
    """Parse an ISO 8601 time (with or without zone; naive means UTC) to unix milliseconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    seconds = int(dt.replace(microsecond=0).timestamp())
    return seconds * 1000 + dt.microsecond // 1000
