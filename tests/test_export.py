"""Export (Markdown, JSON, HTML, text, PDF) and import (our JSON, ChatGPT's export)."""

from __future__ import annotations

import copy
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from app.errors import UserError
from app.exchange.export import (
    export_conversations,
    export_document,
    to_markdown,
    to_text,
)
from app.exchange.html_export import to_html
from app.exchange.importers import import_file
from app.exchange.markup import code_blocks, highlight
from app.exchange.render import close_open_fences, fence_for
from app.messages import GenerationParams, GenerationStats, ModelInfo
from app.store.store import Store

DATA = Path(__file__).parent / "data"
MODEL = ModelInfo("Grok-2 (grok-2)", "/models/grok-2", "0123456789abcdef", "int4", "cuda", 8192)

NESTED_FENCES = (
    "Here is how to show a fence in Markdown:\n\n"
    "````markdown\n```python\nprint('<b>&amp;</b>')\n```\n````\n\n"
    "and inline `a < b && c > d` too."
)
HTML_TEXT = "<script>alert('x')</script> & <b>bold?</b>"
RTL_TEXT = "שלום עולם! مرحبا بالعالم 👋🏽👨‍👩‍👧 café"
BIG_TEXT = ("0123456789abcdef" * 64 + "\n") * 1000  # ~1 MB


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "a.sqlite3") as s:
        yield s


def _reply(store: Store, conv: int, parent: int, text: str, **finish) -> int:
    msg = store.begin_reply(conv, parent, MODEL, GenerationParams(temperature=0.2, seed=9))
    store.finish_reply(msg, text, "stop", GenerationStats(4, 6, 0.25, 12.5, 0.7), **finish)
    return msg


def _rich_conversation(store: Store) -> int:
    """Branches, every status, settings, tricky content: what a round trip must keep."""
    conv = store.create_conversation(
        system_prompt="Answer in ```` fences", params=GenerationParams(temperature=0.1, top_k=5)
    )
    user = store.add_message(conv, None, "user", HTML_TEXT)
    _reply(store, conv, user, "old answer")
    answer = _reply(store, conv, user, NESTED_FENCES, seed=4242)
    rtl = store.add_message(conv, answer, "user", RTL_TEXT)
    broken = store.begin_reply(conv, rtl, MODEL, GenerationParams())
    store.fail_reply(broken, "half", "RuntimeError: CUDA out of memory")
    cut = store.begin_reply(conv, rtl, MODEL, GenerationParams())
    store.interrupt_reply(cut, "```python\ndef unfinished(")
    store.add_message(conv, cut, "user", BIG_TEXT)
    store.update_conversation(conv, pinned=True, title="Tricky ✨ <title>")
    return conv


def _conversations(doc: dict) -> list:
    return doc["conversations"]


def test_json_round_trip_is_lossless(store, tmp_path):
    """Export -> import into another store -> export gives the same conversations."""
    conv = _rich_conversation(store)
    plain = store.create_conversation()
    store.add_message(plain, None, "user", "second conversation")
    first = export_document([store.get_conversation(conv), store.get_conversation(plain)])
    path = tmp_path / "all.json"
    export_conversations(store, [conv, plain], "json", path)
    with Store.open(tmp_path / "b.sqlite3") as other:
        result = import_file(other, path)
        assert len(result.imported_ids) == 2 and result.skipped == 0
        second = export_document([other.get_conversation(i) for i in result.imported_ids])
        assert _conversations(second) == _conversations(first)
        assert import_file(other, path).skipped == 2  # importing again adds nothing


def test_json_messages_carry_the_documented_fields(store):
    """Every message has role, content, status, created_at and parent_id; replies more."""
    doc = export_document([store.get_conversation(_rich_conversation(store))])
    assert doc["format"] == "grok-desktop.conversations" and doc["version"] == 1
    conv = doc["conversations"][0]
    assert conv["settings"]["top_k"] == 5 and conv["pinned"] is True
    for msg in conv["messages"]:
        assert {"id", "role", "content", "status", "created_at", "parent_id"} <= msg.keys()
    reply = conv["messages"][2]
    assert reply["model"]["config_hash"] == "0123456789abcdef"
    assert (reply["seed"], reply["finish_reason"], reply["stats"]["tokens_per_s"]) == (
        4242,
        "stop",
        12.5,
    )
    assert [m["status"] for m in conv["messages"]].count("interrupted") == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", reply["created_at"])


def test_markdown_keeps_code_verbatim(store):
    """Code blocks, nested fences and <, >, & inside code come out exactly as written."""
    conv = store.create_conversation()
    user = store.add_message(conv, None, "user", "show me")
    _reply(store, conv, user, NESTED_FENCES)
    store.update_conversation(conv, title="What is <div>?")
    md = to_markdown(store.get_conversation(conv))
    assert NESTED_FENCES in md
    assert "&lt;" not in md and "\\`" not in md
    assert md.startswith("# What is \\<div>?\n")  # the title is not an HTML tag


