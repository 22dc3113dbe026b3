"""The conversation store: branches, streaming replies, recovery, trash, search, migrations,
and what happens when the disk is full or the database read-only."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from app import paths
from app.errors import StorageError, UserError
from app.messages import GenerationParams, GenerationStats, ModelInfo
from app.store.reply import ReplyWriter
from app.store.store import Store

DATA = Path(__file__).parent / "data"
MODEL = ModelInfo("Grok-2 (grok-2)", "/models/grok-2", "0123456789abcdef", "int4", "cuda", 8192)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
    with Store.open() as s:
        yield s


def _chat(store: Store, text: str = "hello") -> tuple[int, int]:
    conv = store.create_conversation()
    return conv, store.add_message(conv, None, "user", text)


def _reply(store: Store, conv: int, parent: int, text: str, seed: int = 1) -> int:
    msg = store.begin_reply(conv, parent, MODEL, GenerationParams(seed=seed))
    store.finish_reply(msg, text, "stop", GenerationStats(3, 2, 0.1, 9.5, 0.3))
    return msg


def test_store_lives_at_database_path_in_wal_mode(store):
    """GROK_DESKTOP_HOME moves the database; it is opened in WAL mode at the current schema."""
    assert store.path == paths.database_path()
    assert str(store.path).startswith(os.environ["GROK_DESKTOP_HOME"])
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_core_modules_import_neither_torch_nor_qt():
    """Storage, export, import and the chat command stay free of torch and Qt at import."""
    code = (
        "import sys, app.store.store, app.exchange.export, app.exchange.importers, app.exchange.chatgpt, app.store.reply, "
        "app.store.conversation, app.commands.chat, app.exchange.html_export, app.exchange.pdf_export\n"
        "bad = [m for m in ('torch', 'PySide6') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_first_user_message_titles_the_conversation(store):
    """A new conversation takes its title from the first user message, on one line."""
    conv, _ = _chat(store, "Explain\n  monads   simply please")
    assert store.get_conversation(conv).title == "Explain monads simply please"


def test_regenerate_and_edit_keep_old_versions_as_branches(store):
    """Regenerating adds a sibling reply, editing adds a sibling user message; both stay."""
    conv, user = _chat(store)
    first = _reply(store, conv, user, "first answer")
    second = _reply(store, conv, user, "second answer")
    c = store.get_conversation(conv)
    assert [m.id for m in c.current_path()] == [user, second]
    assert [m.id for m in c.siblings(second)] == [first, second]
    assert c.sibling_position(second) == (2, 2)

    assert store.switch_branch(first) == first
    assert [m.content for m in store.get_conversation(conv).current_path()] == [
        "hello",
        "first answer",
    ]

    edited = store.edit_message(user, "hello again")
    c = store.get_conversation(conv)
    assert [m.content for m in c.current_path()] == ["hello again"]
    assert c.sibling_position(edited) == (2, 2)
    assert store.switch_branch(user) == second  # back to the old branch, newest reply
    assert len(store.get_conversation(conv).messages) == 4


def test_chat_messages_start_with_the_system_prompt(store):
    """The engine input is the conversation's system prompt plus the current path."""
    conv = store.create_conversation(system_prompt="Be brief.")
    user = store.add_message(conv, None, "user", "hi")
    _reply(store, conv, user, "hello")
    assert store.get_conversation(conv).chat_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_reply_records_model_settings_seed_and_stats(store):
    """An assistant row keeps the model identity, settings, seed, finish reason and stats."""
    conv, user = _chat(store)
    msg = store.begin_reply(conv, user, MODEL, GenerationParams(temperature=0.3, seed=None))
    store.finish_reply(msg, "done", "length", GenerationStats(5, 7, 0.2, 11.0, 0.9), seed=77)
    m = store.get_message(msg)
    assert (m.status, m.finish_reason, m.seed) == ("complete", "length", 77)
    assert m.model["config_hash"] == "0123456789abcdef" and m.model["quantization"] == "int4"
    assert m.params["temperature"] == 0.3
    assert m.stats == GenerationStats(5, 7, 0.2, 11.0, 0.9).to_dict()


