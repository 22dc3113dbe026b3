"""Opening the conversation database: its schema, version history and step migrations.

`PRAGMA user_version` holds the schema version. A new file gets the current schema directly;
an older one is copied with SQLite's backup API, then migrated one step at a time inside a
single transaction (DDL is transactional in SQLite), so a failed migration leaves the file
as it was and the backup beside it.

Version 1 (the first release): ISO-text times, a `settings` JSON per conversation holding the
system prompt, status `done` for finished rows, model as a folder path, no trash, no search,
no pinning, no remembered branch.
Version 2: millisecond times, uuids, pinning, trash, per-message model identity /
settings / seed / stats as JSON, `current_leaf_id`, FTS5 search over titles and messages.
Version 3 (current): a second FTS5 index per table with the trigram tokenizer, for substring
search in scripts written without spaces (Chinese, Japanese, Thai...), where unicode61 makes
a whole run one token. Skipped (search falls back to LIKE) if SQLite lacks trigram (< 3.34).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from app.errors import StorageError
from app.messages import GenerationParams
from app.paths import PRIVATE_DIR, PRIVATE_FILE, make_private
from app.store.conversation import ms_from_iso
from app.store.rows import error_kind, storage_error

CURRENT_VERSION = 3

SCHEMA_V2 = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL DEFAULT '',
    pinned INTEGER NOT NULL DEFAULT 0,
    system_prompt TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    current_leaf_id INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    deleted_ms INTEGER
);
CREATE INDEX conversations_recent ON conversations(pinned DESC, updated_ms DESC)
    WHERE deleted_ms IS NULL;
CREATE INDEX conversations_trash ON conversations(deleted_ms) WHERE deleted_ms IS NOT NULL;

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'complete'
        CHECK (status IN ('complete', 'streaming', 'interrupted', 'error')),
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    finish_reason TEXT,
    model TEXT,
    params TEXT,
    seed INTEGER,
    stats TEXT,
    error TEXT
);
CREATE INDEX messages_conversation ON messages(conversation_id, id);
CREATE INDEX messages_parent ON messages(parent_id);
CREATE INDEX messages_unfinished ON messages(status) WHERE status <> 'complete';

-- Search: external-content FTS5 tables. A streaming row is indexed once it stops streaming,
-- so a reply written every 250 ms is not re-tokenized every 250 ms.
-- prefix='2 3': "th*" is one index lookup instead of a merge of every word starting "th"
-- (1.5 s -> 2 ms at a million messages; the index grows by about a quarter of the file).
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages', content_rowid='id', prefix='2 3',
    tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.status <> 'streaming' BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
-- One trigger, so the old text leaves the index before the new text enters it.
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, status ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content)
        SELECT 'delete', old.id, old.content WHERE old.status <> 'streaming';
    INSERT INTO messages_fts(rowid, content)
        SELECT new.id, new.content WHERE new.status <> 'streaming';
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.status <> 'streaming' BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;

CREATE VIRTUAL TABLE titles_fts USING fts5(
    title, content='conversations', content_rowid='id', prefix='2 3',
    tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER titles_fts_insert AFTER INSERT ON conversations BEGIN
    INSERT INTO titles_fts(rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER titles_fts_update AFTER UPDATE OF title ON conversations BEGIN
    INSERT INTO titles_fts(titles_fts, rowid, title) VALUES ('delete', old.id, old.title);
    INSERT INTO titles_fts(rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER titles_fts_delete AFTER DELETE ON conversations BEGIN
    INSERT INTO titles_fts(titles_fts, rowid, title) VALUES ('delete', old.id, old.title);
END;
"""

SEARCH_V3 = """
CREATE VIRTUAL TABLE messages_tri USING fts5(
    content, content='messages', content_rowid='id', tokenize='trigram');
CREATE TRIGGER messages_tri_insert AFTER INSERT ON messages WHEN new.status <> 'streaming' BEGIN
    INSERT INTO messages_tri(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_tri_update AFTER UPDATE OF content, status ON messages BEGIN
    INSERT INTO messages_tri(messages_tri, rowid, content)
        SELECT 'delete', old.id, old.content WHERE old.status <> 'streaming';
    INSERT INTO messages_tri(rowid, content)
        SELECT new.id, new.content WHERE new.status <> 'streaming';
END;
CREATE TRIGGER messages_tri_delete AFTER DELETE ON messages WHEN old.status <> 'streaming' BEGIN
    INSERT INTO messages_tri(messages_tri, rowid, content) VALUES ('delete', old.id, old.content);
END;

CREATE VIRTUAL TABLE titles_tri USING fts5(
    title, content='conversations', content_rowid='id', tokenize='trigram');
CREATE TRIGGER titles_tri_insert AFTER INSERT ON conversations BEGIN
    INSERT INTO titles_tri(rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER titles_tri_update AFTER UPDATE OF title ON conversations BEGIN
    INSERT INTO titles_tri(titles_tri, rowid, title) VALUES ('delete', old.id, old.title);
    INSERT INTO titles_tri(rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER titles_tri_delete AFTER DELETE ON conversations BEGIN
    INSERT INTO titles_tri(titles_tri, rowid, title) VALUES ('delete', old.id, old.title);
END;
"""