def test_markdown_closes_a_fence_left_open_by_a_cut_off_reply(store):
    """An interrupted reply inside a code block does not swallow the rest of the document."""
    conv = store.get_conversation(_rich_conversation(store))
    store.switch_branch(conv.current_path()[-2].id)  # the interrupted reply's branch
    md = to_markdown(store.get_conversation(conv.id))
    assert all(block.closed for block in code_blocks(md))
    assert "def unfinished(" in md and "This reply was cut off" in md


def test_fences_and_fence_closing():
    """fence_for outgrows any backtick run; an open fence (even under a list item) is closed
    with its own marker and indentation."""
    assert fence_for("no ticks") == "```"
    assert fence_for("a ```` b") == "`````"
    assert fence_for("~~~~", "~") == "~~~~~"
    blocks = code_blocks("a\n~~~~\n```\nx\n~~~~\nb\n```js\nopen")
    assert [(b.code, b.language, b.closed) for b in blocks] == [
        ("```\nx", "", True), ("open", "js", False)]
    assert close_open_fences("```js\nopen") == "```js\nopen\n```\n"
    assert close_open_fences("- a\n\n  ~~~~\n  x") == "- a\n\n  ~~~~\n  x\n  ~~~~\n"
    assert close_open_fences("done") == "done"


def test_html_is_escaped_self_contained_and_highlighted(store):
    """HTML escapes message text, loads nothing remote and colours code."""
    conv = store.get_conversation(_rich_conversation(store))
    page = to_html(conv)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Content-Security-Policy" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<code>a &lt; b &amp;&amp; c &gt; d</code>" in page
    assert 'dir="auto"' in page
    code = highlight("def f(x):  # note <\n    return 'a' + 1", "python")
    assert '<span class="k">def</span>' in code and '<span class="c1"># note &lt;</span>' in code
    # Pygments 2.21 stopped escaping ' (safe in element text); either spelling is right
    assert re.search(r'<span class="s1">(&#39;|\')a(&#39;|\')</span>', code)
    assert '<span class="mi">1</span>' in code
    assert highlight("if <x>", "") == "if &lt;x&gt;"  # no language: escaped only
    assert highlight("if <x>", "no-such-language") == "if &lt;x&gt;"


def test_text_export_has_every_message_of_the_branch(store):
    """Plain text lists the current branch with speakers and notes for unfinished replies."""
    conv = store.get_conversation(_rich_conversation(store))
    text = to_text(conv)
    assert RTL_TEXT in text and HTML_TEXT in text and BIG_TEXT.strip() in text
    assert "old answer" not in text  # another branch
    assert "more in other branches" in text


def test_pdf_is_text_not_pictures(store, tmp_path):
    """The PDF comes from Qt's writer with real text (fonts with ToUnicode maps, no images).
    Emoji are left out here: a colour emoji font is a bitmap font, drawn as images."""
    conv = store.create_conversation()
    user = store.add_message(conv, None, "user", "Plot <this> שלום עולם! مرحبا بالعالم café")
    _reply(store, conv, user, NESTED_FENCES)
    out = tmp_path / "chat.pdf"
    assert export_conversations(store, [conv], "pdf", out) == [out]
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and b"/ToUnicode" in data
    assert not re.search(rb"/Subtype\s*/Image", data)


@pytest.mark.parametrize("fmt", ["md", "pdf"])
def test_export_that_cannot_be_written_is_one_error_and_leaves_nothing(store, tmp_path,
                                                                         monkeypatch, fmt):
    """A refused rename (full disk): one UserError naming the file; an older export at that
    path is kept and no temporary file is left (app.atomic does the write)."""
    import app.atomic

    conv = store.create_conversation()
    store.add_message(conv, None, "user", "hello")
    out = tmp_path / "exports" / f"chat.{fmt}"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app.atomic.os, "replace", full)
    with pytest.raises(UserError, match=f"cannot write {re.escape(str(out))}: No space left"):
        export_conversations(store, [conv], fmt, out)
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_several_conversations_go_to_one_json_or_a_folder(store, tmp_path):
    """A selection becomes one JSON file, or a folder with one readable file each."""
    ids = []
    for title in ("First chat", "Second / chat", "Third"):
        conv = store.create_conversation(title=title)
        store.add_message(conv, None, "user", f"message of {title}")
        ids.append(conv)
    files = export_conversations(store, ids[:2], "md", tmp_path / "md")
    assert sorted(p.name for p in files) == sorted(p.name for p in (tmp_path / "md").iterdir())
    assert len(files) == 2 and "message of Second / chat" in files[1].read_text()
    [one] = export_conversations(store, ids, "json", tmp_path / "all.json")
    if os.name == "posix":
        assert one.stat().st_mode & 0o777 == 0o644  # readable like any document
    assert [c["title"] for c in json.loads(one.read_text())["conversations"]] == [
        "First chat",
        "Second / chat",
        "Third",
    ]
    for fmt in ("html", "txt"):
        assert len(export_conversations(store, ids, fmt, tmp_path / fmt)) == 3
    with pytest.raises(UserError, match="nothing to export"):
        export_conversations(store, [], "md", tmp_path / "none")