def test_reply_writer_writes_when_the_interval_has_passed(store):
    """ReplyWriter writes the text so far once 250 ms have passed, and everything on finish."""
    conv, user = _chat(store)
    msg = store.begin_reply(conv, user, MODEL, GenerationParams())
    now = [0.0]
    writer = ReplyWriter(store, msg, clock=lambda: now[0])
    writer.add("Hel")
    now[0] = 0.1
    writer.add("lo")
    assert store.get_message(msg).content == ""  # not yet 250 ms
    now[0] = 0.26
    writer.add(" wor")
    assert (store.get_message(msg).content, store.get_message(msg).status) == (
        "Hello wor",
        "streaming",
    )
    writer.add("ld")
    writer.finish("stop")
    m = store.get_message(msg)
    assert (m.content, m.status, writer.writes) == ("Hello world", "complete", 1)


def test_streaming_rows_become_interrupted_on_open(store):
    """A reply left `streaming` (crash) is `interrupted` with its text when the store reopens."""
    conv, user = _chat(store)
    msg = store.begin_reply(conv, user, MODEL, GenerationParams())
    store.update_reply(msg, "partial text")
    with Store.open(store.path) as again:
        m = again.get_message(msg)
        assert (m.status, m.content) == ("interrupted", "partial text")
        assert [r.id for r in again.interrupted_replies()] == [msg]


def test_continue_and_discard_an_interrupted_reply(store):
    """resume_reply returns the text to continue from; discard drops the row and its branch."""
    conv, user = _chat(store)
    msg = store.begin_reply(conv, user, MODEL, GenerationParams())
    store.interrupt_reply(msg, "The answer is")
    text = store.resume_reply(msg)
    writer = ReplyWriter(store, msg, text=text)
    writer.add(" 42.")
    writer.finish("stop")
    assert store.get_message(msg).content == "The answer is 42."
    assert store.get_message(msg).status == "complete"

    other = store.begin_reply(conv, user, MODEL, GenerationParams())
    store.interrupt_reply(other, "cut")
    store.discard_reply(other)
    c = store.get_conversation(conv)
    assert [m.id for m in c.messages] == [user, msg]
    assert c.current_leaf_id == msg  # the view moved to the remaining sibling


def test_trash_restore_and_empty(store):
    """Trashed conversations leave the list and search, come back on restore, go on empty."""
    keep, _ = _chat(store, "keep me")
    gone, _ = _chat(store, "throw me away")
    store.trash_conversation(gone)
    assert [c.id for c in store.list_conversations()] == [keep]
    assert [c.id for c in store.list_trash()] == [gone]
    assert store.search("throw") == []
    store.restore_conversation(gone)
    assert {c.id for c in store.list_conversations()} == {keep, gone}
    store.trash_conversation(gone)
    assert store.empty_trash() == 1
    assert store.list_trash() == []
    assert store._conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


def test_pinned_first_then_most_recent(store):
    """The list shows pinned conversations first, then the most recently updated."""
    a, _ = _chat(store, "a")
    b, _ = _chat(store, "b")
    c, _ = _chat(store, "c")
    store.update_conversation(a, pinned=True)
    _reply(store, conv=b, parent=store.get_conversation(b).current_leaf_id, text="newer")
    assert [s.id for s in store.list_conversations()] == [a, b, c]


def test_search_finds_titles_and_message_text_with_snippets(store):
    """Search matches words in titles and messages (last word as a prefix), with a snippet."""
    conv, user = _chat(store, "Quicksort in Rust")
    _reply(store, conv, user, "Use the partition function; pivots matter.")
    other, _ = _chat(store, "Unrelated")
    hits = store.search("partition piv")
    assert [(h.conversation_id, h.snippet, h.marks) for h in hits] == [
        (conv, "Use the partition function; pivots matter.", ((8, 17), (28, 34)))
    ]
    assert store.search("quicksort")[0].message_id is None  # a title hit
    assert store.search('C++ "quoted') == []  # user text is never FTS syntax
    assert {h.conversation_id for h in store.search("unrelated")} == {other}


