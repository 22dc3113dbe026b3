"""The conversation store: one SQLite file in WAL mode, shared by the GUI and the command line.

Every change is its own short transaction, so a crash or kill -9 loses nothing committed. A
reply being generated is a row with status `streaming`, rewritten at least every 250 ms by
`ReplyWriter` (app/store/reply.py); rows still `streaming` when a store is opened were cut off and
become `interrupted` (the GUI offers continue or discard). Disk full, a read-only file or a
locked database raise `StorageError` with one clear line; the failed transaction is rolled
back and everything stored before it stays intact.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app import paths
from app.errors import StorageError, UserError
from app.messages import GenerationParams, GenerationStats, ModelInfo
from app.store.conversation import (
    Conversation,
    ConversationSummary,
    Message,
    make_title,
    newest_leaf_under,
    now_ms,
    path_to,
)
from app.store.rows import (
    CONV_COLUMNS,
    MSG_COLUMNS,
    SearchHit,
    insert_conversation,
    insert_message,
    insert_message_rows,
    inserted_id,
    params_json,
    row_to_conversation,
    row_to_message,
    row_to_summary,
    search,
    storage_error,
)
from app.store.schema import open_database

__all__ = ["DeletedBranch", "SearchHit", "Store"]


@dataclass(frozen=True)
class DeletedBranch:
    """Messages removed by `Store.delete_message`, parents first, for `restore_branch`."""

    conversation_id: int
    messages: tuple[Message, ...]
    leaf_id: int | None  # the branch that was shown before the delete


class Store:
    """The conversation database. Use `Store.open()`; one instance per thread or a shared lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path, read_only: bool) -> None:
        self._conn = conn
        self.path = path
        self.read_only = read_only
        self.backup_path: Path | None = None  # the copy made before a migration, if any
        self._lock = threading.RLock()

    # ---- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str | None = None) -> Store:
        """Open (creating or migrating) the database; `path` defaults to paths.database_path().

        Replies left `streaming` by a crash become `interrupted`. A database that cannot be
        written is opened read-only (browsing works, writes raise StorageError).
        """
        path = Path(path) if path is not None else paths.database_path()
        conn, read_only, backup = open_database(path)
        store = cls(conn, path, read_only)
        store.backup_path = backup
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:  # noqa: PYI034 (py310: no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; sqlite errors become StorageError and roll everything back.

        durable=False skips the fsync (WAL + synchronous=NORMAL): safe against a crash or kill,
        used for the frequent writes of a streaming reply; finished messages are fsynced.
        """
        if self.read_only:
            raise StorageError(f"cannot write {self.path}: it is read-only; make it writable")
        with self._lock:
            conn = self._conn
            try:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, "write") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise storage_error(exc, self.path, "write") from exc
            except BaseException:
                _rollback(conn)
                raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, "read") from exc

    def integrity_check(self) -> str:
        return self._read("PRAGMA integrity_check")[0][0]

    # ---- conversations --------------------------------------------------------------------

    def create_conversation(
        self,
        title: str = "",
        system_prompt: str = "",
        params: GenerationParams | dict[str, Any] | None = None,
    ) -> int:
        now = now_ms()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO conversations (uuid, title, system_prompt, params, created_ms,"
                " updated_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (str(uuid.uuid4()), title, system_prompt, params_json(params) or "{}", now, now),
            )
            return inserted_id(cur)

    def list_conversations(self, limit: int = 200, offset: int = 0) -> list[ConversationSummary]:
        """Pinned first, then most recently updated; trashed ones are left out."""
        rows = self._read(
            f"SELECT {CONV_COLUMNS} FROM conversations WHERE deleted_ms IS NULL"
            " ORDER BY pinned DESC, updated_ms DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [row_to_summary(row) for row in rows]

    def list_trash(self) -> list[ConversationSummary]:
        rows = self._read(
            f"SELECT {CONV_COLUMNS} FROM conversations WHERE deleted_ms IS NOT NULL"
            " ORDER BY deleted_ms DESC"
        )
        return [row_to_summary(row) for row in rows]

    def get_conversation(self, conversation_id: int) -> Conversation:
        rows = self._read(
            f"SELECT {CONV_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,)
        )
        if not rows:
            raise UserError(
                f"no conversation {conversation_id} in {self.path}; `grok-desktop list` shows ids"
            )
        messages = self._read(
            f"SELECT {MSG_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return row_to_conversation(rows[0], tuple(row_to_message(m) for m in messages))

    def resolve_conversation(self, ref: str | int) -> int:
        """A conversation's number from what a user typed: its number (`grok-desktop list`)
        or its uuid (the export's `id`, any case). Raises UserError naming the reference."""
        text = str(ref).strip()
        if text.isdigit():
            rows = self._read("SELECT id FROM conversations WHERE id = ?", (int(text),))
        else:
            rows = self._read("SELECT id FROM conversations WHERE uuid = ?", (text.lower(),))
            if not rows:  # uuids from other tools may be stored in upper case
                rows = self._read("SELECT id FROM conversations WHERE lower(uuid) = ?",
                                  (text.lower(),))
        if not rows:
            label = text if text.isdigit() else repr(text)
            raise UserError(
                f"no conversation {label} in {self.path}; use a number from `grok-desktop "
                "list` or a uuid from `grok-desktop list --json`"
            )
        return int(rows[0][0])

    def message_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """Number of stored messages (every branch) per conversation."""
        ids = list(conversation_ids)
        counts = dict.fromkeys(ids, 0)
        for start in range(0, len(ids), 500):  # under SQLite's limit on ? parameters
            chunk = ids[start : start + 500]
            rows = self._read(
                "SELECT conversation_id, count(*) FROM messages WHERE conversation_id IN"
                f" ({','.join('?' * len(chunk))}) GROUP BY conversation_id", tuple(chunk))
            counts.update({int(conv): int(n) for conv, n in rows})
        return counts

    def all_conversation_ids(self, include_trash: bool = False) -> list[int]:
        where = "" if include_trash else " WHERE deleted_ms IS NULL"
        return [r[0] for r in self._read(f"SELECT id FROM conversations{where} ORDER BY id")]

    def update_conversation(
        self,
        conversation_id: int,
        *,
        title: str | None = None,
        pinned: bool | None = None,
        system_prompt: str | None = None,
        params: GenerationParams | dict[str, Any] | None = None,
    ) -> None:
        changes = {
            "title": title,
            "pinned": None if pinned is None else int(pinned),
            "system_prompt": system_prompt,
            "params": params_json(params),
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE conversations SET {assignments} WHERE id = ?",
                (*changes.values(), conversation_id),
            )

    def trash_conversation(self, conversation_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE conversations SET deleted_ms = ? WHERE id = ?", (now_ms(), conversation_id)
            )

    def restore_conversation(self, conversation_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE conversations SET deleted_ms = NULL WHERE id = ?", (conversation_id,)
            )

    def empty_trash(self) -> int:
        """Delete every trashed conversation for good; returns how many."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM conversations WHERE deleted_ms IS NOT NULL").rowcount

    # ---- messages and branches ------------------------------------------------------------

    def add_message(
        self, conversation_id: int, parent_id: int | None, role: str, content: str
    ) -> int:
        """A finished message (user, system or pasted assistant text); becomes the current leaf."""
        now = now_ms()
        with self.transaction() as conn:
            msg_id = insert_message(
                conn, conversation_id, parent_id, role, content, "complete", now
            )
            if role == "user":
                conn.execute(
                    "UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                    (make_title(content), conversation_id),
                )
            return msg_id

    def edit_message(self, message_id: int, content: str) -> int:
        """Editing adds a sibling with the new text (the old one stays as a branch)."""
        conv_id, parent_id, role = self._message_key(message_id)
        with self.transaction() as conn:
            return insert_message(conn, conv_id, parent_id, role, content, "complete", now_ms())

    def switch_branch(self, message_id: int) -> int:
        """Show the branch through `message_id` (its newest descendants); returns the new leaf."""
        conv_id, _, _ = self._message_key(message_id)
        leaf = newest_leaf_under(self.get_conversation(conv_id).messages, message_id)
        with self.transaction() as conn:
            conn.execute(
                "UPDATE conversations SET current_leaf_id = ? WHERE id = ?", (leaf, conv_id)
            )
        return leaf

    def delete_branch(self, message_id: int) -> None:
        """Delete a message and everything under it; the view moves to a sibling or the parent."""
        conv_id, parent_id, _ = self._message_key(message_id)
        conv = self.get_conversation(conv_id)
        others = [m.id for m in conv.siblings(message_id) if m.id != message_id]
        on_path = any(m.id == message_id for m in conv.current_path())
        with self.transaction() as conn:
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            if on_path:
                leaf = newest_leaf_under(conv.messages, others[-1]) if others else parent_id
                conn.execute(
                    "UPDATE conversations SET current_leaf_id = ? WHERE id = ?", (leaf, conv_id)
                )

    def delete_message(self, message_id: int) -> DeletedBranch:
        """Delete a message with every later turn under it (the view moves to a sibling or the
        parent); returns what `restore_branch` needs to undo it."""
        conv = self.get_conversation(self._message_key(message_id)[0])
        under = {message_id}
        for m in conv.messages:  # ordered by id: parents come before their children
            if m.parent_id in under:
                under.add(m.id)
        removed = tuple(m for m in conv.messages if m.id in under)
        self.delete_branch(message_id)
        return DeletedBranch(conv.id, removed, conv.current_leaf_id)

    def restore_branch(self, deleted: DeletedBranch) -> dict[int, int]:
        """Undo `delete_message`: the messages come back (with new ids, returned as old -> new)
        under the same parent, and the branch that was shown is shown again."""
        if not deleted.messages:
            return {}
        root_parent = deleted.messages[0].parent_id
        id_map: dict[int | None, int | None] = {root_parent: root_parent}
        with self.transaction() as conn:
            insert_message_rows(conn, deleted.conversation_id, deleted.messages, id_map)
            leaf = id_map.get(deleted.leaf_id, deleted.leaf_id)
            conn.execute("UPDATE conversations SET current_leaf_id = ? WHERE id = ?",
                         (leaf, deleted.conversation_id))
        return {k: v for k, v in id_map.items()
                if k is not None and v is not None and k != root_parent}

    def fork_conversation(self, message_id: int) -> int:
        """A new conversation holding the branch from the first message down to `message_id`,
        with the same system prompt and settings; returns its id."""
        conv = self.get_conversation(self._message_key(message_id)[0])
        path = path_to(conv.messages, message_id)
        now = now_ms() / 1000
        fork = replace(conv, id=0, uuid=str(uuid.uuid4()), title=f"{conv.title} (fork)".strip(),
                       pinned=False, created_at=now, updated_at=now, deleted_at=None,
                       current_leaf_id=message_id, messages=tuple(path))
        with self.transaction() as conn:
            return insert_conversation(conn, fork)

    def data_version(self) -> int:
        """Changes when another connection (the CLI, another process) commits: a cheap way to
        notice conversations added behind the app's back (SQLite PRAGMA data_version)."""
        return int(self._read("PRAGMA data_version")[0][0])

    def get_message(self, message_id: int) -> Message:
        rows = self._read(f"SELECT {MSG_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise UserError(f"no message {message_id} in {self.path}")
        return row_to_message(rows[0])

    def _message_key(self, message_id: int) -> tuple[int, int | None, str]:
        msg = self.get_message(message_id)
        return msg.conversation_id, msg.parent_id, msg.role

    # ---- streaming replies ----------------------------------------------------------------

    def begin_reply(
        self,
        conversation_id: int,
        parent_id: int | None,
        model: ModelInfo | dict[str, Any],
        params: GenerationParams,
    ) -> int:
        """Insert an empty `streaming` assistant row (a new branch if `parent_id` has replies)."""
        model_dict = model.to_dict() if isinstance(model, ModelInfo) else dict(model)
        with self.transaction() as conn:
            msg_id = insert_message(
                conn, conversation_id, parent_id, "assistant", "", "streaming", now_ms()
            )
            conn.execute(
                "UPDATE messages SET model = ?, params = ?, seed = ? WHERE id = ?",
                (json.dumps(model_dict), params_json(params), params.seed, msg_id),
            )
            return msg_id

    def update_reply(self, message_id: int, text: str) -> None:
        """The text so far (cheap: no fsync). Also re-marks the row `streaming`."""
        with self.transaction(durable=False) as conn:
            conn.execute(
                "UPDATE messages SET content = ?, status = 'streaming', updated_ms = ?"
                " WHERE id = ?",
                (text, now_ms(), message_id),
            )

    def finish_reply(
        self,
        message_id: int,
        text: str,
        reason: str,
        stats: GenerationStats | None = None,
        seed: int | None = None,
    ) -> None:
        """The reply ended (`stop`, `length`, or `cancelled` by the user); `seed` as used."""
        fields: dict[str, Any] = {"status": "complete", "finish_reason": reason}
        fields["stats"] = json.dumps(stats.to_dict()) if stats is not None else None
        if seed is not None:
            fields["seed"] = seed
        self._end_reply(message_id, text, fields)

    def fail_reply(self, message_id: int, text: str, error: str) -> None:
        """The engine failed: keep the text so far with status `error` and the one-line reason."""
        self._end_reply(message_id, text, {"status": "error", "error": error})

    def interrupt_reply(self, message_id: int, text: str) -> None:
        """Stopped without a finish (e.g. the database filled up): status `interrupted`."""
        self._end_reply(message_id, text, {"status": "interrupted"})

    def _end_reply(self, message_id: int, text: str, fields: dict[str, Any]) -> None:
        now = now_ms()
        fields = {
            "content": text,
            "updated_ms": now,
            "finish_reason": None,
            "error": None,
            **fields,
        }
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE messages SET {assignments} WHERE id = ?", (*fields.values(), message_id)
            )
            conn.execute(
                "UPDATE conversations SET updated_ms = ? WHERE id ="
                " (SELECT conversation_id FROM messages WHERE id = ?)",
                (now, message_id),
            )

    def resume_reply(self, message_id: int) -> str:
        """Continue an interrupted (or cancelled) reply: marks it `streaming`, returns its text.

        Feed the returned text to `Engine.stream_chat(..., continue_text=text)` and a
        `ReplyWriter(store, message_id, text=text)`.
        """
        msg = self.get_message(message_id)
        if msg.role != "assistant":
            raise UserError(f"message {message_id} is a {msg.role} message, not a reply")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE messages SET status = 'streaming', finish_reason = NULL, error = NULL"
                " WHERE id = ?",
                (message_id,),
            )
            conn.execute(
                "UPDATE conversations SET current_leaf_id = ? WHERE id = ?",
                (message_id, msg.conversation_id),
            )
        return msg.content

    def discard_reply(self, message_id: int) -> None:
        """Drop an interrupted reply (and anything under it)."""
        self.delete_branch(message_id)

    def interrupted_replies(self) -> list[Message]:
        """Replies cut off by a crash, for the GUI's continue / discard offer."""
        rows = self._read(
            f"SELECT {MSG_COLUMNS} FROM messages"
            " WHERE status <> 'complete' AND status = 'interrupted' ORDER BY id"
        )
        return [row_to_message(r) for r in rows]

    # ---- search ---------------------------------------------------------------------------

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Conversations whose title or messages contain every word (last one as a prefix).

        Title matches come first, then message matches newest first; one hit per conversation.
        """
        with self._lock:
            try:
                return search(self._conn, text, limit)
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path, "read") from exc

    # ---- import ---------------------------------------------------------------------------

    def import_conversations(self, conversations: Sequence[Conversation]) -> tuple[list[int], int]:
        """Insert whole conversations in ONE transaction; returns (new ids, skipped duplicates).

        Message ids in the input are local (any ints, parents listed before children); new
        ids are assigned. A conversation whose uuid is already stored is skipped.
        """
        new_ids: list[int] = []
        skipped = 0
        with self.transaction() as conn:
            for conv in conversations:
                if conn.execute(
                    "SELECT 1 FROM conversations WHERE uuid = ?", (conv.uuid,)
                ).fetchone():
                    skipped += 1
                    continue
                new_ids.append(insert_conversation(conn, conv))
        return new_ids, skipped


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after SQLITE_FULL); nothing to undo
