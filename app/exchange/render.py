"""Text helpers shared by the exporters: fences, headings, times.

Message text is Markdown as the model wrote it. Code blocks are kept byte for byte; the only
repair is closing a fence left open by a reply that was cut off, so the rest of an exported
document is not swallowed into a code block.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from app.exchange.markup import close_open_fences, fence_for  # noqa: F401
from app.store.conversation import Conversation, Message

ROLE_LABELS = {"user": "You", "system": "System"}
STATUS_NOTES = {
    "interrupted": "This reply was cut off (the app stopped while it was being written).",
    "streaming": "This reply was still being written when exported.",
    "error": "This reply stopped with an error",
}


def format_time(seconds: float) -> str:
    """Local wall-clock time for readers: 2024-11-02 09:15."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M")


def speaker(message: Message) -> str:
    if message.role == "assistant":
        return (message.model or {}).get("name") or "Assistant"
    return ROLE_LABELS.get(message.role, message.role)


def heading_details(conv: Conversation, message: Message) -> list[str]:
    """Time, branch position and generation facts shown next to a speaker name."""
    parts = [format_time(message.created_at)]
    index, count = conv.sibling_position(message.id)
    if count > 1:
        parts.append(f"version {index} of {count}")
    stats = message.stats or {}
    if stats.get("completion_tokens"):
        parts.append(f"{stats['completion_tokens']} tokens")
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:.1f} tok/s")
    if message.finish_reason in ("length", "cancelled"):
        parts.append(
            {"length": "stopped at the length limit", "cancelled": "stopped"}[message.finish_reason]
        )
    return parts


def status_note(message: Message) -> str:
    """A sentence for a reply that is not complete, or ''."""
    note = STATUS_NOTES.get(message.status, "")
    if message.status == "error":
        note += f": {message.error}" if message.error else "."
    return note


def slug(title: str, fallback: str) -> str:
    """A safe file name stem from a title."""
    stem = re.sub(r"[^\w\- ]+", "", title, flags=re.UNICODE).strip().replace(" ", "-")
    return (stem[:60].strip("-") or fallback).lower()
