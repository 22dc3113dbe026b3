"""One message on screen: a user bubble or an assistant reply, with its action buttons.

Assistant text is cut into prose and top-level code blocks by the shared Markdown pipeline
(app/gui/markdown.py: markdown-it-py, Pygments, math images; raw HTML shown as text): prose
in a rich-text label, each code block in its own widget with a Copy button. While a reply streams, only the pieces
whose text changed are re-rendered, normally just the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QEvent, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QDesktopServices,
    QFontDatabase,
    QFontInfo,
    QGuiApplication,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.exchange.markup import SAFE_SCHEMES, break_long_words
from app.gui.composer import ComposerEdit
from app.gui.markdown import Code, Prose, Segment, code_html, prose_html, split_segments
from app.gui.theme import current_palette

_SELECTABLE = (Qt.TextInteractionFlag.TextSelectableByMouse
               | Qt.TextInteractionFlag.TextSelectableByKeyboard
               | Qt.TextInteractionFlag.LinksAccessibleByMouse)


@dataclass(frozen=True)
class MessageView:
    """What one message widget shows (built from a stored message by the chat controller)."""

    id: int
    role: str  # user | assistant | system
    text: str
    status: str = "complete"  # complete | streaming | interrupted | error
    sibling_index: int = 1
    sibling_count: int = 1
    meta: str = ""  # e.g. "120 tokens · 14.2 tok/s"
    error: str = ""
    can_regenerate: bool = True


class WrapLabel(QLabel):
    """A word-wrapped label that remembers its height for each width until its text changes.

    On every change anywhere in a page, Qt asks each label for its height at two widths (with
    and without the scroll bar) and keeps only one, so without this every message would be
    re-wrapped on every streamed repaint.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self._heights: dict[int, int] = {}

    def setText(self, text: str) -> None:  # Qt override
        self._heights.clear()
        super().setText(text)

    def heightForWidth(self, width: int) -> int:  # Qt override
        if width not in self._heights:
            self._heights[width] = super().heightForWidth(width)
        return self._heights[width]

    def changeEvent(self, event: QEvent) -> None:  # Qt override
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._heights.clear()
        super().changeEvent(event)


