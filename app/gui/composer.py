"""The message box: Enter sends, Shift+Enter adds a line, a Send/Stop button, token counts
(and how much of the chat the context policy leaves out), attached files shown as chips
(the Attach button or drag and drop; app/attachments.py reads and fences them).

It is disabled with the reason shown in place of the text while no model is loaded.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QKeyEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.attachments import Attachment, compose

MAX_LINES = 10


class ComposerEdit(QPlainTextEdit):
    """Plain-text input that grows with its content up to MAX_LINES."""

    submitted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ComposerEdit")
        self.setAccessibleName("Message")
        self.setTabChangesFocus(True)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)
        self._fit_height()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def _fit_height(self, *_: object) -> None:
        # QPlainTextDocumentLayout measures the document height in lines (wrapped ones too)
        lines = int(self.document().documentLayout().documentSize().height())
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded if lines > MAX_LINES
                                        else Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        lines = max(1, min(MAX_LINES, lines))
        margins = self.contentsMargins().top() + self.contentsMargins().bottom()
        pad = 2 * int(self.document().documentMargin())
        self.setFixedHeight(lines * self.fontMetrics().lineSpacing() + margins + pad)


class Composer(QFrame):
    """The bottom area: the rounded input box with its button and the token line."""

    send_requested = Signal(str)
    stop_requested = Signal()
    draft_changed = Signal()
    attach_requested = Signal()  # the Attach button: the window asks for files
    files_dropped = Signal(list)  # local file paths dropped on the box

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ComposerArea")
        self.generating = False
        self._reason: str | None = None
        self.edit = ComposerEdit(self)
        self.edit.submitted.connect(self._submit)
        self.edit.textChanged.connect(self.draft_changed)
        self.edit.installEventFilter(self)
        self.edit.viewport().installEventFilter(self)
        self.button = QPushButton("Send", self)
        self.button.setObjectName("SendButton")
        self.button.setAccessibleName("Send message")
        self.button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.button.clicked.connect(self._button_clicked)
        self.info = QLabel(self)
        self.info.setObjectName("ComposerInfo")
        self.info.setAccessibleName("Token count")
        self.attach_button = QToolButton(self)
        self.attach_button.setText("Attach")
        self.attach_button.setProperty("action", True)
        self.attach_button.setAccessibleName("Attach a text file")
        self.attach_button.setToolTip("Attach text files (code, Markdown, CSV, JSON, logs); "
                                      "or drop them here")
        self.attach_button.clicked.connect(self.attach_requested)
        self.attachments: list[Attachment] = []
        self.chips = QWidget(self)
        self._chip_row = QHBoxLayout(self.chips)
        self._chip_row.setContentsMargins(0, 0, 0, 0)
        self._chip_row.addStretch(1)
        self.chips.hide()
        box = QFrame(self)
        box.setObjectName("Composer")
        self._box = box
        row = QHBoxLayout(box)
        row.setContentsMargins(8, 8, 8, 8)
        row.addWidget(self.attach_button, 0, Qt.AlignmentFlag.AlignBottom)
        row.addWidget(self.edit, 1)
        row.addWidget(self.button, 0, Qt.AlignmentFlag.AlignBottom)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 10)
        layout.setSpacing(4)
        layout.addWidget(self.chips)
        layout.addWidget(box)
        layout.addWidget(self.info)
        self.setAcceptDrops(True)
        self.set_unavailable("Load a model to start chatting.")

    # ---- state ----------------------------------------------------------------------------

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)

    def set_unavailable(self, reason: str | None) -> None:
        """Disable input and say why (None: a model is loaded, typing is allowed)."""
        self._reason = reason
        self.edit.setReadOnly(reason is not None)
        self.edit.setPlaceholderText(reason or "Message Grok…  (Enter to send, Shift+Enter for "
                                               "a new line)")
        self.edit.setAccessibleDescription(reason or "Type a message and press Enter")
        # QPlainTextEdit repaints only when the placeholder appears or disappears, not when
        # its text changes while shown: without this the old reason stays on screen
        self.edit.viewport().update()
        self._update_button()

    def set_generating(self, generating: bool) -> None:
        self.generating = generating
        self._update_button()

    def set_token_info(self, draft: int | None, used: int | None, limit: int | None,
                       left_out: int = 0, note: str = "") -> None:
        """The line under the box: this message's tokens, the context in use, and how many
        earlier messages the context policy leaves out (or `note`, e.g. why sending stops)."""
        if used is None or limit is None:
            self.info.setText("")
            return
        draft_text = f"{draft:,} tokens in this message · " if draft else ""
        text = f"{draft_text}context {used:,} / {limit:,} tokens"
        if left_out:
            text += (f" · {left_out:,} earlier message{'s' * (left_out != 1)} left out of "
                     "the context")
        if note:
            text += f" · {note}"
        self.info.setText(text)

    # ---- attachments ----------------------------------------------------------------------

    def add_attachment(self, attachment: Attachment) -> None:
        self.attachments.append(attachment)
        self._show_chips()
        self.draft_changed.emit()

    def remove_attachment(self, index: int) -> None:
        if 0 <= index < len(self.attachments):
            del self.attachments[index]
            self._show_chips()
            self.draft_changed.emit()

    def message_text(self) -> str:
        """What Send would send: the typed text and a fenced block per attached file."""
        return compose(self.text(), self.attachments)

    def _show_chips(self) -> None:
        while self._chip_row.count() > 1:
            item = self._chip_row.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        for i, att in enumerate(self.attachments):
            chip = QFrame(self.chips)
            chip.setObjectName("AttachmentChip")
            chip.setStyleSheet("QFrame#AttachmentChip { border: 1px solid palette(mid);"
                               " border-radius: 8px; }")
            row = QHBoxLayout(chip)
            row.setContentsMargins(8, 2, 2, 2)
            label = QLabel(f"📎 {att.name} · {att.size_text}", chip)
            remove = QToolButton(chip)
            remove.setText("×")
            remove.setAccessibleName(f"Remove {att.name}")
            remove.clicked.connect(lambda _=False, n=i: self.remove_attachment(n))
            row.addWidget(label)
            row.addWidget(remove)
            self._chip_row.insertWidget(i, chip)
        self.chips.setVisible(bool(self.attachments))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # Qt override
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:  # Qt override
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.files_dropped.emit(paths)
        else:
            super().dropEvent(event)

    def focus_input(self) -> None:
        self.edit.setFocus()

    @property
    def unavailable_reason(self) -> str | None:
        return self._reason

    # ---- events ---------------------------------------------------------------------------

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.edit.viewport() and isinstance(event, (QDragEnterEvent, QDropEvent)):
            urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
            if any(u.isLocalFile() for u in urls):  # files go to the chips, not into the text
                event.acceptProposedAction()
                if event.type() == QEvent.Type.Drop:
                    self.files_dropped.emit([u.toLocalFile() for u in urls if u.isLocalFile()])
                return True
        if watched is self.edit and event.type() in (QEvent.Type.FocusIn, QEvent.Type.FocusOut):
            self._box.setProperty("focused", event.type() == QEvent.Type.FocusIn)
            self._box.style().unpolish(self._box)
            self._box.style().polish(self._box)
        return super().eventFilter(watched, event)

    def _update_button(self) -> None:
        stop = self.generating
        self.button.setText("Stop" if stop else "Send")
        self.button.setAccessibleName("Stop the reply" if stop else "Send message")
        self.button.setToolTip("Stop (Esc)" if stop else "Send (Enter)")
        self.button.setProperty("stop", stop)
        self.button.style().unpolish(self.button)
        self.button.style().polish(self.button)
        self.button.setEnabled(stop or self._reason is None)

    def _button_clicked(self) -> None:
        if self.generating:
            self.stop_requested.emit()
        else:
            self._submit()

    def _submit(self) -> None:
        text = self.message_text()
        if not text or self.generating or self._reason is not None:
            return
        self.edit.clear()
        self.attachments.clear()
        self._show_chips()
        self.send_requested.emit(text)
