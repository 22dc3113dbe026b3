"""Export conversations: Markdown, JSON, self-contained HTML, plain text and PDF.

JSON is the lossless format (every branch, setting, model identity and stat; schema in
docs/export-schema.md, read back by app/exchange/importers.py). The readable formats show the branch the
user is looking at. One conversation goes to one file; several go to one JSON file or to a
folder with one file per conversation. Every file is written atomically (app.atomic: temp file, fsync, os.replace).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import APP_NAME, __version__
from app.atomic import atomic_write_bytes
from app.errors import UserError
from app.exchange.render import (
    close_open_fences,
    fence_for,
    format_time,
    heading_details,
    slug,
    speaker,
    status_note,
)
from app.store.conversation import Conversation, Message, iso_from_ms

if TYPE_CHECKING:
    from app.store.store import Store

FORMAT_NAME = "grok-desktop.conversations"
SCHEMA_VERSION = 1
FORMATS = ("md", "json", "html", "txt", "pdf")
_OPTIONAL = ("finish_reason", "model", "params", "seed", "stats", "error")


# ---- JSON ---------------------------------------------------------------------------------


def export_document(conversations: Sequence[Conversation]) -> dict[str, Any]:
    """The whole JSON export: a versioned envelope around the conversations."""
    return {
        "format": FORMAT_NAME,
        "version": SCHEMA_VERSION,
        "exported_at": _iso(datetime.now(timezone.utc).timestamp()),
        "app": f"{APP_NAME} {__version__}",
        "conversations": [conversation_to_json(c) for c in conversations],
    }


def conversation_to_json(conv: Conversation) -> dict[str, Any]:
    """Messages get local ids 1..n in tree order (parents first), so re-exports compare equal."""
    local = {m.id: i for i, m in enumerate(conv.messages, start=1)}
    out: dict[str, Any] = {
        "id": conv.uuid,
        "title": conv.title,
        "pinned": conv.pinned,
        "system_prompt": conv.system_prompt,
        "settings": conv.params,
        "created_at": _iso(conv.created_at),
        "updated_at": _iso(conv.updated_at),
        "current_message_id": (
            local.get(conv.current_leaf_id) if conv.current_leaf_id is not None else None
        ),
        "messages": [_message_to_json(m, local) for m in conv.messages],
    }
    if conv.deleted_at is not None:
        out["deleted_at"] = _iso(conv.deleted_at)
    return out


def _message_to_json(msg: Message, local: dict[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": local[msg.id],
        "parent_id": local[msg.parent_id] if msg.parent_id is not None else None,
        "role": msg.role,
        "content": msg.content,
        "status": msg.status,
        "created_at": _iso(msg.created_at),
        "updated_at": _iso(msg.updated_at),
    }
    for name in _OPTIONAL:
        value = getattr(msg, name)
        if value is not None:
            out["settings" if name == "params" else name] = value
    return out


def _iso(seconds: float) -> str:
    return iso_from_ms(round(seconds * 1000))


def to_json(conversations: Sequence[Conversation]) -> str:
    return (
        json.dumps(export_document(conversations), ensure_ascii=False, indent=2, allow_nan=False)
        + "\n"
    )


# ---- Markdown and plain text --------------------------------------------------------------


def to_markdown(conv: Conversation) -> str:
    """Readable Markdown of the current branch; message text (and its code) verbatim."""
    title = (conv.title or "Untitled conversation").replace("<", "\\<")  # not an HTML tag
    lines = [f"# {title}", "", f"*{_summary_line(conv)}*", ""]
    if conv.system_prompt:
        fence = fence_for(conv.system_prompt)
        lines += ["**System prompt**", "", f"{fence}text", conv.system_prompt, fence, ""]
    for msg in conv.current_path():
        details = " · ".join(heading_details(conv, msg))
        lines += ["---", "", f"### {speaker(msg)} · {details}", ""]
        lines += [close_open_fences(msg.content).rstrip("\n"), ""]
        if note := status_note(msg):
            lines += [f"> **Note:** {note}", ""]
    return "\n".join(lines)


def to_text(conv: Conversation) -> str:
    """Plain text of the current branch, for pasting anywhere."""
    title = conv.title or "Untitled conversation"
    lines = [title, "=" * len(title), _summary_line(conv), ""]
    if conv.system_prompt:
        lines += ["[System prompt]", conv.system_prompt, ""]
    for msg in conv.current_path():
        lines += [f"[{speaker(msg)} · {' · '.join(heading_details(conv, msg))}]", msg.content]
        if note := status_note(msg):
            lines.append(f"({note})")
        lines.append("")
    return "\n".join(lines)


def _summary_line(conv: Conversation) -> str:
    shown = len(conv.current_path())
    text = f"Exported from {APP_NAME} · started {format_time(conv.created_at)} · {shown} messages"
    hidden = len(conv.messages) - shown
    if hidden:
        text += f" ({hidden} more in other branches; the JSON export keeps them all)"
    return text


# ---- files --------------------------------------------------------------------------------


def format_for(out: Path, fmt: str | None = None) -> str:
    """The export format for `out`: its extension (.md .json .html .txt .pdf) when it has one
    of those, else `fmt`. Raises UserError when neither says, or when they disagree."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if suffix in FORMATS:
        if fmt is not None and fmt != suffix:
            raise UserError(
                f"--format {fmt} does not match {out} (a .{suffix} name): drop --format, or "
                f"name the file .{fmt}")
        return suffix
    if fmt is None:
        raise UserError(
            f"cannot tell the format from {out}: name it .md, .json, .html, .txt or .pdf, or "
            "add --format")
    return fmt


def export_conversations(
    store: Store, conversation_ids: Sequence[int], fmt: str, out: Path
) -> list[Path]:
    """Write the conversations in `fmt` to `out`; returns the files written.

    `out` is a file (one conversation, or JSON) or a folder (one file per conversation; the
    folder itself is created if missing). Its parent folder must exist: a mistyped path is
    an error (UserError), not a new tree of folders.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not conversation_ids:
        raise UserError("nothing to export: no conversations were chosen")
    out = Path(out)
    parent = out.absolute().parent
    if not out.is_dir() and not parent.is_dir():
        raise UserError(f"cannot export to {out}: the folder {parent} does not exist; "
                        "create it first or choose another place")
    conversations = [store.get_conversation(i) for i in conversation_ids]
    if fmt == "json":
        target = out / "conversations.json" if out.is_dir() else out
        write_atomic(target, to_json(conversations).encode())
        return [target]
    if len(conversations) == 1 and not out.is_dir():
        return [_write_one(conversations[0], fmt, out)]
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {out}: {exc.strerror or exc}") from exc
    return [
        _write_one(c, fmt, out / f"{c.id:05d}-{slug(c.title, 'conversation')}.{fmt}")
        for c in conversations
    ]


def _write_one(conv: Conversation, fmt: str, path: Path) -> Path:
    if fmt == "pdf":
        from app.exchange.pdf_export import write_pdf

        write_pdf(conv, path)
        return path
    if fmt == "html":
        from app.exchange.html_export import to_html

        text = to_html(conv)
    else:
        text = to_markdown(conv) if fmt == "md" else to_text(conv)
    write_atomic(path, text.encode())
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (app.atomic), mode 0644: an export is an ordinary
    document. Raises UserError naming the file when it cannot be written."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
