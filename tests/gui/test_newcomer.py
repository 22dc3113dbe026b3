"""Issue 15: the rough edges a newcomer hit, each with its test, and the chat features around
long conversations: context policy with its marker and meter, quick settings, delete with
undo, fork, attachments, the narrow window, the single instance."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QApplication, QLineEdit

from app.messages import GenerationParams
from app.settings import Settings
from app.store.store import Store

from .conftest import load_demo, wait

SHORT = Settings(welcome_done=True, sampling=GenerationParams(max_tokens=8, seed=1))


def send(qtbot, window, text: str) -> None:
    window.composer.set_text(text)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def replies(window) -> list:
    conv = window.chat.store.get_conversation(window.chat.conversation_id)
    return [m for m in conv.messages if m.role == "assistant"]


def long_chat(store: Store, turns: int, words: int = 300, policy: str | None = None) -> int:
    """A stored chat far past the demo model's 4096-token context."""
    params = {"context_policy": policy} if policy else None
    conv = store.create_conversation(system_prompt="You are terse.", params=params)
    parent = None
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        parent = store.add_message(conv, parent, role, f"turn {i} " + "lorem ipsum " * words)
    return conv


class _Paints(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def eventFilter(self, watched, event) -> bool:  # Qt override
        if event.type() == QEvent.Type.Paint:
            self.count += 1
        return False


# ---- the numbered rough edges ---------------------------------------------------------------


def test_1_composer_repaints_when_loading_ends(qtbot, make_window):
    """The placeholder changes from "Loading…" to the prompt on screen, not only in memory."""
    window = make_window(SHORT)
    window.composer.set_unavailable("Loading the demo model…")
    qtbot.wait(50)
    paints = _Paints()
    window.composer.edit.viewport().installEventFilter(paints)
    window.composer.set_unavailable(None)
    wait(qtbot, lambda: paints.count > 0, timeout=2000)
    assert "Loading" not in window.composer.edit.placeholderText()
    load_demo(qtbot, window)
    assert window.composer.edit.placeholderText().startswith("Message Grok")
    assert window.composer.button.isEnabled()


def test_2_rename_editor_is_readable_and_the_header_follows(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation(title="Old title")
    window.sidebar.refresh()
    window.open_conversation(conv)
    window.rename_current()
    editor = window.sidebar.list.findChild(QLineEdit)
    assert editor is not None
    qtbot.waitUntil(editor.isVisible, timeout=2000)
    assert editor.height() >= editor.fontMetrics().height() + 8
    editor.setText("New title")
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    wait(qtbot, lambda: window.title.text() == "New title", timeout=3000)
    assert window.store.get_conversation(conv).title == "New title"


def test_3_enter_sends_an_edit_without_a_trailing_newline(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation()
    user = window.store.add_message(conv, None, "user", "first version")
    window.open_conversation(conv)
    widget = window.transcript.widget_for(user)
    widget.start_edit()
    widget.edit_box.setPlainText("second version\n")
    with qtbot.waitSignal(window.transcript.edit_submitted, timeout=2000) as got:
        qtbot.keyClick(widget.edit_box, Qt.Key.Key_Return)
    assert got.args == [user, "second version"]


def test_4_auto_quantization_chooses_what_fits_in_plain_words(qtbot):
    from app.gui.settings_dialog import SettingsDialog
    from app.placement import preview
    from app.worker import LoadModel, _auto_quant

    dialog = SettingsDialog(Settings(gpu_memory_gb=48, cpu_memory_gb=256))
    qtbot.addWidget(dialog)
    shown = dialog.placement.text()
    assert shown.startswith("Fits") and "int8 (chosen by auto)" in shown and "--" not in shown

    fits = preview(Settings(gpu_memory_gb=48, cpu_memory_gb=256))
    assert fits.fits and "at int8 (chosen by auto)" in fits.headline
    nothing = preview(Settings(gpu_memory_gb=2, cpu_memory_gb=20))
    assert not nothing.fits and "--" not in nothing.headline
    forced = preview(Settings(gpu_memory_gb=48, cpu_memory_gb=256, quantization="bf16"))
    assert "quantization int4" in forced.headline and "--quant" not in forced.headline
    request = LoadModel(folder="/no/config/here", auto_quant=True, context_length=8192)
    assert _auto_quant(request, (48 * 10**9, 256 * 10**9)) == "int8"


def test_5_a_chat_added_by_the_command_line_appears(qtbot, make_window, home):
    window = make_window(SHORT)
    assert window.sidebar.ids() == []
    with Store.open() as cli:  # another connection, as `grok-desktop import` would be
        conv = cli.create_conversation(title="Imported")
        cli.add_message(conv, None, "user", "hello")
    window._check_outside_changes()
    assert window.sidebar.ids() == [conv]


def test_6_undo_trash_reopens_the_open_chat(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation(title="Keep me")
    window.store.add_message(conv, None, "user", "hi")
    window.sidebar.refresh()
    window.open_conversation(conv)
    window.sidebar.delete([conv])
    assert window.chat.conversation_id is None
    window.sidebar.undo_delete()
    assert window.chat.conversation_id == conv and window.title.text() == "Keep me"


def test_7_context_count_follows_versions_and_speed_clears_while_streaming(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation()
    user = window.store.add_message(conv, None, "user", "question")
    window.store.add_message(conv, user, "assistant", "short")
    long = window.store.add_message(conv, user, "assistant", "a much longer answer " * 20)
    load_demo(qtbot, window)
    window.open_conversation(conv)
    wait(qtbot, lambda: "context" in window.composer.info.text())
    before = window.composer.info.text()
    window.transcript.action.emit("prev", long)
    wait(qtbot, lambda: window.composer.info.text() != before, timeout=3000)
    window.status.speed.setText("99.0 tok/s")
    send(qtbot, window, "again")
    wait(qtbot, lambda: window.chat.generating)
    assert window.status.speed.text() == "generating…"
    wait(qtbot, lambda: not window.chat.generating)
    assert "tok/s" in window.status.speed.text()


def test_8_ctrl_e_works_from_the_transcript_and_the_chat_menu_is_full(
        qtbot, make_window, monkeypatch):
    window = make_window(SHORT)
    conv = window.store.create_conversation(title="Export me")
    user = window.store.add_message(conv, None, "user", "hello there")
    window.open_conversation(conv)
    calls = []
    monkeypatch.setattr("app.gui.main_window.export_with_dialog",
                        lambda parent, store, ids, title: calls.append(ids) or [])
    label = window.transcript.widget_for(user).text_label
    window.raise_()
    window.activateWindow()
    wait(qtbot, lambda: QApplication.activeWindow() is window, timeout=3000)
    label.setFocus()
    assert QApplication.focusWidget() is label
    qtbot.keyClick(label, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
    assert calls == [[conv]]
    chat_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Chat")
    texts = [a.text() for a in chat_menu.actions() if a.text()]
    assert len(texts) >= 6 and any("Fork" in t for t in texts)


def test_9_model_menu_does_not_call_the_demo_random(make_window):
    window = make_window(SHORT)
    model_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Model")
    demo = [a.text() for a in model_menu.actions() if "demo" in a.text()]
    assert demo and all("random" not in t for t in demo)


def test_12_narrow_window_folds_the_sidebar(qtbot, make_window):
    """Even with a long title open, the window can be made narrow and the sidebar folds."""
    window = make_window(SHORT)
    conv = window.store.create_conversation(title="A very long title " * 6)
    window.open_conversation(conv)
    assert window.sidebar.isVisible()
    window.resize(640, 700)
    wait(qtbot, lambda: not window.sidebar.isVisible(), timeout=2000)
    assert window.width() < 700
    window.sidebar_button.click()
    assert window.sidebar.isVisible()
    window.sidebar_button.click()
    window.resize(1280, 800)
    wait(qtbot, lambda: window.width() == 1280, timeout=2000)
    assert not window.sidebar.isVisible()  # the user hid it: it stays hidden
    window.sidebar_button.click()
    assert window.sidebar.isVisible()


# ---- long conversations: the context policy -------------------------------------------------


def test_rolling_window_marks_where_the_context_starts_and_replies(qtbot, make_window):
    window = make_window(SHORT)
    conv = long_chat(window.store, 24)
    load_demo(qtbot, window)
    window.open_conversation(conv)
    wait(qtbot, lambda: window.transcript.marker is not None)
    marker = window.transcript.marker
    assert "outside the model's context" in marker.text() and marker.isVisible()
    info = window.composer.info.text()
    assert "earlier messages left out of the context" in info
    used = int(info.split("context ")[1].split(" /")[0].replace(",", ""))
    assert used <= 4096
    send(qtbot, window, "and now?")
    wait(qtbot, lambda: len(replies(window)) == 13 and not window.chat.generating)
    assert replies(window)[-1].status == "complete"
    assert not window.error_banner.isVisible()


def test_stop_at_the_limit_says_so_and_keeps_the_text(qtbot, make_window):
    window = make_window(SHORT)
    conv = long_chat(window.store, 24, policy="stop")
    load_demo(qtbot, window)
    window.open_conversation(conv)
    wait(qtbot, lambda: "context is full" in window.composer.info.text())
    send(qtbot, window, "one more")
    wait(qtbot, lambda: window.notice_bar.isVisible())
    assert "reached the model's context" in window.notice_label.text()
    assert not window.error_banner.isVisible()  # a policy at work, not an error
    assert window.composer.text() == "one more"
    assert len(replies(window)) == 12


def test_truncate_the_middle_keeps_the_first_exchange(qtbot, make_window):
    window = make_window(SHORT)
    conv = long_chat(window.store, 24, policy="middle")
    load_demo(qtbot, window)
    window.open_conversation(conv)
    wait(qtbot, lambda: window.transcript.marker is not None)
    path = window.store.get_conversation(conv).current_path()
    assert window.transcript.marker_id not in (path[0].id, path[1].id, path[2].id)
    assert "first exchange is kept" in window.transcript.marker.text()


# ---- quick settings, delete, fork, attachments ----------------------------------------------


def test_quick_settings_are_stored_with_the_conversation(qtbot, make_window):
    window = make_window(replace(SHORT, system_prompt="default prompt"))
    conv = window.store.create_conversation(system_prompt="default prompt")
    window.open_conversation(conv)
    window.toggle_quick_settings()
    panel = window.quick
    qtbot.waitUntil(lambda: panel.width() >= panel.minimumWidth(), timeout=2000)
    assert panel.isVisible() and panel.temperature.value() == 0.7
    panel.temperature.setValue(0.25)
    panel.max_tokens.setValue(64)
    panel.policy.setCurrentIndex(panel.policy.findData("middle"))
    panel.system_prompt.setPlainText("Answer in French.")
    panel.flush()
    stored = window.store.get_conversation(conv)
    assert stored.params["temperature"] == 0.25 and stored.params["max_tokens"] == 64
    assert stored.params["context_policy"] == "middle"
    assert stored.system_prompt == "Answer in French."
    panel.reset.click()
    stored = window.store.get_conversation(conv)
    assert stored.params == {} and stored.system_prompt == "default prompt"
    assert panel.temperature.value() == 0.7


def test_quick_settings_before_the_first_message_apply_to_the_new_chat(qtbot, make_window):
    window = make_window(SHORT)
    load_demo(qtbot, window)
    window.toggle_quick_settings()
    window.quick.top_p.setValue(0.5)
    send(qtbot, window, "hello")
    wait(qtbot, lambda: window.chat.conversation_id is not None and not window.chat.generating)
    assert window.store.get_conversation(window.chat.conversation_id).params["top_p"] == 0.5


def test_delete_a_message_with_its_later_turns_and_undo(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation()
    ids, parent = [], None
    for i, role in enumerate(["user", "assistant", "user", "assistant"]):
        parent = window.store.add_message(conv, parent, role, f"m{i}")
        ids.append(parent)
    window.open_conversation(conv)
    window.transcript.action.emit("delete", ids[2])
    assert [v.text for v in window.transcript.views] == ["m0", "m1"]
    assert window.undo_bar.isVisible() and "2 messages" in window.undo_label.text()
    window.undo_button.click()
    assert [v.text for v in window.transcript.views] == ["m0", "m1", "m2", "m3"]
    assert not window.undo_bar.isVisible()


def test_fork_opens_a_new_chat_with_the_branch(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation(title="Trip")
    first = window.store.add_message(conv, None, "user", "plan a trip")
    reply = window.store.add_message(conv, first, "assistant", "to where?")
    window.store.add_message(conv, reply, "user", "Rome")
    window.sidebar.refresh()
    window.open_conversation(conv)
    window.transcript.action.emit("fork", reply)
    assert window.chat.conversation_id not in (None, conv)
    assert [v.text for v in window.transcript.views] == ["plan a trip", "to where?"]
    assert window.title.text() == "Trip (fork)"
    assert window.sidebar.ids()[0] == window.chat.conversation_id and conv in window.sidebar.ids()


def test_attachment_is_sent_as_a_fenced_block_and_shown_as_one_line(qtbot, make_window,
                                                                    tmp_path):
    window = make_window(SHORT)
    load_demo(qtbot, window)
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\n- one\n- two\n", encoding="utf-8")
    big = tmp_path / "huge.log"
    big.write_bytes(b"x" * 400_000)
    window.attach_files([str(big)])
    assert "huge.log is 391 KB" in window.error_banner.message
    assert window.composer.attachments == []
    window.error_banner.dismiss()
    window.composer.set_text("")
    wait(qtbot, lambda: "context" in window.composer.info.text())
    before = window.composer.info.text()
    window.composer.files_dropped.emit([str(notes)])
    assert [a.name for a in window.composer.attachments] == ["notes.md"]
    wait(qtbot, lambda: window.composer.info.text() != before, timeout=3000)
    assert "tokens in this message" in window.composer.info.text()
    send(qtbot, window, "summarise this")
    wait(qtbot, lambda: window.chat.conversation_id is not None and not window.chat.generating)
    conv = window.store.get_conversation(window.chat.conversation_id)
    user = conv.current_path()[0]
    assert user.content.startswith("summarise this\n\nAttached file `notes.md`:\n```markdown\n")
    assert window.transcript.views[0].text == "summarise this\n\n📎 notes.md · 4 lines"
    assert window.composer.attachments == [] and not window.composer.chips.isVisible()


# ---- single instance ------------------------------------------------------------------------


def test_a_second_start_brings_the_first_forward(qtbot, home):
    from app.gui.main import activate_running, instance_name, listen_for_others

    name = instance_name()
    assert not activate_running(name, timeout_ms=200)  # nobody runs yet
    woken = []
    server = listen_for_others(name, lambda: woken.append(True))
    assert server is not None
    try:
        assert activate_running(name)
        wait(qtbot, lambda: woken, timeout=3000)
    finally:
        server.close()
    assert instance_name() == name and str(home) not in name


def test_chat_menu_fork_forks_the_open_chat_at_its_last_message(qtbot, make_window):
    window = make_window(SHORT)
    conv = window.store.create_conversation(title="Menu")
    first = window.store.add_message(conv, None, "user", "hi")
    window.store.add_message(conv, first, "assistant", "hello")
    window.open_conversation(conv)
    chat_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Chat")
    next(a for a in chat_menu.actions() if "Fork" in a.text()).trigger()
    assert window.chat.conversation_id != conv and window.title.text() == "Menu (fork)"
    assert [v.text for v in window.transcript.views] == ["hi", "hello"]