def _create_private(path: Path) -> None:
    """Create a new database file 0600 (an empty file is a valid empty SQLite database), so
    chats are never readable by other users, not even for a moment."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))
    except FileExistsError:
        pass
    except OSError:
        pass  # a read-only folder: sqlite3 reports it in its own words below


def open_database(path: Path) -> tuple[sqlite3.Connection, bool, Path | None]:
    """(connection, read_only, backup made before migrating) for a current-schema database.

    Creates or migrates the file, switches it to WAL and marks replies left `streaming` by a
    crash as `interrupted`. If the file cannot be written it is opened read-only.
    """
    conn = None
    try:
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        _create_private(path)
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        backup = _prepare(conn, path)
        for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            if file.exists():  # SQLite gives its -wal/-shm files the database's mode
                make_private(file, PRIVATE_FILE)
        conn.execute(RECOVER_INTERRUPTED)
        return conn, False, backup
    except sqlite3.Error as exc:
        _close(conn)
        if error_kind(exc) == "readonly":
            return _open_read_only(path), True, None
        raise storage_error(exc, path, "open") from exc
    except OSError as exc:
        raise StorageError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
    except BaseException:
        _close(conn)
        raise


RECOVER_INTERRUPTED = (
    "UPDATE messages SET status = 'interrupted' WHERE status <> 'complete' AND status = 'streaming'"
)


def _prepare(conn: sqlite3.Connection, path: Path) -> Path | None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    _refuse_newer(version, path)
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise StorageError(f"{path}: cannot switch to WAL mode; is it on a network disk?")
    conn.execute("PRAGMA foreign_keys = ON")
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None:
        create_current(conn)
        return None
    return migrate(conn, path)


def _refuse_newer(version: int, path: Path) -> None:
    if version > CURRENT_VERSION:
        raise StorageError(
            f"{path} was written by a newer Grok Desktop (schema {version}, this one knows "
            f"{CURRENT_VERSION}); install the newer version to open it"
        )


def _open_read_only(path: Path) -> sqlite3.Connection:
    """For browsing a database we may not write. A WAL file in a read-only folder cannot get
    its shared-memory file, so it is then opened as immutable (nothing can change it anyway)."""
    try:
        conn = _connect_read_only(path, "mode=ro")
    except sqlite3.Error:
        try:
            conn = _connect_read_only(path, "mode=ro&immutable=1")
        except sqlite3.Error as exc:
            raise storage_error(exc, path, "open") from exc
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != CURRENT_VERSION:
        conn.close()
        _refuse_newer(version, path)
        raise StorageError(
            f"{path} is read-only and needs an upgrade (schema {version}); make it writable"
        )
    return conn


def _connect_read_only(path: Path, query: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.as_uri()}?{query}", uri=True, check_same_thread=False)
    try:
        conn.isolation_level = None
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _close(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        conn.close()


def create_current(conn: sqlite3.Connection) -> None:
    """Create the current schema in an empty database, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(SCHEMA_V2):
            conn.execute(statement)
        _add_trigram_search(conn)
        conn.execute(f"PRAGMA user_version = {CURRENT_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, path: Path) -> Path | None:
    """Bring an older database up to CURRENT_VERSION; returns the backup made, or None."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == CURRENT_VERSION:
        return None
    backup = backup_copy(conn, path, version)
    conn.execute("PRAGMA foreign_keys = OFF")  # table rebuilds; checked before commit
    conn.execute("BEGIN IMMEDIATE")
    try:
        while version < CURRENT_VERSION:
            STEPS[version](conn)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
            raise StorageError(f"{path}: migration found broken message links; kept {backup}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute("PRAGMA foreign_keys = ON")
    return backup


def backup_copy(conn: sqlite3.Connection, path: Path, version: int) -> Path:
    """A consistent copy (sqlite backup API) next to the database, named after its version."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.v{version}-backup-{stamp}")
    _create_private(target)
    dest = sqlite3.connect(target)
    try:
        conn.backup(dest)
    except sqlite3.Error as exc:
        dest.close()
        target.unlink(missing_ok=True)
        raise StorageError(
            f"cannot back up {path} to {target} before upgrading it ({exc}); free disk space "
            "and start again (the database was not changed)"
        ) from exc
    dest.close()
    return target


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (sqlite3.complete_statement knows triggers)."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not pending:
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    assert not pending.strip(), pending
    return out


