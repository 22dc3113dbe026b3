"""The conversation list: newest first with pinned on top, search over titles and messages,
rename, pin, delete to the trash with undo, a trash view with restore, and export requests.

It talks to the store directly for these list operations (all quick, local SQLite) and tells
the window what the user picked through signals.
"""

from __future__ import annotations

import html
import time

from PySide6.QtCore import (
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QKeyEvent, QKeySequence, QPainter, QTextDocument
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from app.errors import UserError
from app.gui.theme import current_palette
from app.store.conversation import ConversationSummary
from app.store.rows import SearchHit
from app.store.store import Store

ID_ROLE = Qt.ItemDataRole.UserRole
SNIPPET_ROLE = Qt.ItemDataRole.UserRole + 1  # rich text of a search hit: title and snippet
UNDO_MS = 10_000
SEARCH_DELAY_MS = 200


def _section(stamp: float, pinned: bool, now: float) -> str:
    if pinned:
        return "Pinned"
    age_days = (now - stamp) / 86400
    if age_days < 1:
        return "Today"
    if age_days < 7:
        return "Previous 7 days"
    if age_days < 30:
        return "Previous 30 days"
    return "Older"


class _RenameDelegate(QStyledItemDelegate):
    """The rename box fills the whole row and is at least one line of text tall (the style
    sheet's item padding otherwise squeezes it to a few pixels)."""

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem,
                     index: QModelIndex | QPersistentModelIndex) -> QWidget:
        editor = super().createEditor(parent, option, index)
        editor.setObjectName("RenameEditor")
        editor.setStyleSheet("padding: 2px 6px; margin: 0;")
        editor.setMinimumHeight(editor.fontMetrics().height() + 10)
        return editor

    def updateEditorGeometry(self, editor: QWidget, option: QStyleOptionViewItem,
                             index: QModelIndex | QPersistentModelIndex) -> None:
        rect = option.rect
        height = max(rect.height(), editor.minimumHeight())
        editor.setGeometry(rect.x(), rect.y() + (rect.height() - height) // 2, rect.width(),
                           height)


def snippet_html(hit: SearchHit, accent: str, muted: str, width: int = 80) -> str:
    """A search hit as rich text: the title, then the snippet with each match in bold and
    the accent colour (not literal brackets)."""
    text = hit.snippet.replace("\n", " ")[:width]
    out, pos = [], 0
    for start, end in hit.marks:
        if start >= len(text):
            break
        out.append(html.escape(text[pos:start]))
        out.append(f'<b style="color:{accent}">{html.escape(text[start:end])}</b>')
        pos = min(end, len(text))
    out.append(html.escape(text[pos:]))
    return (f"{html.escape(hit.title or 'New conversation')}<br>"
            f'<span style="color:{muted}">{"".join(out)}</span>')


class SnippetDelegate(_RenameDelegate):
    """Paints search hits (items with SNIPPET_ROLE) as rich text; other items as usual; the
    rename box as _RenameDelegate."""

    def _document(self, option: QStyleOptionViewItem, markup: str) -> QTextDocument:
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(2)
        doc.setHtml(markup)
        doc.setTextWidth(max(40, option.rect.width() - 8))
        return doc

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:  # Qt override
        markup = index.data(SNIPPET_ROLE)
        if not markup:
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        style = opt.widget.style() if opt.widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        doc = self._document(opt, markup)
        painter.save()
        painter.translate(opt.rect.left() + 4, opt.rect.top() + 2)
        doc.drawContents(painter)
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem,
                 index: QModelIndex | QPersistentModelIndex) -> QSize:  # Qt override
        markup = index.data(SNIPPET_ROLE)
        if not markup:
            return super().sizeHint(option, index)
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        doc = self._document(opt, markup)
        return QSize(int(doc.idealWidth()), int(doc.size().height()) + 4)


