"""Keyboard shortcuts: the one table the menus use and Help > Keyboard shortcuts lists."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


@dataclass(frozen=True)
class Shortcut:
    name: str  # the action it triggers
    keys: str  # portable QKeySequence text ("Ctrl" is Cmd on macOS)
    description: str


SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("new_chat", "Ctrl+N", "New chat"),
    Shortcut("search", "Ctrl+F", "Search conversations"),
    Shortcut("stop", "Esc", "Stop the reply being written"),
    Shortcut("export", "Ctrl+E", "Export the selected conversations"),
    Shortcut("settings", "Ctrl+,", "Open Settings"),
    Shortcut("copy_last", "Ctrl+Shift+C", "Copy the last reply"),
    Shortcut("focus_composer", "Ctrl+L", "Go to the message box"),
    Shortcut("rename", "F2", "Rename the selected conversation"),
    Shortcut("quit", "Ctrl+Q", "Quit"),
)

# Keys handled by a widget rather than a menu action; listed in the help table too.
WIDGET_KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "Send the message"),
    ("Shift+Enter", "New line in the message"),
    ("Delete", "Move the selected conversation to the trash"),
    ("Ctrl+Z", "Undo moving a conversation to the trash (while the notice shows)"),
)


def key_sequence(name: str) -> QKeySequence:
    for shortcut in SHORTCUTS:
        if shortcut.name == name:
            return QKeySequence(shortcut.keys)
    raise KeyError(name)


def native_text(keys: str) -> str:
    """How the keys read on this platform (Cmd on macOS)."""
    return QKeySequence(keys).toString(QKeySequence.SequenceFormat.NativeText) or keys


class ShortcutsDialog(QDialog):
    """Help > Keyboard shortcuts: a two-column table."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = [(native_text(s.keys), s.description) for s in SHORTCUTS]
        rows += [(native_text(k), d) for k, d in WIDGET_KEYS]
        table = QTableWidget(len(rows), 2, self)
        table.setAccessibleName("Keyboard shortcuts")
        table.setHorizontalHeaderLabels(["Keys", "Action"])
        table.verticalHeader().hide()
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for row, (keys, text) in enumerate(rows):
            table.setItem(row, 0, QTableWidgetItem(keys))
            table.setItem(row, 1, QTableWidgetItem(text))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        layout.addWidget(buttons, alignment=Qt.AlignmentFlag.AlignRight)
        self.resize(480, 400)
