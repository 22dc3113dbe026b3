"""The message box: Enter sends, Shift+Enter is a new line, disabled with a reason, counts."""

from __future__ import annotations

from PySide6.QtCore import Qt

from app.gui.composer import Composer


def make(qtbot) -> Composer:
    composer = Composer()
    qtbot.addWidget(composer)
    composer.set_unavailable(None)
    return composer


def test_enter_sends_and_shift_enter_adds_a_line(qtbot):
    """Shift+Enter keeps typing on a new line; Enter sends the stripped text and clears."""
    composer = make(qtbot)
    sent = []
    composer.send_requested.connect(sent.append)
    qtbot.keyClicks(composer.edit, "first")
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(composer.edit, "second  ")
    assert sent == [] and composer.text() == "first\nsecond  "
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert sent == ["first\nsecond"] and composer.text() == ""


def test_blank_message_is_not_sent(qtbot):
    """Enter on an empty or blank box does nothing."""
    composer = make(qtbot)
    sent = []
    composer.send_requested.connect(sent.append)
    qtbot.keyClicks(composer.edit, "   ")
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert sent == []


def test_disabled_with_reason_while_no_model(qtbot):
    """Without a model the box is read-only, says why, and the button is off."""
    composer = make(qtbot)
    composer.set_unavailable("Load a model first.")
    sent = []
    composer.send_requested.connect(sent.append)
    qtbot.keyClicks(composer.edit, "hello")
    qtbot.keyClick(composer.edit, Qt.Key.Key_Return)
    assert sent == [] and composer.edit.placeholderText() == "Load a model first."
    assert not composer.button.isEnabled() and composer.edit.isReadOnly()


def test_button_becomes_stop_while_generating(qtbot):
    """While a reply streams the button reads Stop and emits stop_requested."""
    composer = make(qtbot)
    stops = []
    composer.stop_requested.connect(lambda: stops.append(1))
    composer.set_generating(True)
    assert composer.button.text() == "Stop" and composer.button.accessibleName() == "Stop the reply"
    qtbot.mouseClick(composer.button, Qt.MouseButton.LeftButton)
    assert stops == [1]
    composer.set_generating(False)
    assert composer.button.text() == "Send"


def test_token_line(qtbot):
    """The line under the box shows the draft's tokens and the context used / limit."""
    composer = make(qtbot)
    composer.set_token_info(12, 1500, 8192)
    assert composer.info.text() == "12 tokens in this message · context 1,500 / 8,192 tokens"
    composer.set_token_info(None, None, None)
    assert composer.info.text() == ""


def test_box_grows_with_lines_up_to_a_limit(qtbot):
    """The input grows line by line, then scrolls."""
    composer = make(qtbot)
    composer.show()
    one = composer.edit.height()
    composer.set_text("a\nb\nc")
    three = composer.edit.height()
    composer.set_text("\n".join("x" * 40))
    many = composer.edit.height()
    assert one < three < many
    composer.set_text("\n".join("x" * 80))
    assert composer.edit.height() == many
