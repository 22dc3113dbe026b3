"""Rows of the conversation database <-> dataclasses, inserts, search and error wording.

Helpers for app/store/store.py, which owns the transactions; nothing here commits.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import unicodedata
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
    snippet: str  # about 90 characters around the first match, on one line
    marks: tuple[tuple[int, int], ...] = ()  # (start, end) of each match in the snippet


# ---- row helpers --------------------------------------------------------------------------


def inserted_id(cur: sqlite3.Cursor) -> int:
    """The rowid of the row that `cur`'s INSERT just added (sqlite3 types it as optional)."""
    assert cur.lastrowid is not None, "no INSERT ran on this cursor"
    return cur.lastrowid


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
    msg_id = inserted_id(cur)
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
    conv_id = inserted_id(cur)
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
        id_map[m.id] = inserted_id(cur)


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


# Scripts written without spaces between words: unicode61 makes a whole run one token, so
# their words are found as substrings (trigram index, or LIKE below three characters).
_SPACELESS = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]"
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


@dataclass(frozen=True)
class SearchPlan:
    """How each word of a query is found: word index (unicode61, last word as a prefix),
    trigram substring index (space-less scripts, 3+ characters), or LIKE (shorter)."""

    words: str  # FTS5 query for the unicode61 index, or ""
    trigram: str  # FTS5 query for the trigram index, or ""
    like: tuple[str, ...]  # LIKE patterns ('%...%', escaped with \)


def search_plan(text: str, trigram: bool = True) -> SearchPlan:
    """Split the user's words among the indexes; user text is always quoted, never syntax."""
    plain, tri, like = [], [], []
    for word in text.split():
        if not _SPACELESS.search(word):
            plain.append(word)
        elif trigram and len(word) >= 3:
            tri.append('"' + word.replace('"', '""') + '"')
        else:
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like.append(f"%{escaped}%")
    return SearchPlan(fts_query(" ".join(plain)), " ".join(tri), tuple(like))


def search(conn: sqlite3.Connection, text: str, limit: int) -> list[SearchHit]:
    """Title hits first, then message hits newest first; one hit per conversation."""
    has_tri = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'messages_tri'").fetchone() is not None
    plan = search_plan(text, has_tri)
    if not (plan.words or plan.trigram or plan.like):
        return []
    pattern = match_pattern(fold(text))
    hits: dict[int, SearchHit] = {}
    sql, params, _ = _plan_sql(plan, "titles", "c.id", "c.title")
    for conv_id, title in conn.execute(
        f"SELECT c.id, c.title FROM {sql} AND c.deleted_ms IS NULL"
        " ORDER BY c.updated_ms DESC LIMIT ?", (*params, limit),
    ):
        if pattern.search(fold(title)):  # the index matched tokens; the words must be there
            hits[conv_id] = _hit(conv_id, title, None, title, pattern)
    sql, params, order = _plan_sql(plan, "messages", "m.id", "m.content")
    cursor = conn.execute(
        f"SELECT m.id, m.conversation_id, c.title FROM {sql} AND m.status <> 'streaming'"
        f" AND c.deleted_ms IS NULL ORDER BY {order} DESC", params,
    )
    while len(hits) < limit and (row := cursor.fetchone()) is not None:
        msg_id, conv_id, title = row
        if conv_id not in hits:
            content = conn.execute(
                "SELECT content FROM messages WHERE id = ?", (msg_id,)).fetchone()[0]
            # "C++" matches the token "c" in the index: keep rows where the text itself is.
            if pattern.search(fold(content)):
                hits[conv_id] = _hit(conv_id, title, msg_id, content, pattern)
    cursor.close()
    return list(hits.values())


