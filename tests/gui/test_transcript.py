"""The transcript: lazy building for long chats, coalesced streaming, per-block copy."""

from __future__ import annotations

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QToolButton

from app.gui.message_view import CodeBlock, MessageView, ProseLabel
from app.gui.transcript import PAGE, Transcript

from .conftest import wait


def conversation(n: int) -> list[MessageView]:
    return [MessageView(i, "user" if i % 2 == 0 else "assistant", f"message {i} with *markdown*")
            for i in range(n)]


def make(qtbot) -> Transcript:
    transcript = Transcript()
    qtbot.addWidget(transcript)
    transcript.resize(900, 700)
    transcript.show()
    return transcript


def test_long_conversation_builds_only_the_newest_page(qtbot):
    """500 messages: only PAGE widgets exist at first; earlier pages are built on demand."""
    transcript = make(qtbot)
    transcript.set_messages(conversation(500))
    assert len(transcript.widgets) == PAGE
    assert transcript.widget_for(499) is not None and transcript.widget_for(0) is None
    assert transcript.load_earlier.isVisibleTo(transcript)
    transcript.build_earlier()
    assert len(transcript.widgets) == 2 * PAGE and transcript.widget_for(500 - 2 * PAGE)


def test_scrolling_to_the_top_loads_the_previous_page(qtbot):
    """Reaching the top of the scroll area builds the next older page."""
    transcript = make(qtbot)
    transcript.set_messages(conversation(200))
    wait(qtbot, lambda: transcript.verticalScrollBar().maximum() > 0, 3000)
    transcript.verticalScrollBar().setValue(0)
    wait(qtbot, lambda: len(transcript.widgets) == 2 * PAGE, 3000)


def test_streaming_is_coalesced_to_the_repaint_cadence(qtbot):
    """Hundreds of token updates within a tick become one re-render of the newest text."""
    transcript = make(qtbot)
    transcript.set_messages([MessageView(1, "assistant", "", status="streaming")])
    text = ""
    for i in range(300):
        text += f"w{i} "
        transcript.stream_text(1, text)
    assert transcript.repaints == 0
    wait(qtbot, lambda: transcript.repaints == 1, 2000)
    label = transcript.widget_for(1).content.pieces[0]
    assert isinstance(label, ProseLabel) and label.segment.text == text


def test_streaming_rerenders_only_the_changed_piece(qtbot):
    """A finished code block is not re-rendered while text after it streams."""
    transcript = make(qtbot)
    transcript.set_messages([MessageView(1, "assistant", "", status="streaming")])
    widget = transcript.widget_for(1)
    base = "Intro\n\n```py\nx = 1\n```\n"
    transcript.stream_text(1, base + "tail")
    transcript.flush()
    renders = widget.content.renders
    code = widget.content.pieces[1]
    for more in ("tail more", "tail more text"):
        transcript.stream_text(1, base + more)
        transcript.flush()
    assert widget.content.pieces[1] is code
    assert widget.content.renders == renders + 2  # only the trailing prose twice


def test_code_block_copy_button_copies_the_code(qtbot):
    """Each code block has a Copy button that puts exactly its code on the clipboard."""
    transcript = make(qtbot)
    transcript.set_messages([MessageView(1, "assistant", "a\n```sh\necho hi\n```\nb\n```\nls\n```")])
    blocks = [p for p in transcript.widget_for(1).content.pieces if isinstance(p, CodeBlock)]
    assert [b.segment.code for b in blocks] == ["echo hi", "ls"]
    blocks[0].copy_button.click()
    assert QGuiApplication.clipboard().text() == "echo hi"
    assert blocks[0].copy_button.accessibleName() == "Copy code"


def test_actions_follow_the_message_state(qtbot):
    """Replies offer Regenerate and version arrows; interrupted ones Continue and Discard."""
    transcript = make(qtbot)
    transcript.set_messages([
        MessageView(1, "user", "q"),
        MessageView(2, "assistant", "a", sibling_index=2, sibling_count=3),
        MessageView(3, "user", "q2"),
        MessageView(4, "assistant", "half", status="interrupted"),
    ])
    def buttons(message_id: int) -> list[QToolButton]:
        return transcript.widget_for(message_id).action_row.findChildren(QToolButton)

    names = {i: {b.accessibleName() for b in buttons(i)} for i in (1, 2, 4)}
    assert {"Copy message", "Edit and resend"} <= names[1]
    assert {"Regenerate the reply", "Previous version", "Next version"} <= names[2]
    assert {"Continue the reply", "Discard the reply"} <= names[4]
    fired = []
    transcript.action.connect(lambda name, mid: fired.append((name, mid)))
    next(b for b in buttons(2) if b.text() == "›").click()
    assert fired == [("next", 2)]
