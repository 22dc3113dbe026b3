"""`export`, `list` and conversation references from the command line; the GUI's export
target. The format follows the extension the user typed."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from app.cli import main
from app.commands.chat import ask
from app.store.store import Store

from .test_chat_cli import FakeEngine


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
    with Store.open() as store:
        for text in ("first question", "second question"):
            conv = store.create_conversation()
            ask(store, FakeEngine(), conv, text, out=io.StringIO())
    return tmp_path


def test_export_format_follows_the_extension(home, capsys):
    out = home / "conv.pdf"
    assert main(["export", "-c", "1", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"%PDF-")
    assert str(out) in capsys.readouterr().out
    page = home / "conv.HTML"
    assert main(["export", "-c", "1", "--out", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_conflicting_format_and_extension_is_one_error(home, capsys):
    out = home / "x.pdf"
    assert main(["export", "-c", "1", "--format", "md", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--format md" in err and ".pdf" in err
    assert not out.exists()


def test_unknown_extension_needs_a_format(home, capsys):
    assert main(["export", "-c", "1", "--out", str(home / "notes.v2")]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["export", "-c", "1", "--format", "txt", "--out", str(home / "notes.v2")]) == 0
    assert "first question" in (home / "notes.v2").read_text()


def test_missing_folder_is_an_error_not_a_new_tree(home, capsys):
    target = home / "no" / "such" / "dir" / "x.md"
    assert main(["export", "-c", "1", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and str(target.parent) in err
    assert not (home / "no").exists()
    assert main(["export", "--all", "--format", "md", "--out", str(home / "folder")]) == 0
    assert len(list((home / "folder").glob("*.md"))) == 2  # the folder itself is made


def test_gui_export_target_prefers_the_typed_extension():
    from app.gui.files import _FILTERS, export_status, export_target

    md = _FILTERS["md"]
    assert export_target("/t/conv.pdf", md, 1) == ("pdf", Path("/t/conv.pdf"))
    assert export_target("/t/conv.JSON", md, 3) == ("json", Path("/t/conv.JSON"))
    assert export_target("/t/conv", _FILTERS["html"], 1) == ("html", Path("/t/conv.html"))
    assert export_target("/t/my.chat", md, 1) == ("md", Path("/t/my.chat.md"))
    assert export_target("/t/chats.txt", md, 2) == ("txt", Path("/t/chats"))
    assert export_status([Path("/t/conv.pdf")]) == "Exported to /t/conv.pdf"
    assert export_status([Path("/t/a/1.md"), Path("/t/a/2.md")]) == "Exported 2 files to /t/a"


def test_list_json_is_an_array_for_scripts(home, capsys):
    import json

    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [sorted(r) for r in rows] == [
        ["id", "messages", "pinned", "title", "updated", "uuid"]] * 2
    assert {r["id"] for r in rows} == {1, 2} and all(r["messages"] == 2 for r in rows)
    assert all(re.fullmatch(r"[0-9a-f-]{36}", r["uuid"]) for r in rows)
    assert all(r["pinned"] is False for r in rows)
    assert main(["list", "--json", "--search", "second"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits] == [2] and "second question" in hits[0]["snippet"]


def test_every_conversation_option_takes_the_uuid(home, capsys, monkeypatch):
    from app.commands import chat

    with Store.open() as store:
        uuid = store.get_conversation(1).uuid
    out = home / "by-uuid.md"
    assert main(["export", "-c", uuid.upper(), "--out", str(out)]) == 0
    assert "first question" in out.read_text()
    engine = FakeEngine()
    monkeypatch.setattr(chat, "open_engine", lambda args: engine)
    assert main(["ask", "--demo", "-c", uuid, "more"]) == 0
    assert engine.calls[0][0][0]["content"] == "first question"  # continued conversation 1
    capsys.readouterr()
    assert main(["export", "-c", "not-a-uuid", "--out", str(home / "x.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'not-a-uuid'" in err and "list --json" in err
