"""Exports render what the GUI renders: the stress conversation through HTML and PDF, while
Markdown, JSON and text keep every message byte for byte."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.exchange.export import export_conversations, to_markdown, to_text
from app.exchange.html_export import CSS, to_html
from app.exchange.importers import import_file
from app.store.store import Store

DATA = Path(__file__).parent / "data"
STRESS = DATA / "stress-conversation.json"
RAW_MARKDOWN = ("## ", "|---|", "$$", "```", "~~strike~~", "- [x]", "\\(", "\\[")


@pytest.fixture
def stress(tmp_path):
    with Store.open(tmp_path / "s.sqlite3") as store:
        ids = import_file(store, STRESS).imported_ids
        yield store, ids[0]


def _contents() -> list[str]:
    doc = json.loads(STRESS.read_text(encoding="utf-8"))
    return [m["content"] for m in doc["conversations"][0]["messages"]]


def test_html_css_wraps_long_words_and_code_inside_the_page():
    """The page never grows sideways: words break anywhere, code wraps in its block, wide
    tables scroll in theirs; an emoji font is named in both font stacks."""
    compact = re.sub(r"\s+", "", CSS)
    assert "body{" in compact and "overflow-wrap:anywhere" in compact.split("body{", 1)[1]
    pre = compact.split("pre{", 1)[1].split("}", 1)[0]
    assert "white-space:pre-wrap" in pre and "overflow-wrap:anywhere" in pre
    table = compact.split("table{", 1)[1].split("}", 1)[0]
    assert "overflow-x:auto" in table and "display:block" in table
    assert CSS.count('"Noto Color Emoji"') >= 2


def test_html_export_of_the_stress_conversation_is_rendered(stress):
    store, conv_id = stress
    page = to_html(store.get_conversation(conv_id))
    body = page.split("<body>", 1)[1]
    reply = body.split('<div class="msg assistant">', 1)[1]
    for raw in RAW_MARKDOWN:
        assert raw not in reply, raw
    for piece in ("<h2>A table</h2>", "<table>", '<th style="text-align:center">Typing</th>',
                  "<s>strike</s>", 'type="checkbox"', "<blockquote>", "<em>italic</em>",
                  'class="language-rust"', 'class="language-sql"', 'class="language-javascript"',
                  "&lt;b&gt;raw html&lt;/b&gt;", "👋🏽", "שלום עולם", "$5 and $10"):
        assert piece in reply, piece
    assert reply.count("<svg") == 4  # two inline, two display formulas
    assert reply.count("<pre>") == 6  # five languages + the fence under the list item
    assert "\\int_0^1 x^2\\,dx" in reply  # the math's label keeps its backslashes


def test_markdown_json_and_text_keep_the_messages_byte_for_byte(stress, tmp_path):
    store, conv_id = stress
    conv = store.get_conversation(conv_id)
    md, txt = to_markdown(conv), to_text(conv)
    for content in _contents():
        assert content.rstrip("\n") in md and content in txt
    out = tmp_path / "c.json"
    export_conversations(store, [conv_id], "json", out)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [m["content"] for m in doc["conversations"][0]["messages"]] == _contents()
    written = [export_conversations(store, [conv_id], f, tmp_path / f"c.{f}")[0]
               for f in ("md", "txt")]
    assert written[0].read_bytes() == md.encode() and written[1].read_bytes() == txt.encode()


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)")
def test_pdf_of_the_stress_conversation_holds_no_markdown_source(stress, tmp_path):
    """The PDF's text (pdftotext) shows rendered Markdown: no `## `, `|---|` or `$$`."""
    store, conv_id = stress
    out = export_conversations(store, [conv_id], "pdf", tmp_path / "s.pdf")[0]
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(out), "-"], check=True,
                          capture_output=True, text=True).stdout
    for raw in ("## ", "|---|", "$$", "```", "~~"):
        assert raw not in text, raw
    for piece in ("A table", "Python", "dynamic", "pip install foo", "println!", "SELECT name",
                  "$5 and $10", "The end."):
        assert piece in text, piece
    # The 300-character word is broken over several lines, not cut off at the margin.
    word = "a1b2c3d4e5" * 28
    assert word in re.sub(r"\s+", "", text)
    assert max(len(line) for line in text.splitlines()) < 120
