"""Rows of the conversation database <-> dataclasses, inserts, search and error wording.

Helpers for app/store/store.py, which owns the transactions; nothing here commits.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import StorageError, UserError
from app.messages import GenerationParams
from app.store.conversation import Conversation, ConversationSummary, Message

MSG_COLUMNS = (
    "id, conversation_id, parent_id, role, content, status, created_ms, updated_ms,"
    " finish_reason, model, params, seed, stats, error"
)
CONV_COLUMNS = (
    "id, uuid, title, pinned, system_prompt, params, current_leaf_id, created_ms, updated_ms,"
    " deleted_ms"
)


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    message_id: int | None  # None when only the title matched
    snippet: str  # matched words wrapped in [ ]


# ---- row helpers --------------------------------------------------------------------------


def insert_message(
    conn: sqlite3.Connection,
    conv_id: int,
    parent_id: int | None,
    role: str,
    content: str,
    status: str,
    now: int,
) -> int:
    if parent_id is not None:
        row = conn.execute(
            "SELECT conversation_id FROM messages WHERE id = ?", (parent_id,)
        ).fetchone()
        if row is None or row[0] != conv_id:
            raise UserError(f"message {parent_id} is not in conversation {conv_id}")
    cur = conn.execute(
        "INSERT INTO messages (conversation_id, parent_id, role, content, status, created_ms,"
        " updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (conv_id, parent_id, role, content, status, now, now),
    )
    msg_id = int(cur.lastrowid)
    updated = conn.execute(
        "UPDATE conversations SET current_leaf_id = ?, updated_ms = ? WHERE id = ?",
        (msg_id, now, conv_id),
    )
    if updated.rowcount != 1:
        raise UserError(f"no conversation {conv_id}")
    return msg_id


def insert_conversation(conn: sqlite3.Connection, conv: Conversation) -> int:
    cur = conn.execute(
        "INSERT INTO conversations (uuid, title, pinned, system_prompt, params, created_ms,"
        " updated_ms, deleted_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            conv.uuid,
            conv.title,
            int(conv.pinned),
            conv.system_prompt,
            json.dumps(conv.params),
            _ms(conv.created_at),
            _ms(conv.updated_at),
            _ms_or_none(conv.deleted_at),
        ),
    )
    conv_id = int(cur.lastrowid)
    id_map: dict[int | None, int | None] = {}
    insert_message_rows(conn, conv_id, conv.messages, id_map)
    leaf = id_map.get(conv.current_leaf_id) if conv.current_leaf_id is not None else None
    conn.execute("UPDATE conversations SET current_leaf_id = ? WHERE id = ?", (leaf, conv_id))
    return conv_id


def insert_message_rows(conn: sqlite3.Connection, conv_id: int, messages: Sequence[Message],
                        id_map: dict[int | None, int | None]) -> None:
    """Insert whole message rows (parents listed before children) into `conv_id` with new ids;
    `id_map` (old id -> new id) is filled in, and may already map a parent outside `messages`."""
    for m in messages:
        parent = id_map[m.parent_id] if m.parent_id is not None else None
        cur = conn.execute(
            f"INSERT INTO messages ({MSG_COLUMNS.split(', ', 1)[1]})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conv_id,
                parent,
                m.role,
                m.content,
                m.status,
                _ms(m.created_at),
                _ms(m.updated_at),
                m.finish_reason,
                _json_or_none(m.model),
                _json_or_none(m.params),
                m.seed,
                _json_or_none(m.stats),
                m.error,
            ),
        )
        id_map[m.id] = int(cur.lastrowid)


def params_json(params: GenerationParams | dict[str, Any] | None) -> str | None:
    if params is None:
        return None
    return json.dumps(params.to_dict() if isinstance(params, GenerationParams) else params)


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _load(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _ms_or_none(seconds: float | None) -> int | None:
    return None if seconds is None else _ms(seconds)


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def row_to_message(row: tuple) -> Message:
    (
        msg_id,
        conv_id,
        parent_id,
        role,
        content,
        status,
        created,
        updated,
        reason,
        model,
        params,
        seed,
        stats,
        error,
    ) = row
    return Message(
        msg_id,
        conv_id,
        parent_id,
        role,
        content,
        status,
        created / 1000,
        updated / 1000,
        reason,
        _load(model),
        _load(params),
        seed,
        _load(stats),
        error,
    )


def row_to_summary(row: tuple) -> ConversationSummary:
    conv_id, uid, title, pinned, _, _, _, created, updated, deleted = row
    return ConversationSummary(
        conv_id, uid, title, bool(pinned), created / 1000, updated / 1000, _s(deleted)
    )


def row_to_conversation(row: tuple, messages: tuple[Message, ...]) -> Conversation:
    conv_id, uid, title, pinned, system_prompt, params, leaf, created, updated, deleted = row
    return Conversation(
        conv_id,
        uid,
        title,
        bool(pinned),
        system_prompt,
        json.loads(params),
        created / 1000,
        updated / 1000,
        leaf,
        _s(deleted),
        messages,
    )


def fts_query(text: str) -> str:
    """User words -> a safe FTS5 query: each word quoted (all must match), the last one also
    as a prefix (search as you type) once it has two characters."""
    words = [w.replace('"', '""') for w in text.split()]
    if not words:
        return ""
    quoted = [f'"{w}"' for w in words]
    if len(words[-1]) >= 2:
        quoted[-1] += "*"
    return " ".join(quoted)


def search(conn: sqlite3.Connection, text: str, limit: int) -> list[SearchHit]:
    """Title hits first, then message hits newest first; one hit per conversation."""
    query = fts_query(text)
    if not query:
        return []
    hits: dict[int, SearchHit] = {}
    for conv_id, title in conn.execute(
        "SELECT c.id, c.title FROM titles_fts JOIN conversations c ON c.id = titles_fts.rowid"
        " WHERE titles_fts MATCH ? AND c.deleted_ms IS NULL ORDER BY c.updated_ms DESC LIMIT ?",
        (query, limit),
    ):
        hits[conv_id] = SearchHit(conv_id, title, None, snippet(title, text))
    cursor = conn.execute(
        "SELECT f.rowid, m.conversation_id, c.title FROM messages_fts f"
        " JOIN messages m ON m.id = f.rowid JOIN conversations c ON c.id = m.conversation_id"
        " WHERE messages_fts MATCH ? AND c.deleted_ms IS NULL ORDER BY f.rowid DESC",
        (query,),
    )
    while len(hits) < limit and (row := cursor.fetchone()) is not None:
        msg_id, conv_id, title = row
        if conv_id not in hits:
            content = conn.execute("SELECT content FROM messages WHERE id = ?", (msg_id,))
            hits[conv_id] = SearchHit(conv_id, title, msg_id, snippet(content.fetchone()[0], text))
    cursor.close()
    return list(hits.values())


def snippet(content: str, text: str, width: int = 90) -> str:
    """About `width` characters around the first match, matched words in [ ], on one line.

    Made here rather than by FTS5's snippet(), which re-runs a prefix query per row.
    """
    words = [re.escape(w) for w in text.split()]
    pattern = re.compile(r"\b(?:" + "|".join(words) + r")\w*", re.IGNORECASE)
    first = pattern.search(content)
    start = 0 if first is None else max(0, first.start() - width // 3)
    if start:
        start = content.find(" ", start) + 1 or start  # begin on a word
    window = " ".join(content[start : start + width].split())
    marked = pattern.sub(lambda m: f"[{m.group()}]", window)
    return ("…" if start else "") + marked + ("…" if start + width < len(content) else "")


# ---- errors -------------------------------------------------------------------------------


def error_kind(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        return "readonly"
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "full"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "locked"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return "corrupt"
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR")):
        return "io"
    return "other"


def storage_error(exc: sqlite3.Error, path: Path, action: str) -> StorageError:
    """One clear line for the user: what failed, on which file, and what to do."""
    kind = error_kind(exc)
    saved = "; everything saved before this is kept"
    message = {
        "readonly": f"cannot {action} {path}: the database is read-only (check the permissions "
        f"of the file and its folder){saved}",
        "full": f"cannot {action} {path}: the disk is full; free some space and try again{saved}",
        "locked": f"cannot {action} {path}: another program holds it locked (another Grok "
        "Desktop?); close it and try again",
        "corrupt": f"cannot {action} {path}: the file is damaged or not a Grok Desktop database "
        f"({exc}); move it aside to start fresh, or restore a backup",
        "io": f"cannot {action} {path}: {exc} (is the disk still there?)",
    }.get(kind, f"cannot {action} {path}: {exc}")
    return StorageError(message)
