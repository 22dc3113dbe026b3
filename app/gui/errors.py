"""The one way errors reach the user: `show_error`, which fills the window's error banner.

A banner (not a modal dialog) keeps the app usable and is shown once per error: a new error
replaces the old one, the same error again is not stacked. The full detail (a traceback) is
behind a "Details" button and goes to the log file. Errors are never written into the chat.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMessageBox, QPushButton, QWidget

log = logging.getLogger("grok_desktop")


class ErrorBanner(QFrame):
    """A dismissable strip above the transcript holding the latest error."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ErrorBanner")
        self.setAccessibleName("Error message")
        self.message = ""
        self.detail = ""
        self.shown_count = 0  # how many distinct errors were shown (tests read it)
        self._label = QLabel(self)
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._details = QPushButton("Details", self)
        self._details.setProperty("flat", True)
        self._details.setAccessibleName("Show error details")
        self._details.clicked.connect(self._show_details)
        close = QPushButton("Dismiss", self)
        close.setProperty("flat", True)
        close.setAccessibleName("Dismiss error")
        close.clicked.connect(self.dismiss)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 8, 8, 8)
        layout.addWidget(self._label, 1)
        layout.addWidget(self._details)
        layout.addWidget(close)
        self.hide()

    def show_error(self, message: str, detail: str = "") -> None:
        parent = self.parentWidget()  # Qt's isVisibleTo(nullptr) is isVisible()
        shown = self.isVisibleTo(parent) if parent is not None else self.isVisible()
        if shown and message == self.message:
            return  # the same error again: already on screen
        self.message, self.detail = message, detail
        self.shown_count += 1
        self._label.setText(message)
        self._label.setAccessibleDescription(message)
        self._details.setVisible(bool(detail))
        self.show()

    def dismiss(self) -> None:
        self.message = self.detail = ""
        self.hide()

    def _show_details(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, "Error details", self.message,
                          QMessageBox.StandardButton.Close, self.window())
        box.setDetailedText(self.detail)
        box.open()


def show_error(widget: QWidget, message: str, detail: str = "") -> None:
    """Show `message` once: in the window's banner, or a dialog if the window has none."""
    log.error("%s%s", message, f"\n{detail}" if detail else "")
    window = widget.window() if widget is not None else None
    banner = window.findChild(ErrorBanner) if window is not None else None
    if banner is not None:
        banner.show_error(message, detail)
        return
    box = QMessageBox(QMessageBox.Icon.Warning, "Grok Desktop", message,
                      QMessageBox.StandardButton.Ok, window)
    if detail:
        box.setDetailedText(detail)
    box.open()
