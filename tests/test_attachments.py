"""Attachments (app/attachments.py): read, refuse with one line, fence, summarize."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.attachments import (
    Attachment,
    attached_names,
    compose,
    read_attachment,
    summarize,
)
from app.errors import UserError


def test_text_file_becomes_a_fenced_block_with_its_name(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    att = read_attachment(path)
    assert (att.name, att.language) == ("data.csv", "csv")
    sent = compose("look at this", [att])
    assert sent == "look at this\n\nAttached file `data.csv`:\n```csv\na,b\n1,2\n```"
    assert summarize(sent) == "look at this\n\n📎 data.csv · 2 lines"
    assert attached_names(sent) == ["data.csv"]


def test_too_large_binary_and_pdf_are_refused_with_one_line(tmp_path):
    big = tmp_path / "big.log"
    big.write_bytes(b"x" * 300_000)
    with pytest.raises(UserError, match=r"big.log is 293 KB; attachments are limited to 256 KB"):
        read_attachment(big)
    binary = tmp_path / "a.bin"
    binary.write_bytes(b"\x00\x01")
    with pytest.raises(UserError, match="a.bin is not a text file"):
        read_attachment(binary)
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    with pytest.raises(UserError, match="doc.pdf: PDF text needs"):
        read_attachment(pdf)
    assert read_attachment(pdf, pdf_text=lambda p: "page one").text == "page one"
    with pytest.raises(UserError, match="missing.txt"):
        read_attachment(tmp_path / "missing.txt")


@given(st.text(max_size=200), st.text(max_size=50))
def test_any_file_text_round_trips_through_its_fence(body, typed):
    att = Attachment("f.txt", body)
    sent = compose(typed, [att])
    assert attached_names(sent) == ["f.txt"]
    assert "Attached file" not in summarize(sent).split("📎")[-1]


def test_an_attachment_is_stored_and_exported_with_its_message(tmp_path):
    from app.exchange.export import to_markdown
    from app.store.store import Store

    path = tmp_path / "data.json"
    path.write_text('{"a": 1}', encoding="utf-8")
    with Store.open(tmp_path / "db.sqlite") as store:
        conv = store.create_conversation()
        store.add_message(conv, None, "user", compose("read it", [read_attachment(path)]))
        text = to_markdown(store.get_conversation(conv))
    assert "Attached file `data.json`:" in text and '{"a": 1}' in text
