"""The "Moved 1 chat to the trash. [Undo]" banner: a message, an Undo button, and a timer that
hides it after UNDO_MS. Used by the sidebar (trash) and the window (deleted messages)."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

UNDO_MS = 10_000


class UndoBar(QFrame):
    """Hidden until `offer(text)`; `button.clicked` is the caller's undo."""

    def __init__(self, parent: QWidget, margins: tuple[int, int, int, int]) -> None:
        super().__init__(parent)
        self.setObjectName("InfoBanner")
        self.label = QLabel(self)
        self.label.setWordWrap(True)
        self.button = QPushButton("Undo", self)
        self.button.setProperty("flat", True)
        self.button.setAccessibleName("Undo delete")
        row = QHBoxLayout(self)
        row.setContentsMargins(*margins)
        row.addWidget(self.label, 1)
        row.addWidget(self.button)
        self._timer = QTimer(self, singleShot=True, interval=UNDO_MS)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def offer(self, text: str) -> None:
        """Show `text` with the Undo button for UNDO_MS (restarting the time if shown)."""
        self.label.setText(text)
        self.show()
        self._timer.start()
