"""First run, the status bar, keyboard shortcuts, accessible names, errors, the about box."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QSpinBox,
    QTableWidget,
)

from app.gui.errors import show_error
from app.gui.settings_dialog import SettingsDialog
from app.gui.shortcuts import SHORTCUTS, ShortcutsDialog
from app.gui.status_bar import format_bytes, memory_in_use
from app.messages import GenerationStats
from app.settings import Settings, load_settings

from .conftest import load_demo, wait
from .fake_folder import make_grok_folder


def test_first_run_shows_the_welcome_view(qtbot, make_window):
    """Without settings the welcome view offers the folder and the clearly labelled demo."""
    window = make_window(Settings())
    window.start()
    assert window.stack.currentWidget() is window.welcome
    assert not window.composer.isVisible()
    assert "tiny model, not Grok-2" in window.welcome.demo_button.accessibleName()


def test_welcome_demo_loads_the_demo_and_remembers_it(qtbot, make_window):
    """Choosing the demo loads it, shows the chat, and the welcome is not shown again."""
    window = make_window(Settings())
    window.start()
    window.welcome.demo_button.click()
    assert window.stack.currentWidget() is window.transcript
    wait(qtbot, lambda: window.worker.info is not None and not window.loader.loading)
    assert window.worker.info.is_demo and "Demo" in window.status.model.text()
    assert "not Grok-2" in window.transcript.empty.subtitle.text()
    assert load_settings().welcome_done


def test_welcome_folder_check_reports_problems(qtbot, make_window, tmp_path):
    """A chosen folder is checked at once; a broken one says exactly what is missing."""
    folder = make_grok_folder(tmp_path / "grok")
    (folder / "config.json").unlink()
    window = make_window(Settings())
    window.start()
    check = window.welcome.choose_folder(str(folder))
    assert not check.ok and "config.json: missing" in window.welcome.folder_result.text()
    assert window.stack.currentWidget() is window.welcome


def test_status_bar_shows_model_speed_and_memory(qtbot, make_window):
    """Model name, where the weights live, tok/s, TTFT and memory in use."""
    window = make_window()
    load_demo(qtbot, window)
    window.status.set_stats(GenerationStats(5, 40, 0.25, 31.5, 1.5))
    assert window.status.device.text().startswith("Weights on CPU")
    assert window.status.speed.text() == "31.5 tok/s"
    assert window.status.ttft.text() == "first token 0.25 s"
    assert window.status.memory.text().startswith("Memory ")
    used, label = memory_in_use()
    assert used > 10_000_000 and label == "memory"
    assert format_bytes(1_500_000_000) == "1.5 GB"


def test_shortcuts_are_on_actions_and_listed(qtbot, make_window):
    """Every shortcut in the table is bound to a window action and shown in the help."""
    window = make_window()
    for shortcut in SHORTCUTS:
        assert window.menu_actions[shortcut.name].shortcut().toString() == shortcut.keys
    table = ShortcutsDialog(window).findChild(QTableWidget)
    listed = {table.item(row, 1).text() for row in range(table.rowCount())}
    assert {s.description for s in SHORTCUTS} <= listed
    assert "New line in the message" in listed


def test_every_control_has_an_accessible_name(qtbot, make_window, store):
    """Buttons, inputs and lists carry an accessible name or visible text."""
    window = make_window()
    load_demo(qtbot, window)
    dialog = SettingsDialog(Settings(), "", window)
    kinds = (QAbstractButton, QLineEdit, QPlainTextEdit, QComboBox, QSpinBox, QListWidget)
    unnamed = []
    for root in (window, dialog):
        for kind in kinds:
            for widget in root.findChildren(kind):
                if widget.objectName().startswith("qt_") or isinstance(widget.parent(), QLineEdit):
                    continue  # Qt's own parts (spin box editor, clear button, menu extension)
                text = widget.text() if isinstance(widget, QAbstractButton) else ""
                if not (widget.accessibleName() or text.strip("&")):
                    unnamed.append(f"{type(widget).__name__} {widget.objectName()}")
    assert unnamed == [], "\n".join(unnamed)


def test_show_error_uses_the_banner_once(qtbot, make_window):
    """The same error twice shows once; a different one replaces it."""
    window = make_window()
    show_error(window.transcript, "Disk full", "trace")
    show_error(window.composer, "Disk full", "trace")
    assert window.error_banner.shown_count == 1 and window.error_banner.isVisible()
    show_error(window, "Another problem")
    assert window.error_banner.shown_count == 2
    assert window.error_banner.message == "Another problem"


def test_export_selection_writes_the_chosen_format(qtbot, make_window, store, tmp_path,
                                                   monkeypatch):
    """Ctrl+E exports the selected conversations in the format picked in the file dialog."""
    from app.gui import files

    conv = store.create_conversation("Kyoto")
    store.add_message(conv, None, "user", "temples please")
    window = make_window()
    window.sidebar.refresh()
    window.sidebar.item_for(conv).setSelected(True)
    target = tmp_path / "out.md"
    monkeypatch.setattr(files, "choose_export_target", lambda *a: ("md", target))
    window.menu_actions["export"].trigger()
    assert "temples please" in target.read_text()


def test_token_count_follows_the_draft(qtbot, make_window):
    """Typing updates the prompt token count and the context used / limit."""
    window = make_window()
    load_demo(qtbot, window)
    window.composer.set_text("hello there general kenobi")
    wait(qtbot, lambda: "tokens in this message" in window.composer.info.text(), 3000)
    assert window.composer.info.text().endswith("/ 4,096 tokens")


def test_loading_shows_progress_and_can_be_cancelled(qtbot, make_window):
    """A slow load shows stage, amount and time left; Cancel stops it and no model is set."""
    import threading
    import time

    from app.messages import Progress
    from app.worker import EngineWorker

    release = threading.Event()

    def slow_loader(request, progress):
        for done in range(1, 1000):
            progress(Progress("loading weights", done * 10**8, 539 * 10**9))
            time.sleep(0.01)
            if release.is_set():
                break
        raise AssertionError("the load should have been cancelled")

    window = make_window(Settings(welcome_done=True), worker=EngineWorker(slow_loader))
    window.load_demo()
    wait(qtbot, lambda: "GB of 539.0 GB" in window.progress.detail.text(), 5000)
    assert "left" in window.progress.detail.text()
    assert window.composer.unavailable_reason == "Loading the demo model…"
    window.progress.cancel.click()
    wait(qtbot, lambda: not window.loader.loading, 5000)
    release.set()
    assert not window.progress.isVisible() and window.worker.info is None
    assert window.composer.unavailable_reason is not None and not window.error_banner.isVisible()