# ---- step 1 -> 2 ---------------------------------------------------------------------------

_PARAM_NAMES = set(GenerationParams.__dataclass_fields__)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE conversations RENAME TO conversations_v1")
    conn.execute("ALTER TABLE messages RENAME TO messages_v1")
    conn.execute("DROP INDEX IF EXISTS messages_by_conversation")
    for statement in _statements(SCHEMA_V2):
        conn.execute(statement)
    leaf = dict(conn.execute("SELECT conversation_id, max(id) FROM messages_v1 GROUP BY 1"))
    rows = conn.execute(
        "SELECT id, title, settings, created_at, updated_at FROM conversations_v1 ORDER BY id"
    ).fetchall()
    conn.executemany(
        "INSERT INTO conversations (id, uuid, title, system_prompt, params, current_leaf_id,"
        " created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [_v1_conversation(row, leaf.get(row[0])) for row in rows],
    )
    cursor = conn.execute(
        "SELECT id, conversation_id, parent_id, role, content, status, created_at, model,"
        " settings, tokens, tok_per_s FROM messages_v1 ORDER BY id"
    )
    while batch := cursor.fetchmany(5000):
        conn.executemany(
            "INSERT INTO messages (id, conversation_id, parent_id, role, content, status,"
            " created_ms, updated_ms, model, params, seed, stats)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_v1_message(row) for row in batch],
        )
    conn.execute("DROP TABLE messages_v1")
    conn.execute("DROP TABLE conversations_v1")


def _v1_conversation(row: tuple, leaf_id: int | None) -> tuple:
    conv_id, title, settings_json, created, updated = row
    settings = json.loads(settings_json or "{}")
    system_prompt = settings.pop("system_prompt", "") or ""
    params = {k: v for k, v in settings.items() if k in _PARAM_NAMES}
    return (
        conv_id,
        str(uuid.uuid4()),
        title,
        system_prompt,
        json.dumps(params),
        leaf_id,
        ms_from_iso(created),
        ms_from_iso(updated),
    )


def _v1_message(row: tuple) -> tuple:
    msg_id, conv_id, parent_id, role, content, status, created, model, settings, tokens, rate = row
    status = {"done": "complete"}.get(status, status)
    params = json.loads(settings) if settings else None
    model_json = json.dumps({"name": Path(model).name, "folder": model}) if model else None
    stats = None
    if tokens is not None or rate is not None:
        stats = json.dumps({"completion_tokens": tokens or 0, "tokens_per_s": rate or 0.0})
    seed = params.get("seed") if params else None
    created_ms = ms_from_iso(created)
    return (
        msg_id,
        conv_id,
        parent_id,
        role,
        content,
        status,
        created_ms,
        created_ms,
        model_json,
        json.dumps(params) if params is not None else None,
        seed,
        stats,
    )


# ---- step 2 -> 3 ---------------------------------------------------------------------------


def has_trigram(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has FTS5's trigram tokenizer (3.34+)."""
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.trigram_probe USING fts5(x, tokenize='trigram')")
    except sqlite3.OperationalError:
        return False
    conn.execute("DROP TABLE temp.trigram_probe")
    return True


def _add_trigram_search(conn: sqlite3.Connection) -> None:
    """The trigram indexes and their triggers, filled from the rows already stored (streaming
    rows are indexed when they stop, as in the unicode61 index)."""
    if not has_trigram(conn):
        return
    for statement in _statements(SEARCH_V3):
        conn.execute(statement)
    conn.execute("INSERT INTO messages_tri(rowid, content)"
                 " SELECT id, content FROM messages WHERE status <> 'streaming'")
    conn.execute("INSERT INTO titles_tri(rowid, title) SELECT id, title FROM conversations")


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    _add_trigram_search(conn)


STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}