def test_streaming_text_is_searchable_once_finished(store):
    """A streaming row is indexed when it stops streaming (not re-indexed every write)."""
    conv, user = _chat(store)
    msg = store.begin_reply(conv, user, MODEL, GenerationParams())
    store.update_reply(msg, "zanzibar")
    assert store.search("zanzibar") == []
    store.finish_reply(msg, "zanzibar archipelago", "stop")
    assert store.search("archipelago")[0].message_id == msg
    store.update_reply(msg, "changed")  # e.g. continued later
    store.finish_reply(msg, "changed entirely", "stop")
    assert store.search("zanzibar") == [] and store.search("entirely")[0].message_id == msg
    store.finish_reply(msg, "rewritten while complete", "stop")
    assert store.search("entirely") == [] and store.search("rewritten")[0].message_id == msg
    _fts_integrity_check(store)


def _fts_integrity_check(store: Store) -> None:
    """FTS5 compares its index with the messages and titles; raises if they disagree."""
    with store.transaction() as conn:
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
        conn.execute("INSERT INTO titles_fts(titles_fts, rank) VALUES ('integrity-check', 1)")


def _v1_copy(tmp_path: Path) -> Path:
    target = tmp_path / "conversations.sqlite3"
    shutil.copy(DATA / "conversations-v1.sqlite3", target)
    return target


def test_migration_from_the_frozen_v1_file(tmp_path):
    """A first-release database is backed up, then migrated with every message kept."""
    path = _v1_copy(tmp_path)
    with Store.open(path) as store:
        assert store.backup_path is not None and store.backup_path.exists()
        backup = sqlite3.connect(store.backup_path)
        assert backup.execute("PRAGMA user_version").fetchone()[0] == 1
        assert backup.execute("SELECT count(*) FROM messages").fetchone()[0] == 7
        backup.close()
        titles = [s.title for s in store.list_conversations()]
        assert sorted(titles) == ["Sorting in Python", "שלום 👋"]
        conv = store.get_conversation(1)
        assert conv.system_prompt == "You are terse." and conv.params == {"temperature": 0.2}
        assert [m.id for m in conv.current_path()] == [1, 3, 4, 5]  # the newest branch
        assert conv.sibling_position(2) == (1, 2)
        assert [m.status for m in conv.messages] == ["complete"] * 4 + ["interrupted"]
        reply = conv.message(2)
        assert reply.model == {"name": "grok-2", "folder": "/models/grok-2"}
        assert (reply.seed, reply.stats["completion_tokens"]) == (7, 18)
        assert conv.created_at == pytest.approx(1730538900.25)
        assert store.search("reverse")[0].conversation_id == 1
        assert store.integrity_check() == "ok"
    with Store.open(path) as again:  # already current: no second backup
        assert again.backup_path is None


def test_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """If a migration step fails, the database is rolled back to version 1, intact."""
    from app.store import schema as storage_schema

    path = _v1_copy(tmp_path)

    def broken(conn):
        conn.execute("ALTER TABLE conversations RENAME TO oops")
        raise RuntimeError("step failed")

    monkeypatch.setitem(storage_schema.STEPS, 1, broken)
    with pytest.raises(RuntimeError):
        Store.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM conversations").fetchone()[0] == 2
    conn.close()


def test_database_from_a_newer_version_is_refused_untouched(tmp_path):
    """A schema newer than the app is refused with a clear message and not modified."""
    path = tmp_path / "future.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY)")
    conn.execute("PRAGMA user_version = 9")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="newer Grok Desktop"):
        Store.open(path)
    assert path.read_bytes() == before


def test_not_a_database_gives_one_clear_message(tmp_path):
    """A file that is not SQLite is reported as damaged, naming the file."""
    path = tmp_path / "conversations.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="damaged or not a Grok Desktop database"):
        Store.open(path)


def test_disk_full_stops_the_reply_and_keeps_what_was_stored(store):
    """When the database cannot grow, writes raise StorageError and nothing stored is lost."""
    conv, user = _chat(store, "question")
    msg = store.begin_reply(conv, user, MODEL, GenerationParams())
    writer = ReplyWriter(store, msg, interval_s=0)
    writer.add("first part. ")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(StorageError, match="disk is full"):
        writer.add("x" * 1_000_000)
    with pytest.raises(StorageError, match="disk is full"):
        store.add_message(conv, msg, "user", "y" * 1_000_000)
    assert store.get_message(msg).content == "first part. "
    assert store.integrity_check() == "ok"
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    writer.interrupt()
    assert store.get_message(msg).status == "interrupted"
    assert store.get_message(msg).content.endswith("x" * 10)