class Sidebar(QFrame):
    conversation_selected = Signal(int)
    conversation_removed = Signal(int)  # trashed: the window closes it if it is open
    conversation_restored = Signal(list)  # ids back from the trash by Undo
    conversation_renamed = Signal(int, str)
    new_chat_requested = Signal()
    export_requested = Signal(list)

    def __init__(self, store: Store, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Sidebar")
        self.store = store
        self.trash_mode = False
        self.current_id: int | None = None
        self._undo_ids: list[int] = []
        self._build()
        self.refresh()

    # ---- layout ---------------------------------------------------------------------------

    def _build(self) -> None:
        self.new_button = QPushButton("+  New chat", self)
        self.new_button.setObjectName("NewChatButton")
        self.new_button.setAccessibleName("New chat")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        self.new_button.clicked.connect(self.new_chat_requested)
        self.search = QLineEdit(self)
        self.search.setObjectName("SidebarSearch")
        self.search.setPlaceholderText("Search chats")
        self.search.setAccessibleName("Search conversations")
        self.search.setClearButtonEnabled(True)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.refresh)
        self.search.textChanged.connect(lambda _: self._search_timer.start())
        self.header = QLabel("Trash", self)
        self.header.setObjectName("SidebarHeader")
        self.list = QListWidget(self)
        self.list.setObjectName("ConversationList")
        self.list.setAccessibleName("Conversations")
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setItemDelegate(SnippetDelegate(self.list))  # snippets; the rename box
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.itemActivated.connect(self._activated)
        self.list.itemClicked.connect(self._activated)
        self.list.itemChanged.connect(self._renamed)
        self._add_list_keys()
        self.undo_bar = self._build_undo_bar()
        self.footer = self._build_footer()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 12, 10, 8)
        layout.setSpacing(8)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search)
        layout.addWidget(self.header)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.undo_bar)
        layout.addWidget(self.footer)
        self.header.hide()

    def _build_undo_bar(self) -> QFrame:
        bar = QFrame(self)
        bar.setObjectName("InfoBanner")
        self.undo_label = QLabel(bar)
        self.undo_label.setWordWrap(True)
        self.undo_button = QPushButton("Undo", bar)
        self.undo_button.setProperty("flat", True)
        self.undo_button.setAccessibleName("Undo delete")
        self.undo_button.clicked.connect(self.undo_delete)
        row = QHBoxLayout(bar)
        row.setContentsMargins(10, 4, 4, 4)
        row.addWidget(self.undo_label, 1)
        row.addWidget(self.undo_button)
        self._undo_timer = QTimer(self, singleShot=True, interval=UNDO_MS)
        self._undo_timer.timeout.connect(bar.hide)
        bar.hide()
        return bar

    def _build_footer(self) -> QWidget:
        footer = QWidget(self)
        footer.setObjectName("SidebarFooter")
        self.trash_button = QPushButton("Trash", footer)
        self.trash_button.setProperty("flat", True)
        self.trash_button.setAccessibleName("Show trash")
        self.trash_button.clicked.connect(lambda: self.set_trash_mode(not self.trash_mode))
        self.empty_trash_button = QPushButton("Empty trash", footer)
        self.empty_trash_button.setProperty("flat", True)
        self.empty_trash_button.setAccessibleName("Empty trash")
        self.empty_trash_button.clicked.connect(self.empty_trash)
        row = QHBoxLayout(footer)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.trash_button)
        row.addStretch(1)
        row.addWidget(self.empty_trash_button)
        self.empty_trash_button.hide()
        return footer

    def _add_list_keys(self) -> None:
        self.list.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt override
        """Delete (Backspace on macOS) trashes the selection; Ctrl+Z undoes that."""
        if (watched is self.list and event.type() == QEvent.Type.KeyPress
                and isinstance(event, QKeyEvent)):
            if event.matches(QKeySequence.StandardKey.Delete) or (
                    event.key() == Qt.Key.Key_Backspace and not event.modifiers()):
                self.delete_selected()
                return True
            if event.matches(QKeySequence.StandardKey.Undo) and self.undo_bar.isVisible():
                self.undo_delete()
                return True
        return super().eventFilter(watched, event)

    # ---- listing --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the list from the store (search results while the search box has text)."""
        query = self.search.text().strip()
        self.list.blockSignals(True)
        self.list.clear()
        try:
            if self.trash_mode:
                self._fill(self.store.list_trash(), sections=False)
            elif query:
                self._fill_search(query)
            else:
                self._fill(self.store.list_conversations(limit=1000), sections=True)
            if self.list.count() == 0:
                self._add_header("The trash is empty" if self.trash_mode else "No chats yet")
        finally:
            self.list.blockSignals(False)
        self._select_current()

    def _fill(self, items: list[ConversationSummary], sections: bool) -> None:
        now, last = time.time(), None
        for summary in items:
            section = _section(summary.updated_at, summary.pinned, now)
            if sections and section != last:
                self._add_header(section)
                last = section
            self._add_item(summary.id, summary.title or "New conversation",
                           pinned=summary.pinned)

    def _fill_search(self, query: str) -> None:
        hits = self.store.search(query)
        if not hits:
            self._add_header("No matches")
        for hit in hits:
            item = self._add_item(hit.conversation_id, hit.title or "New conversation")
            if hit.snippet:
                item.setToolTip(hit.snippet)
                item.setText(f"{item.text()}\n{hit.snippet.replace(chr(10), ' ')[:80]}")
                palette = current_palette()
                item.setData(SNIPPET_ROLE, snippet_html(hit, palette.accent, palette.muted))

    def _add_header(self, text: str) -> None:
        item = QListWidgetItem(text)
        item.setFlags(Qt.ItemFlag.NoItemFlags)
        font = item.font()
        font.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.85))
        font.setBold(True)
        item.setFont(font)
        item.setForeground(QColor(current_palette().muted))
        self.list.addItem(item)

    def _add_item(self, conv_id: int, title: str, pinned: bool = False) -> QListWidgetItem:
        item = QListWidgetItem(title)
        item.setData(ID_ROLE, conv_id)
        item.setToolTip(title)
        flags = item.flags() | Qt.ItemFlag.ItemIsEditable
        item.setFlags(flags if not self.trash_mode else item.flags())
        item.setData(Qt.ItemDataRole.AccessibleTextRole, f"{title}{', pinned' if pinned else ''}")
        self.list.addItem(item)
        return item

    def item_for(self, conv_id: int) -> QListWidgetItem | None:
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(ID_ROLE) == conv_id:
                return item
        return None

    def ids(self) -> list[int]:
        """Conversation ids in list order (tests and keyboard navigation)."""
        items = (self.list.item(row) for row in range(self.list.count()))
        return [item.data(ID_ROLE) for item in items if item.data(ID_ROLE) is not None]

    def selected_ids(self) -> list[int]:
        ids = [item.data(ID_ROLE) for item in self.list.selectedItems()]
        return [i for i in ids if i is not None]

    def set_current(self, conv_id: int | None) -> None:
        self.current_id = conv_id
        self._select_current()

    def _select_current(self) -> None:
        item = self.item_for(self.current_id) if self.current_id is not None else None
        self.list.blockSignals(True)
        self.list.setCurrentItem(item) if item is not None else self.list.clearSelection()
        self.list.blockSignals(False)

    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    # ---- actions --------------------------------------------------------------------------

    def _activated(self, item: QListWidgetItem) -> None:
        conv_id = item.data(ID_ROLE)
        if conv_id is not None and not self.trash_mode:
            self.current_id = conv_id
            self.conversation_selected.emit(conv_id)

    def _renamed(self, item: QListWidgetItem) -> None:
        conv_id, title = item.data(ID_ROLE), item.text().strip()
        if conv_id is not None and title:
            self.store.update_conversation(conv_id, title=title)
            item.setToolTip(title)
            self.conversation_renamed.emit(conv_id, title)

    def rename(self, conv_id: int) -> None:
        item = self.item_for(conv_id)
        if item is not None:
            self.list.editItem(item)

    def set_pinned(self, conv_id: int, pinned: bool) -> None:
        self.store.update_conversation(conv_id, pinned=pinned)
        self.refresh()

    def delete(self, conv_ids: list[int]) -> None:
        """Move to the trash and offer Undo for a few seconds."""
        for conv_id in conv_ids:
            self.store.trash_conversation(conv_id)
            self.conversation_removed.emit(conv_id)
        self._undo_ids = list(conv_ids)
        what = "1 chat" if len(conv_ids) == 1 else f"{len(conv_ids)} chats"
        self.undo_label.setText(f"Moved {what} to the trash.")
        self.undo_bar.show()
        self._undo_timer.start()
        self.refresh()

    def delete_selected(self) -> None:
        ids = self.selected_ids()
        if ids and not self.trash_mode:
            self.delete(ids)

    def undo_delete(self) -> None:
        restored, self._undo_ids = self._undo_ids, []
        for conv_id in restored:
            self.store.restore_conversation(conv_id)
        self.undo_bar.hide()
        self.refresh()
        if restored:
            self.conversation_restored.emit(restored)

    def restore(self, conv_ids: list[int]) -> None:
        for conv_id in conv_ids:
            self.store.restore_conversation(conv_id)
        self.refresh()

    def empty_trash(self) -> None:
        self.store.empty_trash()
        self.refresh()

    def set_trash_mode(self, on: bool) -> None:
        self.trash_mode = on
        self.header.setVisible(on)
        self.search.setVisible(not on)
        self.new_button.setVisible(not on)
        self.empty_trash_button.setVisible(on)
        self.trash_button.setText("Back to chats" if on else "Trash")
        self.trash_button.setAccessibleName("Back to chats" if on else "Show trash")
        self.refresh()

    def _context_menu(self, pos: QPoint) -> None:
        item = self.list.itemAt(pos)
        conv_id = item.data(ID_ROLE) if item is not None else None
        if item is None or conv_id is None:
            return
        if conv_id not in self.selected_ids():
            self.list.setCurrentItem(item)
        ids = self.selected_ids()
        menu = QMenu(self)
        if self.trash_mode:
            menu.addAction("Restore", lambda: self.restore(ids))
        else:
            pinned = self._is_pinned(conv_id)
            menu.addAction("Rename", lambda: self.rename(conv_id))
            menu.addAction("Unpin" if pinned else "Pin", lambda: self.set_pinned(conv_id, not pinned))
            menu.addAction("Export…", lambda: self.export_requested.emit(ids))
            menu.addSeparator()
            menu.addAction("Move to trash", lambda: self.delete(ids))
        menu.popup(self.list.viewport().mapToGlobal(pos))

    def _is_pinned(self, conv_id: int) -> bool:
        try:
            return self.store.get_conversation(conv_id).pinned
        except UserError:
            return False