def test_chatgpt_import_keeps_branches_and_drops_hidden_nodes(store):
    """ChatGPT's mapping tree becomes our tree: branches kept, hidden and tool nodes dropped."""
    result = import_file(store, DATA / "chatgpt-conversations.json")
    assert result.source == "ChatGPT export" and len(result.imported_ids) == 2
    regex = store.get_conversation(result.imported_ids[0])
    assert regex.title == "Regex help"
    assert [m.role for m in regex.messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "assistant",
    ]
    assert [m.content for m in regex.current_path()][-1].startswith("```python")
    first_reply = regex.messages[1]
    assert regex.sibling_position(first_reply.id) == (1, 2)
    assert regex.messages[3].parent_id == regex.messages[2].id  # tool nodes skipped over
    assert regex.messages[3].finish_reason == "length"
    assert first_reply.model == {"name": "gpt-4", "source": "ChatGPT export"}
    assert regex.created_at == pytest.approx(1700000000.5)
    picture = store.get_conversation(result.imported_ids[1])
    assert picture.messages[0].content == "Describe this picture\n[image]"
    assert picture.messages[1].status == "interrupted"
    assert import_file(store, DATA / "chatgpt-conversations.json").skipped == 2


def test_chatgpt_zip_is_read_directly(store, tmp_path):
    """The zip ChatGPT mails out can be imported without unpacking it."""
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(DATA / "chatgpt-conversations.json", "conversations.json")
        z.writestr("chat.html", "<html></html>")
    assert len(import_file(store, archive).imported_ids) == 2


def _bad(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    return path


def _valid_doc(store: Store) -> dict:
    conv = store.create_conversation()
    user = store.add_message(conv, None, "user", "hi")
    _reply(store, conv, user, "hello")
    doc = export_document([store.get_conversation(conv)])
    doc["conversations"][0]["id"] = "another-uuid"
    return doc


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: json.dumps(d)[:-40], "not valid JSON"),
        (lambda d: "", "not valid JSON"),
        (lambda d: json.dumps({"hello": 1}), "not a Grok Desktop export"),
        (lambda d: json.dumps({**d, "version": 99}), "newer than this app reads"),
        (
            lambda d: _edit(d, "role", "wizard"),
            r"conversations\[1\]\.messages\[1\]\.role: 'wizard' is not one of",
        ),
        (lambda d: _edit(d, "parent_id", 7), r"parent_id: 7 is not the id of a message"),
        (lambda d: _edit(d, "created_at", "yesterday"), "not an ISO 8601 time"),
        (lambda d: _edit(d, "content", None), r"messages\[1\]\.content: expected a string, got null"),
    ],
)
def test_malformed_files_are_rejected_whole(store, tmp_path, damage, problem):
    """A bad or truncated file names the file and the problem, and imports nothing."""
    doc = _valid_doc(store)
    doc["conversations"].insert(0, {**copy.deepcopy(doc["conversations"][0]), "id": "good-one"})
    before = store.all_conversation_ids()
    path = _bad(tmp_path, damage(doc))
    with pytest.raises(UserError, match=problem) as err:
        import_file(store, path)
    assert str(path) in str(err.value) and "nothing was imported" in str(err.value)
    assert store.all_conversation_ids() == before


def _edit(doc: dict, key: str, value: object) -> str:
    doc["conversations"][1]["messages"][1][key] = value
    return json.dumps(doc)


def test_a_failure_while_storing_rolls_back_the_whole_import(store, tmp_path, monkeypatch):
    """If writing the second conversation fails, the first is not left behind."""
    import app.store.store

    doc = _valid_doc(store)
    doc["conversations"].append({**doc["conversations"][0], "id": "third"})
    path = _bad(tmp_path, json.dumps(doc))
    real = app.store.store.insert_conversation
    calls = []

    def failing(conn, conv):
        calls.append(conv.uuid)
        if len(calls) == 2:
            raise app.store.store.sqlite3.OperationalError("database or disk is full")
        return real(conn, conv)

    monkeypatch.setattr(app.store.store, "insert_conversation", failing)
    before = store.all_conversation_ids()
    with pytest.raises(UserError, match="disk is full"):
        import_file(store, path)
    assert store.all_conversation_ids() == before
