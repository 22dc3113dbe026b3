"""Text helpers shared by the exporters: fenced-code splitting, fences, headings, times.

Message text is Markdown as the model wrote it. Code blocks are kept byte for byte; the only
repair is closing a fence left open by a reply that was cut off, so the rest of an exported
document is not swallowed into a code block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from app.conversation import Conversation, Message

# CommonMark fences: up to 3 spaces, then 3+ backticks or 3+ tildes, then an info string.
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")

ROLE_LABELS = {"user": "You", "system": "System"}
STATUS_NOTES = {
    "interrupted": "This reply was cut off (the app stopped while it was being written).",
    "streaming": "This reply was still being written when exported.",
    "error": "This reply stopped with an error",
}


@dataclass(frozen=True)
class Segment:
    """A run of message text: prose, or one fenced code block (body without its fences)."""

    kind: str  # "text" | "code"
    text: str
    lang: str = ""
    fence: str = ""  # the opening fence, e.g. "```" or "~~~~"
    closed: bool = True  # False for a code block the message left open


def split_fences(text: str) -> list[Segment]:
    """Split Markdown into prose and fenced code blocks, CommonMark-style."""
    segments: list[Segment] = []
    prose: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None or (match.group(1)[0] == "`" and "`" in match.group(2)):
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            segments.append(Segment("text", "\n".join(prose)))
            prose = []
        fence, lang = match.group(1), match.group(2).strip().split(" ")[0]
        end = _closing_line(lines, i + 1, fence)
        body = "\n".join(lines[i + 1 : end])
        segments.append(Segment("code", body, lang, fence, closed=end < len(lines)))
        i = end + 1
    if prose:
        segments.append(Segment("text", "\n".join(prose)))
    return segments


def _closing_line(lines: list[str], start: int, fence: str) -> int:
    closer = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    for j in range(start, len(lines)):
        if closer.match(lines[j]):
            return j
    return len(lines)


def close_open_fences(text: str) -> str:
    """The text unchanged, plus a closing fence if it ends inside an unclosed code block."""
    segments = split_fences(text)
    if not segments or segments[-1].kind != "code" or segments[-1].closed:
        return text
    return text.rstrip("\n") + "\n" + segments[-1].fence + "\n"


def fence_for(text: str, char: str = "`") -> str:
    """A fence longer than any run of `char` in `text`, so the text can sit inside verbatim."""
    runs = re.findall(rf"{re.escape(char)}+", text)
    return char * max(3, max((len(r) for r in runs), default=0) + 1)


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
