"""Messages on screen: long words wrap, math and nested code render, the transcript never
grows sideways."""

from __future__ import annotations

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QToolButton

from app.gui.message_view import CodeBlock, MessageView, ProseLabel
from app.gui.transcript import Transcript

WORD = "https://example.com/" + "a1b2c3d4e5" * 28  # 300 characters, no break chance


def _transcript(qtbot, views: list[MessageView]) -> Transcript:
    transcript = Transcript()
    qtbot.addWidget(transcript)
    transcript.resize(700, 600)
    transcript.show()
    transcript.set_messages(views)
    for _ in range(5):
        QApplication.processEvents()
    return transcript


def test_a_300_character_word_does_not_widen_the_transcript(qtbot):
    """A long word in a question, a reply's prose and its code wraps inside the viewport;
    the reply's Copy buttons stay visible."""
    transcript = _transcript(qtbot, [
        MessageView(1, "user", f"what is {WORD}?"),
        MessageView(2, "assistant", f"It is {WORD}.\n\n```text\n{WORD}\n```\n\n- item {WORD}"),
    ])
    viewport = transcript.viewport().width()
    assert transcript.widget().width() <= viewport
    for message_id in (1, 2):
        widget = transcript.widget_for(message_id)
        assert widget.width() <= viewport, message_id
    reply = transcript.widget_for(2)
    buttons = [b for b in reply.findChildren(QToolButton) if b.text() == "Copy"]
    assert len(buttons) == 2  # the code block's and the message's
    for button in buttons:
        right = button.mapTo(transcript.viewport(), button.rect().topRight()).x()
        assert 0 <= right <= viewport
    assert transcript.horizontalScrollBar().maximum() == 0


def test_reply_renders_markdown_math_and_copies_nested_code(qtbot):
    """Headings and math are rich text (no `##`, no `$$`); display math keeps `\\,`; a code
    block under a list item copies exactly its code."""
    text = ("## Title\n\n$$\n\\int_0^1 x\\,dx\n$$\n\n1. Install:\n\n    ```bash\n"
            "    pip install foo\n    ```\n\n2. Run it.")
    transcript = _transcript(qtbot, [MessageView(1, "assistant", text)])
    pieces = transcript.widget_for(1).content.pieces
    assert all(isinstance(p, ProseLabel) for p in pieces)
    html = "".join(p.text() for p in pieces)
    assert "<h2>" in html and "##" not in html and "$$" not in html
    assert 'alt="\\int_0^1 x\\,dx"' in html
    label = pieces[-1]
    label.linkActivated.emit("copy:0")
    assert QGuiApplication.clipboard().text() == "pip install foo"


def test_top_level_code_keeps_its_copy_button(qtbot):
    transcript = _transcript(qtbot, [MessageView(1, "assistant", "a\n\n```py\nx = 1\n```")])
    blocks = [p for p in transcript.widget_for(1).content.pieces if isinstance(p, CodeBlock)]
    assert [b.segment.code for b in blocks] == ["x = 1"]
    assert "font-weight: bold" in blocks[0].view.text() or "color:" in blocks[0].view.text()