def test_read_only_database_raises_storage_error_and_keeps_data(store):
    """Writes to a database that became read-only fail with one clear line; data intact."""
    conv, _ = _chat(store, "kept")
    store._conn.execute("PRAGMA query_only = ON")  # what SQLite reports for a read-only file
    with pytest.raises(StorageError, match="read-only"):
        store.add_message(conv, None, "user", "lost?")
    store._conn.execute("PRAGMA query_only = OFF")
    assert [m.content for m in store.get_conversation(conv).messages] == ["kept"]


_READ_ONLY_CHECK = """
import os, sys
from app.errors import StorageError
from app.store.store import Store
if os.geteuid() == 0:  # root ignores permissions: become nobody (modules are loaded already)
    os.setgid(65534)
    os.setuid(65534)
with Store.open(sys.argv[1]) as s:
    assert s.read_only, "not opened read-only"
    msgs = s.get_conversation(1).messages
    assert [m.content for m in msgs] == ["hi", "part"], msgs
    try:
        s.create_conversation()
    except StorageError as exc:
        print(exc)
"""


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
@pytest.mark.parametrize("folder_writable", [False, True])
def test_read_only_file_opens_for_browsing(folder_writable):
    """A read-only database (file or folder) opens read-only; writes raise one clear line."""
    folder = Path(tempfile.mkdtemp(prefix="grok-ro-"))  # not under pytest's private 0700 dir
    try:
        path = folder / "conversations.sqlite3"
        with Store.open(path) as s:
            conv, user = _chat(s, "hi")
            s.update_reply(s.begin_reply(conv, user, MODEL, GenerationParams()), "part")
        path.chmod(0o444)
        folder.chmod(0o777 if folder_writable else 0o555)
        root = Path(__file__).parent.parent
        done = subprocess.run(
            [sys.executable, "-c", _READ_ONLY_CHECK, str(path)],
            check=False,
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert "read-only" in done.stdout
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_unknown_ids_are_user_errors(store):
    """Asking for a conversation or message that does not exist names the id."""
    with pytest.raises(UserError, match="no conversation 42"):
        store.get_conversation(42)
    conv, user = _chat(store)
    other = store.create_conversation()
    with pytest.raises(UserError, match="not in conversation"):
        store.add_message(other, user, "user", "cross-link")
    assert len(store.get_conversation(conv).messages) == 1


def test_titles_drop_markdown_marks():
    """Auto titles keep the words of the first message, not its Markdown syntax."""
    from app.store.conversation import make_title

    assert make_title("Second chat with **markdown**") == "Second chat with markdown"
    assert make_title("# Heading here\nbody") == "Heading here body"
    assert make_title("```python\nprint(1)\n```") == "print(1)"
    assert make_title("Use `ls -la` and _this_ please") == "Use ls -la and this please"
    assert make_title("snake_case_name and 2 * 3 * 4") == "snake_case_name and 2 * 3 * 4"
    assert make_title("   ") == "New conversation"


def _tmpfs(path: Path, size: str) -> bool:
    """Mount a small tmpfs at path (root only); False where this machine does not allow it."""
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def test_disk_full_at_open_is_called_a_full_disk(tmp_path):
    """A database opened on a full disk (SQLite then says only 'disk I/O error' while making
    its WAL files) is reported as a full disk, on a real full filesystem."""
    mount = tmp_path / "small"
    if not _tmpfs(mount, "512k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        db = mount / "conversations.sqlite3"
        with Store.open(db) as store:
            _chat(store, "kept")
        # fill the disk to the last byte
        with open(mount / "fill", "wb", buffering=0) as fill, contextlib.suppress(OSError):
            while True:
                fill.write(b"\0" * 4096)
        with pytest.raises(StorageError, match="the disk is full; free some space"):
            Store.open(db)
        (mount / "fill").unlink()
        with Store.open(db) as store:  # nothing was lost
            assert store.integrity_check() == "ok"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_io_error_with_free_space_keeps_its_own_wording(tmp_path, monkeypatch):
    """The full-disk wording is only used when the disk really has no room."""
    from app.store import rows

    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert "is the disk still there" in str(rows.storage_error(exc, tmp_path / "c.db", "open"))
    monkeypatch.setattr(rows.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 0))
    assert "the disk is full" in str(rows.storage_error(exc, tmp_path / "c.db", "open"))