def _plan_sql(plan: SearchPlan, table: str, key: str,
              column: str) -> tuple[str, list[str], str]:
    """FROM ... WHERE ... for one table. The first index in the plan drives the query (its
    rowid order streams, so ORDER BY id DESC LIMIT stops early); the other parts filter.
    Returns (sql, parameters, the id column to order by)."""
    indexes = [(f"{table}_{suffix}", query)
               for suffix, query in (("fts", plan.words), ("tri", plan.trigram)) if query]
    base = "conversations c" if table == "titles" else (
        "messages m JOIN conversations c ON c.id = m.conversation_id")
    conds: list[str] = []
    params: list[str] = []
    order = key
    if indexes:
        driver, query = indexes.pop(0)
        on = "c.id" if table == "titles" else "m.id"
        base = f"{driver} JOIN " + base.replace(" JOIN", f" ON {on} = {driver}.rowid JOIN", 1) \
            if table != "titles" else f"{driver} JOIN conversations c ON c.id = {driver}.rowid"
        conds.append(f"{driver} MATCH ?")
        params.append(query)
        order = f"{driver}.rowid"
    for name, query in indexes:
        conds.append(f"{key} IN (SELECT rowid FROM {name} WHERE {name} MATCH ?)")
        params.append(query)
    for like in plan.like:
        conds.append(f"{column} LIKE ? ESCAPE '\\'")
        params.append(like)
    return f"{base} WHERE " + " AND ".join(conds), params, order


_QUOTES = str.maketrans("‘’ʼ“”", "'''\"\"")


def fold(text: str) -> str:
    """Text for matching: accents and typographic quotes folded, one character for one, so
    positions found in the folded text are positions in the original (for highlighting)."""
    return "".join(unicodedata.normalize("NFD", ch)[:1] or ch for ch in text).translate(_QUOTES)


def match_pattern(text: str) -> re.Pattern[str]:
    """What a query matches in a (folded) text, for highlighting: words at a word start
    (extended to the word's end, as the prefix search does), space-less-script words
    anywhere."""
    parts = []
    for word in sorted(set(text.split()), key=len, reverse=True):
        if _SPACELESS.search(word):
            parts.append(re.escape(word))
        else:
            start = r"(?<!\w)" if word[0].isalnum() or word[0] == "_" else ""
            parts.append(start + re.escape(word) + r"\w*")
    return re.compile("|".join(parts), re.IGNORECASE)


def _hit(conv_id: int, title: str, msg_id: int | None, content: str,
         pattern: re.Pattern[str]) -> SearchHit:
    text, marks = snippet(content, pattern)
    return SearchHit(conv_id, title, msg_id, text, marks)


def snippet(content: str, pattern: re.Pattern[str] | str,
            width: int = 90) -> tuple[str, tuple[tuple[int, int], ...]]:
    """About `width` characters around the first match, on one line, and the (start, end)
    spans of the matches in it (for highlighting; the text itself is unmarked).

    Made here rather than by FTS5's snippet(), which re-runs a prefix query per row.
    """
    if isinstance(pattern, str):
        pattern = match_pattern(fold(pattern))
    first = pattern.search(fold(content))
    start = 0 if first is None else max(0, first.start() - width // 3)
    if start and not _SPACELESS.search(content[start : start + 1]):
        start = content.find(" ", start, first.start() if first else None) + 1 or start
    window = " ".join(content[start : start + width].split())
    text = ("…" if start else "") + window + ("…" if start + width < len(content) else "")
    marks = tuple(m.span() for m in pattern.finditer(fold(text)) if m.end() > m.start())
    return text, marks


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


FULL_BELOW_BYTES = 1 << 20  # less free space than this, and an I/O error means a full disk


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(Path(path).parent).free < FULL_BELOW_BYTES
    except OSError:
        return False


def storage_error(exc: sqlite3.Error, path: Path, action: str) -> StorageError:
    """One clear line for the user: what failed, on which file, and what to do.

    SQLite reports a full disk while it creates the WAL or shared-memory file at open as a
    plain "disk I/O error", so an I/O error on a disk with (almost) no free space is called
    what it is."""
    kind = error_kind(exc)
    if kind == "io" and _nearly_full(path):
        kind = "full"
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
