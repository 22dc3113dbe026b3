"""The scrolling conversation: message widgets in a centred column.

Built for long chats. Messages live in pages of PAGE widgets, each page its own container,
and at most MAX_PAGES pages exist at a time: scrolling to the top builds the older page and
drops the newest, scrolling back down does the reverse. So opening, scrolling and streaming
cost the same in a 20-message chat and a 5000-message one. Finished messages are rendered
once; streamed text is coalesced and applied at most every REPAINT_MS (25 per second), and
only the streaming message is re-rendered.

Where the context policy leaves earlier messages out of what the model sees, a marker line
sits above the first message that is still sent (`set_context_marker`).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QFrame, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget
from shiboken6 import isValid

from app.gui.message_view import MessageView, MessageWidget
from app.gui.theme import current_palette

PAGE = 40
MAX_PAGES = 3
REPAINT_MS = 40
COLUMN_WIDTH = 780
SPACING = 22


class Transcript(QScrollArea):
    action = Signal(str, int)  # (copy | edit | regenerate | prev | next | continue | discard, id)
    edit_submitted = Signal(int, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Transcript")
        self.setAccessibleName("Conversation")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.views: list[MessageView] = []
        self.widgets: dict[int, MessageWidget] = {}
        self._pages: list[_Page] = []  # oldest first; they hold views[_first:_end]
        self._first = self._end = 0
        self._pending: dict[int, str] = {}
        self._stick = True
        self._anchor: tuple[MessageWidget, int] | None = None  # keep this widget at this y
        self.repaints = 0  # streamed-text flushes applied (tests, the repaint bench)
        self.marker_id: int | None = None  # the first message the model still sees after a gap
        self.marker_text = ""
        self.marker: QLabel | None = None
        self._timer = QTimer(self, interval=REPAINT_MS)  # runs while text keeps coming
        self._timer.timeout.connect(self._flush)
        self._build_body()
        bar = self.verticalScrollBar()
        bar.rangeChanged.connect(self._range_changed)
        bar.valueChanged.connect(self._scrolled)

    def _build_body(self) -> None:
        # One plain vertical layout: the scroll area sizes the body by height-for-width and
        # pages that did not change keep their cached sizes.
        body = QWidget(self)
        body.setObjectName("TranscriptBody")
        self.column = QVBoxLayout(body)
        self.column.setSpacing(SPACING)
        self.load_earlier = self._pager_button(body, self.build_earlier)
        self.empty = _EmptyState(body)
        self.load_later = self._pager_button(body, self.build_later)
        self.column.addWidget(self.load_earlier, 0, Qt.AlignmentFlag.AlignHCenter)
        self.column.addWidget(self.empty)
        self.column.addWidget(self.load_later, 0, Qt.AlignmentFlag.AlignHCenter)
        self.column.addStretch(1)
        self.setWidget(body)
        body.installEventFilter(self)
        self._centre_column()
        self._refresh_chrome()

    def _pager_button(self, parent: QWidget, slot: Callable[[], None]) -> QPushButton:
        button = QPushButton(parent)
        button.setObjectName("LoadEarlier")
        button.setProperty("flat", True)
        button.clicked.connect(slot)
        return button

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt override
        """Give the body its new height before its layout runs; otherwise the layout first
        squeezes every page into the old height, then the scroll area grows it again."""
        body = self.widget()
        if watched is body and event.type() == QEvent.Type.LayoutRequest:
            height = self.column.heightForWidth(body.width())
            if height > body.height():
                body.resize(body.width(), height)
        return super().eventFilter(watched, event)

    def resizeEvent(self, event: QResizeEvent) -> None:  # Qt override
        super().resizeEvent(event)
        self._centre_column()

    def _centre_column(self) -> None:
        """Side margins that keep the messages in a column at most COLUMN_WIDTH wide."""
        side = max(24, (self.viewport().width() - COLUMN_WIDTH) // 2)
        if self.column.contentsMargins().left() != side:
            self.column.setContentsMargins(side, 20, side, 20)

    # ---- whole conversation ---------------------------------------------------------------

    def set_messages(self, views: list[MessageView]) -> None:
        """Show a conversation (or another branch of it), scrolled to its newest message."""
        old, new = [v.id for v in self.views], [v.id for v in views]
        if old and new[:len(old)] == old and len(new) - len(old) < PAGE and self._end == len(old):
            # the same chat with a message or two more: keep the built widgets
            for view in views[:len(old)]:
                self.update_message(view)
            for view in views[len(old):]:
                self.add_message(view)
            return
        self.views = list(views)
        self._pending.clear()
        self._show_newest()

    def restyle(self) -> None:
        """Rebuild the widgets (after a theme change: code colours are baked into them)."""
        views, self.views = self.views, []
        self.set_messages(views)

    def set_context_marker(self, message_id: int | None, text: str = "") -> None:
        """Show `text` as a divider above `message_id` (None: no marker)."""
        if (message_id, text) == (self.marker_id, self.marker_text):
            return
        self.marker_id, self.marker_text = message_id, text
        self._place_marker()

    def _place_marker(self) -> None:
        old, self.marker = self.marker, None
        if old is not None and isValid(old):
            old.setParent(None)
            old.deleteLater()
        widget = self.widgets.get(self.marker_id) if self.marker_id is not None else None
        if widget is None or not isValid(widget):
            return
        page = widget.parentWidget()
        if not isinstance(page, _Page):
            return
        marker = QLabel(self.marker_text, page)
        marker.setObjectName("ContextMarker")
        marker.setAccessibleName("Context marker")
        marker.setWordWrap(True)
        marker.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        muted = current_palette().muted
        marker.setStyleSheet(f"QLabel#ContextMarker {{ color: {muted}; padding: 6px;"
                             f" border-top: 1px dashed {muted};"
                             f" border-bottom: 1px dashed {muted}; }}")
        page.insert_before(widget, marker)
        marker.show()
        self.marker = marker

    def set_empty_text(self, title: str, subtitle: str) -> None:
        self.empty.set_text(title, subtitle)

    def _show_newest(self) -> None:
        for page in self._pages:
            self._drop(page)
        self._pages.clear()
        self._first = self._end = len(self.views)
        self._build_page(max(0, len(self.views) - PAGE), len(self.views), at_top=True)
        self._refresh_chrome()
        self._place_marker()
        self.scroll_to_bottom()

    def _build_page(self, start: int, end: int, at_top: bool) -> None:
        if start >= end:
            return
        page = _Page(self.widget())
        for view in self.views[start:end]:
            page.add(self._make(view, page))
        if at_top:
            self.column.insertWidget(self.column.indexOf(self.empty) + 1, page)
            self._pages.insert(0, page)
            self._first = start
        else:
            self.column.insertWidget(self.column.indexOf(self.load_later), page)
            self._pages.append(page)
            self._end = end

    def _drop(self, page: _Page) -> None:
        for widget in page.messages():
            self.widgets.pop(widget.view.id, None)
        self.column.removeWidget(page)
        page.deleteLater()

    def build_earlier(self) -> None:
        """Build the next older page (dropping the newest past MAX_PAGES), view kept still."""
        if self._first == 0:
            return
        self._keep_in_place()
        self._build_page(max(0, self._first - PAGE), self._first, at_top=True)
        if len(self._pages) > MAX_PAGES:
            page = self._pages.pop()
            self._end -= page.count()
            self._drop(page)
        self._refresh_chrome()
        self._place_marker()

    def build_later(self) -> None:
        """Build the next newer page (dropping the oldest past MAX_PAGES), view kept still."""
        if self._end >= len(self.views):
            return
        self._keep_in_place()
        self._build_page(self._end, min(len(self.views), self._end + PAGE), at_top=False)
        if len(self._pages) > MAX_PAGES:
            page = self._pages.pop(0)
            self._first += page.count()
            self._drop(page)
        self._refresh_chrome()
        self._place_marker()

    def _keep_in_place(self) -> None:
        """Remember the top visible message so pages can come and go without a jump."""
        top = self.verticalScrollBar().value()
        for page in self._pages:
            for widget in page.messages():
                y = widget.mapTo(self._body(), QPoint(0, 0)).y()
                if y + widget.height() > top:
                    self._anchor = (widget, y - top)
                    QTimer.singleShot(0, self._release_anchor)
                    return

    def _release_anchor(self) -> None:
        self._apply_anchor()
        self._anchor = None

    def _apply_anchor(self) -> None:
        if self._anchor is not None:
            widget, offset = self._anchor
            y = widget.mapTo(self._body(), QPoint(0, 0)).y()
            self.verticalScrollBar().setValue(y - offset)

    def _body(self) -> QWidget:
        body = self.widget()
        assert body is not None  # set in __init__, never taken
        return body

    def _make(self, view: MessageView, page: QWidget) -> MessageWidget:
        widget = MessageWidget(view, page)
        widget.action.connect(self.action)
        widget.edit_submitted.connect(self.edit_submitted)
        self.widgets[view.id] = widget
        return widget

    def _refresh_chrome(self) -> None:
        older, newer = self._first, len(self.views) - self._end
        self.load_earlier.setVisible(older > 0)
        self.load_earlier.setText(f"Show earlier messages ({older} more)")
        self.load_later.setVisible(newer > 0)
        self.load_later.setText(f"Show newer messages ({newer} more)")
        self.empty.setVisible(not self.views)

    # ---- single messages ------------------------------------------------------------------

    def add_message(self, view: MessageView) -> None:
        if self._end < len(self.views):
            self._show_newest()
        self.views.append(view)
        if not self._pages or self._pages[-1].count() >= PAGE:
            self._build_page(len(self.views) - 1, len(self.views), at_top=False)
        else:
            self._pages[-1].add(self._make(view, self._pages[-1]))
            self._end = len(self.views)
        self._stick = True
        self._refresh_chrome()
        if self.marker is None or not isValid(self.marker):
            self._place_marker()

    def update_message(self, view: MessageView) -> None:
        for i, old in enumerate(self.views):
            if old.id == view.id:
                self.views[i] = view
        widget = self.widgets.get(view.id)
        if widget is not None:
            self._pending.pop(view.id, None)
            widget.set_view(view)

    def stream_text(self, message_id: int, text: str) -> None:
        """New text for a streaming message; shown at the next repaint tick."""
        self._pending[message_id] = text
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Apply pending streamed text now (used before a final update)."""
        self._timer.stop()
        self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            self._timer.stop()  # the stream paused or ended: stop ticking
        for message_id, text in pending.items():
            widget = self.widgets.get(message_id)
            if widget is not None:
                widget.set_streaming_text(text)
                self.repaints += 1

    def widget_for(self, message_id: int) -> MessageWidget | None:
        return self.widgets.get(message_id)

    def last_reply(self) -> MessageView | None:
        for view in reversed(self.views):
            if view.role == "assistant":
                return view
        return None

    # ---- scrolling ------------------------------------------------------------------------

    def scroll_to_bottom(self) -> None:
        self._stick = True
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _range_changed(self, _minimum: int, maximum: int) -> None:
        if self._anchor is not None:
            self._apply_anchor()
        elif self._stick:
            self.verticalScrollBar().setValue(maximum)

    def _scrolled(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._stick = value >= bar.maximum() - 24 and self._end == len(self.views)
        if self._anchor is not None or bar.maximum() == 0:
            return
        if value == 0 and self._first > 0:
            QTimer.singleShot(0, self.build_earlier)
        elif value == bar.maximum() and self._end < len(self.views):
            QTimer.singleShot(0, self.build_later)


class _Page(QWidget):
    """Up to PAGE messages with their own layout, so re-layout stays local to one page."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(SPACING)

    def add(self, widget: MessageWidget) -> None:
        self._layout.addWidget(widget)

    def insert_before(self, widget: QWidget, extra: QWidget) -> None:
        self._layout.insertWidget(self._layout.indexOf(widget), extra)

    def count(self) -> int:
        """Messages on this page (a context marker is not one)."""
        return len(self.messages())

    def messages(self) -> list[MessageWidget]:
        items = (item.widget() for i in range(self._layout.count())
                 if (item := self._layout.itemAt(i)) is not None)
        return [w for w in items if isinstance(w, MessageWidget)]


class _EmptyState(QWidget):
    """What a new chat shows before its first message."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("EmptyChat")
        self.title = QLabel(self)
        self.title.setObjectName("EmptyChatTitle")
        self.subtitle = QLabel(self)
        self.subtitle.setObjectName("EmptyChat")
        self.subtitle.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 140, 0, 0)
        for label in (self.title, self.subtitle):
            label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            layout.addWidget(label)
        self.set_text("What can I help with?", "")

    def set_text(self, title: str, subtitle: str) -> None:
        self.title.setText(title)
        self.subtitle.setText(subtitle)
        self.subtitle.setVisible(bool(subtitle))
