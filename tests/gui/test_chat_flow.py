"""The chat on the real engine thread and the tiny demo model: stream, store, stop,
regenerate, edit-and-resend branches, continue, failures and closing mid-reply."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from PySide6.QtCore import Qt

from app.messages import GenerationParams
from app.settings import Settings
from app.store.store import Store

from .conftest import load_demo, wait

LONG = Settings(welcome_done=True, sampling=GenerationParams(max_tokens=4000, seed=1))
SHORT = Settings(welcome_done=True, sampling=GenerationParams(max_tokens=12, seed=1))


def send(qtbot, window, text: str) -> None:
    window.composer.set_text(text)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def replies(window) -> list:
    if window.chat.conversation_id is None:
        return []
    conv = window.chat.store.get_conversation(window.chat.conversation_id)
    return [m for m in conv.messages if m.role == "assistant"]


def test_send_streams_reply_and_stores_it(qtbot, make_window):
    """Enter sends; the reply streams into the transcript and is stored complete."""
    window = make_window(SHORT)
    load_demo(qtbot, window)
    send(qtbot, window, "Hello there")
    assert window.composer.text() == ""
    wait(qtbot, lambda: window.chat.generating)
    wait(qtbot, lambda: not window.chat.generating)
    [reply] = replies(window)
    assert reply.status == "complete" and reply.finish_reason == "length"
    assert reply.content and reply.stats["completion_tokens"] == 12
    shown = window.transcript.widget_for(reply.id)
    assert shown is not None and shown.view.text == reply.content
    assert window.sidebar.ids() == [window.chat.conversation_id]
    assert window.title.text() == "Hello there"
    assert "tok/s" in window.status.speed.text()


def test_stop_mid_reply_keeps_the_partial_text(qtbot, make_window):
    """Esc stops a long reply at the next step; the partial text is stored as cancelled."""
    window = make_window(LONG)
    load_demo(qtbot, window)
    send(qtbot, window, "Tell me a long story")
    wait(qtbot, lambda: window.transcript.repaints > 0)
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    wait(qtbot, lambda: not window.chat.generating)
    [reply] = replies(window)
    assert reply.finish_reason == "cancelled" and reply.status == "complete"
    assert 0 < reply.stats["completion_tokens"] < 4000
    assert window.composer.button.text() == "Send"


def test_regenerate_keeps_both_versions_with_arrows(qtbot, make_window):
    """Regenerate adds a sibling reply; the arrows move between the versions."""
    window = make_window(replace(SHORT, sampling=GenerationParams(max_tokens=8)))
    load_demo(qtbot, window)
    send(qtbot, window, "Pick a word")
    wait(qtbot, lambda: len(replies(window)) == 1 and not window.chat.generating)
    first = replies(window)[0]
    window.transcript.action.emit("regenerate", first.id)
    wait(qtbot, lambda: len(replies(window)) == 2 and not window.chat.generating)
    second = replies(window)[1]
    assert second.parent_id == first.parent_id
    view = window.transcript.last_reply()
    assert (view.id, view.sibling_index, view.sibling_count) == (second.id, 2, 2)
    window.transcript.action.emit("prev", second.id)
    view = window.transcript.last_reply()
    assert (view.id, view.sibling_index) == (first.id, 1)


def test_edit_and_resend_makes_a_branch(qtbot, make_window):
    """Editing a user message adds a sibling with its own reply; the old branch stays."""
    window = make_window(SHORT)
    load_demo(qtbot, window)
    send(qtbot, window, "First question")
    wait(qtbot, lambda: replies(window) and not window.chat.generating)
    user = window.transcript.views[0]
    window.transcript.edit_submitted.emit(user.id, "Second question")
    wait(qtbot, lambda: len(replies(window)) == 2 and not window.chat.generating)
    conv = window.chat.store.get_conversation(window.chat.conversation_id)
    users = [m for m in conv.messages if m.role == "user"]
    assert [u.content for u in users] == ["First question", "Second question"]
    assert users[0].parent_id == users[1].parent_id
    path = [v.text for v in window.transcript.views]
    assert path[0] == "Second question" and window.transcript.views[0].sibling_count == 2
    window.transcript.action.emit("prev", window.transcript.views[0].id)
    assert window.transcript.views[0].text == "First question"
    assert len(window.transcript.views) == 2  # the old reply is still there


def test_closing_mid_reply_keeps_it_and_it_can_be_continued(qtbot, make_window):
    """Closing during a reply stores it as interrupted within 2 s; reopened, it continues."""
    window = make_window(LONG)
    load_demo(qtbot, window)
    send(qtbot, window, "Write at length")
    wait(qtbot, lambda: window.transcript.repaints > 0)
    conv_id = window.chat.conversation_id
    start = time.monotonic()
    window.close()
    assert time.monotonic() - start < 2.0
    assert not window.worker._thread.is_alive()
    with Store.open() as store:
        [reply] = [m for m in store.get_conversation(conv_id).messages if m.role == "assistant"]
    assert reply.status == "interrupted" and reply.content

    again = make_window(replace(LONG, sampling=GenerationParams(max_tokens=5, seed=2)))
    load_demo(qtbot, again)
    again.open_conversation(conv_id)
    view = again.transcript.last_reply()
    assert view.status == "interrupted"
    again.transcript.action.emit("continue", view.id)
    wait(qtbot, lambda: again.chat.generating)
    wait(qtbot, lambda: not again.chat.generating)
    resumed = again.chat.store.get_message(view.id)
    assert resumed.status == "complete" and resumed.content.startswith(reply.content)
    assert len(resumed.content) > len(reply.content)


def test_discard_an_interrupted_reply(qtbot, make_window, store):
    """Discard removes a cut-off reply and leaves the question."""
    conv = store.create_conversation("cut")
    user = store.add_message(conv, None, "user", "q")
    reply = store.begin_reply(conv, user, {"name": "demo"}, GenerationParams())
    store.interrupt_reply(reply, "half an ans")
    window = make_window()
    window.open_conversation(conv)
    window.transcript.action.emit("discard", reply)
    assert [v.id for v in window.transcript.views] == [user]


def test_message_larger_than_the_context_is_refused_with_one_line(qtbot, make_window):
    """A message beyond the context is not sent: one notice, the text back in the box, no
    half-made reply, and the chat stays usable."""
    window = make_window(SHORT)
    load_demo(qtbot, window)
    send(qtbot, window, "word " * 6000)  # more than the demo model's 4096-token context
    wait(qtbot, lambda: window.notice_bar.isVisible())
    assert "last message alone is" in window.notice_label.text()
    assert not window.error_banner.isVisible()
    assert window.composer.text().startswith("word word")  # nothing the user wrote is lost
    assert replies(window) == [] and not window.chat.generating
    window.notice_bar.hide()
    window.composer.set_text("")
    send(qtbot, window, "short one")
    wait(qtbot, lambda: replies(window) and not window.chat.generating)
    assert replies(window)[0].status == "complete"
    assert not window.error_banner.isVisible()


def test_engine_exception_mid_reply_is_reported(qtbot, make_window, monkeypatch):
    """An exception inside the engine (e.g. CUDA out of memory) becomes one banner."""
    window = make_window(SHORT)
    load_demo(qtbot, window)
    engine = window.worker._engine

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "stream_chat", broken)
    send(qtbot, window, "hi")
    wait(qtbot, lambda: window.error_banner.isVisible() and not window.chat.generating)
    assert window.error_banner.message.startswith("Out of GPU memory")
    assert replies(window)[0].status == "error"


def test_bad_model_folder_reports_the_missing_file(qtbot, make_window, tmp_path):
    """Loading a folder without config.json names the file; the composer stays disabled."""
    folder = tmp_path / "not-grok"
    folder.mkdir()
    window = make_window(Settings(welcome_done=True, model_folder=str(folder)))
    window.load_configured_model()
    wait(qtbot, lambda: window.error_banner.isVisible() and not window.loader.loading)
    assert "config.json" in window.error_banner.message
    assert window.composer.unavailable_reason is not None


@pytest.mark.parametrize("keys", ["Ctrl+N"])
def test_new_chat_shortcut_clears_the_transcript(qtbot, make_window, keys):
    """Ctrl+N starts a new, empty chat."""
    window = make_window(SHORT)
    load_demo(qtbot, window)
    send(qtbot, window, "hello")
    wait(qtbot, lambda: replies(window) and not window.chat.generating)
    window.menu_actions["new_chat"].trigger()
    assert window.chat.conversation is None and window.transcript.views == []
    assert window.menu_actions["new_chat"].shortcut().toString() == keys


def test_disk_full_stops_the_reply_with_one_message(qtbot, make_window, monkeypatch):
    """A store write failing mid-reply stops generation and says why; the app stays usable."""
    from app.errors import StorageError

    window = make_window(LONG)
    load_demo(qtbot, window)

    def full(*args, **kwargs):
        raise StorageError("cannot write conversations.sqlite3: the disk is full; free space")

    monkeypatch.setattr(window.store, "update_reply", full)
    send(qtbot, window, "Write a lot")
    wait(qtbot, lambda: window.error_banner.isVisible() and not window.chat.generating)
    assert "disk is full" in window.error_banner.message
    wait(qtbot, lambda: not window.worker.busy)  # the engine thread was stopped too
    [reply] = replies(window)
    assert reply.status == "interrupted"
