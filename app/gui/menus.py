"""The menu bar: every command the window offers, with the shortcuts from shortcuts.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QMenuBar, QMessageBox, QWidget

from app import APP_NAME, __version__
from app.gui.chat import ChatController
from app.gui.composer import Composer
from app.gui.shortcuts import ShortcutsDialog, key_sequence
from app.gui.sidebar import Sidebar
from app.gui.theme import app_icon


class MenuHost(Protocol):
    """What the menus call on the main window (a QMainWindow); spelled out here so that
    menus.py does not import main_window.py, which imports it."""

    chat: ChatController
    composer: Composer
    sidebar: Sidebar

    def menuBar(self) -> QMenuBar: ...
    def new_chat(self) -> object: ...
    def export(self) -> object: ...
    def import_conversations(self) -> object: ...
    def open_settings(self) -> object: ...
    def close(self) -> bool: ...
    def copy_last_reply(self) -> object: ...
    def rename_current(self) -> object: ...
    def load_configured_model(self) -> object: ...
    def load_demo(self) -> object: ...
    def unload_model(self) -> object: ...
    def regenerate_last(self) -> object: ...
    def edit_last_message(self) -> object: ...
    def fork(self) -> object: ...
    def choose_attachments(self) -> object: ...
    def toggle_quick_settings(self) -> object: ...
    def toggle_sidebar(self) -> object: ...


def _bound(menu: QMenu, actions: dict[str, QAction], name: str, text: str,
           slot: Callable[[], object]) -> None:
    action = menu.addAction(text)
    action.setShortcut(key_sequence(name))
    action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    action.triggered.connect(slot)
    actions[name] = action


def build_menus(window: MenuHost, parent: QWidget) -> dict[str, QAction]:
    """Fill the window's menu bar; returns the actions that carry shortcuts, by name.
    `parent` is the same window as a QWidget, the parent of the dialogs the Help menu opens."""
    bar = window.menuBar()
    actions: dict[str, QAction] = {}
    file_menu = bar.addMenu("&File")
    _bound(file_menu, actions, "new_chat", "&New chat", window.new_chat)
    _bound(file_menu, actions, "export", "&Export…", window.export)
    file_menu.addAction("&Import…", window.import_conversations)
    file_menu.addSeparator()
    _bound(file_menu, actions, "settings", "&Settings…", window.open_settings)
    file_menu.addSeparator()
    _bound(file_menu, actions, "quit", "&Quit", window.close)
    edit_menu = bar.addMenu("&Edit")
    _bound(edit_menu, actions, "copy_last", "Copy &last reply", window.copy_last_reply)
    _bound(edit_menu, actions, "search", "&Find conversations", window.sidebar.focus_search)
    _bound(edit_menu, actions, "rename", "&Rename conversation", window.rename_current)
    _bound(edit_menu, actions, "focus_composer", "Go to the &message box",
           window.composer.focus_input)
    chat_menu = bar.addMenu("&Chat")
    _bound(chat_menu, actions, "stop", "&Stop the reply", window.chat.stop)
    chat_menu.addAction("&Regenerate the last reply", window.regenerate_last)
    chat_menu.addAction("&Edit my last message", window.edit_last_message)
    chat_menu.addAction("&Fork into a new chat", lambda: window.fork())
    chat_menu.addAction("&Attach files…", window.choose_attachments)
    chat_menu.addSeparator()
    chat_menu.addAction("Chat &settings panel", window.toggle_quick_settings)
    chat_menu.addAction("Show or hide the chat &list", window.toggle_sidebar)
    model_menu = bar.addMenu("&Model")
    model_menu.addAction("Load the &Grok-2 folder", window.load_configured_model)
    model_menu.addAction("Load the &demo model (tiny, for trying the app)", window.load_demo)
    model_menu.addAction("&Unload", window.unload_model)
    help_menu = bar.addMenu("&Help")
    help_menu.addAction("&Keyboard shortcuts", lambda: ShortcutsDialog(parent).open())
    help_menu.addAction(f"&About {APP_NAME}", lambda: about_box(parent).open())
    return actions


def about_box(parent: QWidget) -> QMessageBox:
    box = QMessageBox(parent)
    box.setWindowTitle(f"About {APP_NAME}")
    box.setIconPixmap(app_icon().pixmap(64, 64))
    box.setText(f"<b>{APP_NAME}</b> {__version__}")
    box.setInformativeText("Chat with xAI's open-weights Grok-2 on your own computer.\n"
                           "Grok-2 weights: Grok 2 Community License Agreement.")
    return box
