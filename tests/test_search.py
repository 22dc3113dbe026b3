"""Search in every script: the trigram index (schema v3) beside the word index, and the
November 2026 search cases (tests/data/cases/c10_search.json)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli import main
from app.exchange.importers import import_file
from app.store import schema
from app.store.rows import match_pattern, search_plan, snippet
from app.store.store import Store

CASES = Path(__file__).parent / "data" / "cases"


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "s.sqlite3") as s:
        import_file(s, CASES / "c10_search.json")
        yield s


def _found(store: Store, query: str) -> list[tuple[str, str]]:
    """(title, matched text) per hit, the matched text cut from the snippet by its marks."""
    return [(h.title, "|".join(h.snippet[a:b] for a, b in h.marks)) for h in store.search(query)]


@pytest.mark.parametrize(("query", "marked"), [
    ("世界和平", "世界和平"),  # 4 characters: the trigram index
    ("和平", "和平"),  # 2 characters: too short for trigrams, found with LIKE
    ("POL-358", "POL-358"),
    ("don't", "don't"),
    ("TODO:", "TODO:"),
    ("src/main.py", "src/main.py"),
    ("C++", "C++"),  # not the "c" of "code" in a newer message
    ("naive", "naïve"),
])
def test_c10_search_cases_find_their_message(store, query, marked):
    assert _found(store, query) == [("Search sample", marked)]


def test_cli_list_search_finds_chinese_text(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
    assert main(["import", str(CASES / "c10_search.json")]) == 0
    capsys.readouterr()
    assert main(["list", "--search", "世界和平"]) == 0
    out = capsys.readouterr().out
    assert "Search sample" in out and "我们讨论世界和平的问题" in out and "[" not in out


def test_all_words_must_match_and_short_words_are_substrings(store):
    assert store.search("sample 和平") == []  # one title or message must hold both
    assert _found(store, "ticket 358") == [("Search sample", "Ticket|358")]
    plan = search_plan("ab 世界和平 和平 x%_")
    assert plan.words == '"ab" "x%_"*' and plan.trigram == '"世界和平"'
    assert plan.like == ("%和平%",)
    assert search_plan("和平", trigram=False).like == ("%和平%",)
    assert search_plan("世界和平", trigram=False).like == ("%世界和平%",)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list('ab和平 "*^:()-+%_\\\'NEAROT.{}')), max_size=20))
def test_no_user_query_is_fts_syntax(store, query):
    """Quotes, stars, parentheses, NEAR, column filters: never an error, only results."""
    for hit in store.search(query):
        assert hit.title == "Search sample"


def test_snippet_marks_every_match_in_cjk_and_words():
    text, marks = snippet("我们讨论世界和平的问题，和平很重要", "和平")
    assert [text[a:b] for a, b in marks] == ["和平", "和平"]
    assert match_pattern("piv").search("pivots") and not match_pattern("piv").search("apiv")


def _v2_database(path: Path) -> None:
    """A version-2 file as the previous release wrote it (no trigram index)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in schema._statements(schema.SCHEMA_V2):
        conn.execute(statement)
    conn.execute("INSERT INTO conversations (id, uuid, title, created_ms, updated_ms)"
                 " VALUES (1, 'u-1', '世界和平会议', 1, 1)")
    conn.execute("INSERT INTO messages (conversation_id, role, content, created_ms, updated_ms)"
                 " VALUES (1, 'assistant', '我们讨论世界和平的问题', 1, 1)")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_migration_v2_to_v3_builds_the_trigram_index_after_a_backup(tmp_path):
    path = tmp_path / "conversations.sqlite3"
    _v2_database(path)
    with Store.open(path) as store:
        assert store.backup_path is not None
        backup = sqlite3.connect(store.backup_path)
        assert backup.execute("PRAGMA user_version").fetchone()[0] == 2
        backup.close()
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert [h.message_id for h in store.search("讨论世界")] == [1]
        assert [h.message_id for h in store.search("和平会")] == [None]  # the title
        msg = store.add_message(1, 1, "user", "新的问题关于宇宙")
        assert [h.message_id for h in store.search("关于宇宙")] == [msg]  # triggers index it
        with store.transaction() as conn:
            conn.execute("INSERT INTO messages_tri(messages_tri, rank) VALUES "
                         "('integrity-check', 1)")
            conn.execute("INSERT INTO titles_tri(titles_tri, rank) VALUES ('integrity-check', 1)")


def test_frozen_v1_file_migrates_to_v3(tmp_path):
    path = tmp_path / "conversations.sqlite3"
    path.write_bytes((Path(__file__).parent / "data" / "conversations-v1.sqlite3").read_bytes())
    with Store.open(path) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert store.search("שלום")[0].message_id is None
        assert store.search("reverse")[0].conversation_id == 1