class ProseLabel(WrapLabel):
    def __init__(self, segment: Prose, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("MessageText")
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setTextInteractionFlags(_SELECTABLE)
        self.setOpenExternalLinks(False)  # links are checked in _link first
        self.linkActivated.connect(self._link)
        self.nested_code: list[str] = []  # code blocks inside lists, for their Copy links
        self.set_segment(segment)

    def set_segment(self, segment: Prose) -> None:
        self.segment = segment
        palette = current_palette()
        self.nested_code = []
        self.setText(prose_html(segment.text, dark=palette.name == "dark", color=palette.text,
                                code_out=self.nested_code,
                                font_px=QFontInfo(self.font()).pixelSize()))
        self.setAccessibleName(segment.text[:200])

    def _link(self, href: str) -> None:
        """`copy:N` copies nested code block N; http, https and mailto links open."""
        if href.startswith("copy:") and href[5:].isdigit() and int(href[5:]) < len(
                self.nested_code):
            QGuiApplication.clipboard().setText(self.nested_code[int(href[5:])])
        elif href.lower().startswith(SAFE_SCHEMES):
            QDesktopServices.openUrl(QUrl(href))


class CodeBlock(QFrame):
    """A fenced code block: language, Copy button, highlighted monospace text."""

    def __init__(self, segment: Code, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("CodeBlock")
        header = QFrame(self)
        header.setObjectName("CodeHeader")
        self.language = QLabel(header)
        self.language.setObjectName("CodeLang")
        self.copy_button = QToolButton(header)
        self.copy_button.setText("Copy")
        self.copy_button.setProperty("action", True)
        self.copy_button.setAccessibleName("Copy code")
        self.copy_button.clicked.connect(self.copy)
        row = QHBoxLayout(header)
        row.setContentsMargins(12, 3, 6, 3)
        row.addWidget(self.language)
        row.addStretch(1)
        row.addWidget(self.copy_button)
        self.view = WrapLabel(self)
        self.view.setObjectName("CodeView")
        self.view.setTextFormat(Qt.TextFormat.RichText)
        self.view.setTextInteractionFlags(_SELECTABLE)
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(header)
        body = QVBoxLayout()
        body.setContentsMargins(12, 8, 12, 10)
        body.addWidget(self.view)
        layout.addLayout(body)
        self.set_segment(segment)

    def set_segment(self, segment: Code) -> None:
        self.segment = segment
        self.language.setText(segment.language or "code")
        dark = current_palette().name == "dark"
        self.view.setText(code_html(segment.code, segment.language, dark=dark))
        self.view.setAccessibleName(f"{segment.language or 'code'} code block")

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.segment.code)
        self.copy_button.setText("Copied")
        QTimer.singleShot(1500, self, lambda: self.copy_button.setText("Copy"))


class ContentView(QWidget):
    """The pieces of one reply's text; `set_text` re-renders only what changed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(14)
        self.pieces: list[ProseLabel | CodeBlock] = []
        self.renders = 0  # how many pieces were (re)rendered: tests and the repaint bench

    def set_text(self, text: str) -> None:
        segments = split_segments(text)
        for i, segment in enumerate(segments):
            if i < len(self.pieces) and self.pieces[i].segment == segment:
                continue
            self.renders += 1
            if i < len(self.pieces) and _kind(self.pieces[i]) is type(segment):
                self.pieces[i].set_segment(segment)  # type: ignore[arg-type]
                continue
            while len(self.pieces) > i:
                self.pieces.pop().deleteLater()
            self.pieces.append(self._make(segment))
            self._layout.addWidget(self.pieces[-1])
        while len(self.pieces) > len(segments):
            self.pieces.pop().deleteLater()

    def _make(self, segment: Segment) -> ProseLabel | CodeBlock:
        if isinstance(segment, Code):
            return CodeBlock(segment, self)
        return ProseLabel(segment, self)


def _kind(piece: ProseLabel | CodeBlock) -> type:
    return Code if isinstance(piece, CodeBlock) else Prose


def _action(text: str, name: str, parent: QWidget) -> QToolButton:
    button = QToolButton(parent)
    button.setText(text)
    button.setAccessibleName(name)
    button.setToolTip(name)
    button.setProperty("action", True)
    button.setCursor(Qt.CursorShape.PointingHandCursor)
    return button


class MessageWidget(QFrame):
    """A message with its actions. `action` carries (name, message id)."""

    action = Signal(str, int)
    edit_submitted = Signal(int, str)

    def __init__(self, view: MessageView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self._editor: QFrame | None = None
        self._build()

    # ---- building -------------------------------------------------------------------------

    def _build(self) -> None:
        view = self.view
        self.setAccessibleName(f"{'Your message' if view.role == 'user' else 'Reply'}")
        if view.role == "user":
            self.body = self._user_body(view)
        else:
            self.body = self._assistant_body(view)
        self._layout.addWidget(self.body)
        self.action_row = self._actions_row(view)
        self._layout.addWidget(self.action_row)

    def _user_body(self, view: MessageView) -> QWidget:
        holder = QWidget(self)
        row = QHBoxLayout(holder)
        row.setContentsMargins(80, 0, 0, 0)
        row.addStretch(1)
        bubble = QFrame(holder)
        bubble.setObjectName("UserBubble")
        inner = QVBoxLayout(bubble)
        inner.setContentsMargins(14, 9, 14, 9)
        self.text_label = WrapLabel(bubble)
        self.text_label.setObjectName("MessageText")
        self.text_label.setTextFormat(Qt.TextFormat.PlainText)
        self.text_label.setText(break_long_words(view.text))  # a 300-character word wraps
        self.text_label.setTextInteractionFlags(_SELECTABLE)
        self.text_label.setAccessibleName(view.text[:200])
        inner.addWidget(self.text_label)
        row.addWidget(bubble)
        self.bubble = bubble
        return holder

    def _assistant_body(self, view: MessageView) -> QWidget:
        holder = QFrame(self)
        holder.setObjectName("AssistantMessage")
        column = QVBoxLayout(holder)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(6)
        self.content = ContentView(holder)
        self.content.set_text(view.text)
        column.addWidget(self.content)
        self.note = QLabel(self._status_note(view), holder)
        self.note.setObjectName("InterruptedNote")
        self.note.setWordWrap(True)
        self.note.setVisible(bool(self.note.text()))
        column.addWidget(self.note)
        return holder

    @staticmethod
    def _status_note(view: MessageView) -> str:
        if view.status == "streaming" and not view.text:
            return "Thinking…"
        if view.status == "interrupted":
            return "This reply was cut off. Continue it or discard it."
        if view.status == "error":
            return f"The reply stopped because of an error: {view.error}" if view.error else (
                "The reply stopped because of an error.")
        return ""

    def _actions_row(self, view: MessageView) -> QWidget:
        row_widget = QWidget(self)
        row = QHBoxLayout(row_widget)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        if view.role == "user":
            row.addStretch(1)
        buttons: list[tuple[str, str, str]] = [("Copy", "Copy message", "copy")]
        if view.role == "user":
            buttons.append(("Edit", "Edit and resend", "edit"))
        elif view.status == "interrupted":
            buttons += [("Continue", "Continue the reply", "continue"),
                        ("Discard", "Discard the reply", "discard")]
        elif view.status != "streaming" and view.can_regenerate:
            buttons.append(("Regenerate", "Regenerate the reply", "regenerate"))
        if view.status != "streaming":
            buttons += [("Fork", "Fork: a new chat with the conversation up to here", "fork"),
                        ("Delete", "Delete this message and the turns after it", "delete")]
        for text, name, key in buttons:
            button = _action(text, name, row_widget)
            button.clicked.connect(lambda _=False, k=key: self.action.emit(k, self.view.id))
            row.addWidget(button)
        if view.sibling_count > 1:
            self._sibling_arrows(row, row_widget, view)
        if view.meta:
            meta = QLabel(view.meta, row_widget)
            meta.setObjectName("MessageMeta")
            row.addSpacing(8)
            row.addWidget(meta)
        if view.role != "user":
            row.addStretch(1)
        row_widget.setVisible(view.status != "streaming")
        return row_widget

    def _sibling_arrows(self, row: QHBoxLayout, parent: QWidget, view: MessageView) -> None:
        prev = _action("‹", "Previous version", parent)
        prev.setEnabled(view.sibling_index > 1)
        prev.clicked.connect(lambda: self.action.emit("prev", self.view.id))
        position = QLabel(f"{view.sibling_index} / {view.sibling_count}", parent)
        position.setObjectName("MessageMeta")
        position.setAccessibleName(f"Version {view.sibling_index} of {view.sibling_count}")
        nxt = _action("›", "Next version", parent)
        nxt.setEnabled(view.sibling_index < view.sibling_count)
        nxt.clicked.connect(lambda: self.action.emit("next", self.view.id))
        for widget in (prev, position, nxt):
            row.addWidget(widget)

    def resizeEvent(self, event: QResizeEvent) -> None:  # Qt override
        """A user bubble is as wide as its text, up to three quarters of the column."""
        super().resizeEvent(event)
        if self.view.role == "user" and self._editor is None:
            widest = int(self.width() * 0.75) - 28
            metrics = self.text_label.fontMetrics()
            natural = max((metrics.horizontalAdvance(line) for line in
                           self.view.text.splitlines() or [""]), default=0) + 4
            self.text_label.setMinimumWidth(max(20, min(natural, widest)))
            self.bubble.setMaximumWidth(widest + 28)

    # ---- updates --------------------------------------------------------------------------

    def set_view(self, view: MessageView) -> None:
        """Show a new state of the same message (rebuilds only if more than the text changed)."""
        old, self.view = self.view, view
        if view.role == old.role and _same_frame(old, view) and view.role != "user":
            self.content.set_text(view.text)
            self.note.setText(self._status_note(view))
            self.note.setVisible(bool(self.note.text()))
            return
        for i in reversed(range(self._layout.count())):
            item = self._layout.takeAt(i)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self._editor = None
        self._build()

    def set_streaming_text(self, text: str) -> None:
        self.content.set_text(text)
        if text and self.note.isVisibleTo(self):
            self.note.hide()  # "Thinking…" until the first words arrive

    def copy_text(self) -> None:
        QGuiApplication.clipboard().setText(self.view.text)

    # ---- editing a user message -----------------------------------------------------------

    def start_edit(self, text: str | None = None) -> None:
        """Edit in place (`text`: the full stored message, when the view shows a summary).
        Enter sends, Shift+Enter adds a line, as in the message box."""
        if self.view.role != "user" or self._editor is not None:
            return
        editor = QFrame(self)
        editor.setObjectName("UserBubble")
        box = QVBoxLayout(editor)
        edit = ComposerEdit(editor)
        self._edit_original = self.view.text if text is None else text
        edit.setPlainText(self._edit_original)
        edit.setAccessibleName("Edit message")
        edit.submitted.connect(lambda: self._submit_edit(edit.toPlainText()))
        self.edit_box = edit
        box.addWidget(edit)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        cancel = QPushButton("Cancel", editor)
        send = QPushButton("Send", editor)
        send.setProperty("primary", True)
        cancel.clicked.connect(self._end_edit)
        send.clicked.connect(lambda: self._submit_edit(edit.toPlainText()))
        buttons.addWidget(cancel)
        buttons.addWidget(send)
        box.addLayout(buttons)
        self.body.hide()
        self.action_row.hide()
        self._layout.insertWidget(0, editor)
        self._editor = editor
        edit.setFocus()

    def _submit_edit(self, text: str) -> None:
        self._end_edit()
        text = text.strip()
        if text and text != getattr(self, "_edit_original", self.view.text).strip():
            self.edit_submitted.emit(self.view.id, text)

    def _end_edit(self) -> None:
        if self._editor is not None:
            self._editor.deleteLater()
            self._editor = None
        self.body.show()
        self.action_row.show()


def _same_frame(a: MessageView, b: MessageView) -> bool:
    """Everything but the text is equal: only the content needs re-rendering."""
    return (a.status, a.sibling_index, a.sibling_count, a.meta, a.error) == (
        b.status, b.sibling_index, b.sibling_count, b.meta, b.error)
