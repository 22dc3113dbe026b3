"""The main window: wires the sidebar, transcript, composer, quick settings panel, banners,
status bar and menus to the chat controller, the model loader, the store and the settings.
Behaviour lives in those pieces; this module connects them and decides what the user sees
first. In a narrow window the sidebar and the quick settings fold away (the header's buttons
bring them back).
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from PySide6.QtCore import (
    QByteArray,
    QEvent,
    QObject,
    QSettings,
    QSize,
    QStandardPaths,
    Qt,
    QTimer,
)
from PySide6.QtGui import (
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QPainter,
    QPaintEvent,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import APP_NAME, paths
from app.attachments import attachment_block, read_attachment
from app.context import LABELS, reply_reserve
from app.errors import UserError
from app.gui import theme
from app.gui.chat import ChatController, ChatSettings
from app.gui.composer import Composer
from app.gui.errors import ErrorBanner, show_error
from app.gui.files import export_status, export_with_dialog, import_with_dialog
from app.gui.loading import ModelLoader, ProgressBanner
from app.gui.menus import build_menus
from app.gui.quick_settings import QuickSettings
from app.gui.settings_backend import api_key, model_key, remote_config
from app.gui.settings_dialog import SettingsDialog
from app.gui.sidebar import Sidebar
from app.gui.status_bar import StatusBar
from app.gui.tasks import spawn
from app.gui.transcript import Transcript
from app.gui.welcome import WelcomeView
from app.messages import ModelInfo
from app.placement import budget_bytes
from app.settings import Settings, check_model_folder, save_settings
from app.store.conversation import Conversation
from app.store.store import DeletedBranch, Store
from app.worker import EngineWorker, LoadModel, Unload

NO_MODEL = "No model loaded: choose the Grok-2 folder in Settings (Ctrl+,) or load the demo "\
           "model from the Model menu."
COUNT_DELAY_MS = 300
NARROW_WIDTH = 820  # below this the sidebar folds away
QUICK_WIDTH = 1100  # below this the quick settings panel folds away
UNDO_MS = 10_000
POLL_MS = 2000  # how often the database is checked for chats added by another process


class MainWindow(QMainWindow):
    def __init__(self, store: Store, worker: EngineWorker, settings: Settings) -> None:
        super().__init__()
        self.store, self.worker, self.settings = store, worker, settings
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(theme.app_icon())
        self._build_views()
        self.chat = ChatController(store, worker, self.transcript, lambda: self.settings,
                                   self.show_error, self)
        self.loader = ModelLoader(worker, self.progress, self.status.set_loading, self)
        self._count_timer = QTimer(self, singleShot=True, interval=COUNT_DELAY_MS)
        self._count_timer.timeout.connect(self.update_token_count)
        self._deleted: DeletedBranch | None = None
        self._trashed_open: int | None = None  # the open chat went to the trash (Undo reopens)
        self._sidebar_wanted = True  # the user's choice; a narrow window hides it anyway
        self._quick_wanted = False
        self._narrow: bool | None = None
        self._data_version = self._read_data_version()
        self._poll = QTimer(self, interval=POLL_MS)
        self._poll.timeout.connect(self._check_outside_changes)
        self._poll.start()
        self._connect()
        self.menu_actions = build_menus(self, self)
        self._restore_geometry()
        self.set_model(None)
        self.setAcceptDrops(True)
        self._fold(self.width())

    # ---- building -------------------------------------------------------------------------

    def _build_views(self) -> None:
        self.sidebar = Sidebar(self.store, self)
        self.transcript = Transcript(self)
        self.composer = Composer(self)
        self.welcome = WelcomeView(self)
        self.error_banner = ErrorBanner(self)
        self.progress = ProgressBanner(self)
        self.title = _TitleLabel("New chat", self)
        self.title.setObjectName("ChatTitle")
        self.title.setAccessibleName("Conversation title")
        header = self.header = QFrame(self)
        header.setObjectName("ChatHeader")
        self.sidebar_button = self._header_button("☰", "Show or hide the chat list", header)
        self.sidebar_button.clicked.connect(self.toggle_sidebar)
        self.quick_button = self._header_button("Chat settings", "Show or hide the chat "
                                                "settings panel", header)
        self.quick_button.setCheckable(True)
        self.quick_button.clicked.connect(self.toggle_quick_settings)
        row = QHBoxLayout(header)
        row.setContentsMargins(12, 6, 12, 6)
        row.addWidget(self.sidebar_button)
        row.addWidget(self.title, 1)
        row.addWidget(self.quick_button)
        self.undo_bar = self._build_undo_bar()
        self.notice_bar = self._build_notice_bar()
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.transcript)
        self.stack.addWidget(self.welcome)
        right = QWidget(self)
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(header)
        for banner in (self.error_banner, self.notice_bar, self.undo_bar, self.progress):
            column.addWidget(_BannerSlot(banner, right))
        column.addWidget(self.stack, 1)
        composer_row = QHBoxLayout()
        composer_row.setContentsMargins(24, 0, 24, 0)
        composer_row.addStretch(1)
        composer_row.addWidget(self.composer, 100)
        composer_row.addStretch(1)
        self.composer.setMaximumWidth(820)
        column.addLayout(composer_row)
        self.quick = QuickSettings(self)
        self.quick.hide()
        splitter = self.splitter = QSplitter(self)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(right)
        splitter.addWidget(self.quick)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([270, 1010, 0])
        splitter.setChildrenCollapsible(False)
        self.sidebar.setMinimumWidth(200)
        self.setCentralWidget(splitter)
        self.status = StatusBar(self.worker.gpu_memory_bytes, self)
        self.setStatusBar(self.status)

    def _header_button(self, text: str, name: str, parent: QWidget) -> QToolButton:
        button = QToolButton(parent)
        button.setText(text)
        button.setAccessibleName(name)
        button.setToolTip(name)
        button.setProperty("action", True)
        return button

    def _build_undo_bar(self) -> QFrame:
        bar = QFrame(self)
        bar.setObjectName("InfoBanner")
        self.undo_label = QLabel(bar)
        self.undo_button = QPushButton("Undo", bar)
        self.undo_button.setProperty("flat", True)
        self.undo_button.setAccessibleName("Undo delete")
        self.undo_button.clicked.connect(self.undo_message_delete)
        row = QHBoxLayout(bar)
        row.setContentsMargins(14, 4, 8, 4)
        row.addWidget(self.undo_label, 1)
        row.addWidget(self.undo_button)
        self._undo_timer = QTimer(self, singleShot=True, interval=UNDO_MS)
        self._undo_timer.timeout.connect(bar.hide)
        bar.hide()
        return bar

    def _build_notice_bar(self) -> QFrame:
        """A context policy's answer ("the chat has reached the context"): information with
        the way out (the chat settings), not an error."""
        bar = QFrame(self)
        bar.setObjectName("InfoBanner")
        bar.setAccessibleName("Notice")
        self.notice_label = QLabel(bar)
        self.notice_label.setWordWrap(True)
        settings = QPushButton("Chat settings", bar)
        settings.setProperty("flat", True)
        settings.clicked.connect(self._notice_to_settings)
        dismiss = QPushButton("Dismiss", bar)
        dismiss.setProperty("flat", True)
        dismiss.clicked.connect(bar.hide)
        row = QHBoxLayout(bar)
        row.setContentsMargins(14, 6, 8, 6)
        row.addWidget(self.notice_label, 1)
        row.addWidget(settings)
        row.addWidget(dismiss)
        bar.hide()
        return bar

    def _notice_to_settings(self) -> None:
        self.notice_bar.hide()
        if not self.quick.isVisible():
            self.toggle_quick_settings()

    def show_notice(self, text: str) -> None:
        self.notice_label.setText(text)
        self.notice_bar.show()

    def _connect(self) -> None:
        self.sidebar.conversation_selected.connect(self.open_conversation)
        self.sidebar.conversation_removed.connect(self._trashed)
        self.sidebar.new_chat_requested.connect(self.new_chat)
        self.sidebar.export_requested.connect(self.export)
        self.sidebar.conversation_renamed.connect(self._renamed)
        self.sidebar.conversation_restored.connect(self._restored)
        self.composer.attach_requested.connect(self.choose_attachments)
        self.composer.files_dropped.connect(self.attach_files)
        self.chat.rendered.connect(self._count_timer.start)
        self.chat.rendered.connect(self._refresh_quick)
        self.chat.send_refused.connect(self._send_refused)
        self.chat.notice.connect(self.show_notice)
        self.chat.conversation_changed.connect(lambda _: self.notice_bar.hide())
        self.quick.changed.connect(self._quick_changed)
        self.quick.reset_requested.connect(self._quick_reset)
        self.composer.send_requested.connect(lambda text: spawn(self.chat.send(text)))
        self.composer.stop_requested.connect(self.chat.stop)
        self.composer.draft_changed.connect(self._count_timer.start)
        self.transcript.action.connect(self._message_action)
        self.transcript.edit_submitted.connect(
            lambda mid, text: spawn(self.chat.edit_and_resend(mid, text)))
        self.chat.conversation_changed.connect(self._conversation_changed)
        self.chat.generating_changed.connect(self._generating_changed)
        self.chat.reply_finished.connect(self.status.set_stats)
        self.loader.loaded.connect(self.set_model)
        self.loader.failed.connect(self._load_failed)
        self.loader.cancelled.connect(lambda: self.set_model(self.worker.info))
        self.stack.currentChanged.connect(self._page_changed)
        self.welcome.folder_chosen.connect(self._folder_chosen)
        self.welcome.demo_requested.connect(self.load_demo)
        self.welcome.download_requested.connect(self.open_download)
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_scheme_changed)

    # ---- first view and models ------------------------------------------------------------

    def start(self, demo: bool = False, model: str | None = None) -> None:
        """Decide what the user sees first and start loading a model if one is known."""
        if demo:
            self.load_demo()
        elif self.settings.backend == "remote" and self.settings.remote_url and not model:
            self.load_configured_model()
        elif model:
            spawn(self.loader.load(self._load_request(model)))
        elif self.settings.model_folder and check_model_folder(self.settings.model_folder).ok:
            self.load_configured_model()
        elif not self.settings.welcome_done:
            self.stack.setCurrentWidget(self.welcome)
        elif not self.settings.model_folder:
            self.load_demo()  # no Grok-2 folder configured: open on the (labelled) demo model
        if self.stack.currentWidget() is not self.welcome:
            self.open_conversation(self._first_conversation())

    def _first_conversation(self) -> int | None:
        recent = self.store.list_conversations(limit=1)
        return recent[0].id if recent else None

    def _load_request(self, folder: str) -> LoadModel:
        s = self.settings
        device = None if s.device == "auto" else s.device
        quant = None if s.quantization == "auto" else s.quantization
        gpu, cpu = budget_bytes(s)
        budgets = None if gpu is None and cpu is None else (gpu, cpu)
        return LoadModel(folder=folder, device=device, quant=quant, budgets=budgets,
                         context_length=s.context_tokens, auto_quant=quant is None)

    def load_demo(self) -> None:
        self._leave_welcome()
        self.composer.set_unavailable("Loading the demo model…")
        spawn(self.loader.load(LoadModel(demo=True)))

    def load_configured_model(self) -> None:
        if self.settings.backend == "remote":
            if not self.settings.remote_url:
                self.open_settings()
                return
            self.composer.set_unavailable("Connecting to the remote server…")
            spawn(self.loader.load(LoadModel(remote=remote_config(self.settings))))
            return
        if not self.settings.model_folder:
            self.open_settings()
            return
        self.composer.set_unavailable("Loading Grok-2…")
        spawn(self.loader.load(self._load_request(self.settings.model_folder)))

    def unload_model(self) -> None:
        async def unload() -> None:
            async for _ in self.worker.stream(Unload()):
                pass
            self.set_model(None)

        spawn(unload())

    def _folder_chosen(self, folder: str) -> None:
        self.update_settings(replace(self.settings, model_folder=folder))
        self._leave_welcome()
        self.load_configured_model()

    def _leave_welcome(self) -> None:
        if not self.settings.welcome_done:
            self.update_settings(replace(self.settings, welcome_done=True))
        if self.stack.currentWidget() is self.welcome:
            self.stack.setCurrentWidget(self.transcript)
            self.open_conversation(self._first_conversation())

    def _page_changed(self) -> None:
        chatting = self.stack.currentWidget() is not self.welcome
        self.header.setVisible(chatting)
        self.composer.setVisible(chatting)

    def set_model(self, info: ModelInfo | None) -> None:
        self.status.set_model(info)
        self.apply_api_server(announce=False)
        self.composer.set_unavailable(None if info is not None else NO_MODEL)
        if info is not None:
            self.transcript.set_empty_text(
                "What can I help with?",
                "You are using the demo model: a tiny model for trying the app, trained on a few "
                "pages of sample text. It is not Grok-2; its replies are not meaningful." if info.is_demo else f"{info.name} is ready.")
        self._count_timer.start()

    def _load_failed(self, error: str, detail: str) -> None:
        self.show_error(error, detail)
        self.set_model(self.worker.info)

    # ---- conversations --------------------------------------------------------------------

    def _trashed(self, conv_id: int) -> None:
        if conv_id == self.chat.conversation_id:
            self._trashed_open = conv_id
        self.chat.forget(conv_id)

    def new_chat(self) -> None:
        self.sidebar.set_current(None)
        self.chat.open(None)
        self.composer.focus_input()

    def open_conversation(self, conv_id: int | None) -> None:
        if conv_id is not None and conv_id == self.chat.conversation_id:
            return
        try:
            self.chat.open(conv_id)
        except UserError as exc:
            self.show_error(str(exc))
            self.chat.open(None)

    def _conversation_changed(self, conv: Conversation | None) -> None:
        self.title.setText(conv.title or "New chat" if conv is not None else "New chat")
        self.sidebar.set_current(conv.id if conv is not None else None)
        self.sidebar.refresh()
        self._count_timer.start()

    def _generating_changed(self, generating: bool) -> None:
        self.composer.set_generating(generating)
        if generating:
            self.status.set_generating()
        if not generating:
            self.sidebar.refresh()
            if self.chat.conversation is not None:
                self.title.setText(self.chat.conversation.title or "New chat")
            self._count_timer.start()

    def _message_action(self, name: str, message_id: int) -> None:
        widget = self.transcript.widget_for(message_id)
        if name == "copy" and widget is not None:
            QGuiApplication.clipboard().setText(self._full_text(message_id, widget.view.text))
            self.statusBar().showMessage("Copied to the clipboard", 2000)
        elif name == "edit" and widget is not None:
            widget.start_edit(self._full_text(message_id, widget.view.text))
        elif name == "delete":
            self.delete_message(message_id)
        elif name == "fork":
            self.fork(message_id)
        elif name == "regenerate":
            spawn(self.chat.regenerate(message_id))
        elif name == "continue":
            spawn(self.chat.continue_reply(message_id))
        elif name == "discard":
            self.chat.discard(message_id)
        elif name in ("prev", "next"):
            self.chat.switch_sibling(message_id, -1 if name == "prev" else 1)

    def _full_text(self, message_id: int, shown: str) -> str:
        """The stored text (the transcript shows attachments as one line each)."""
        try:
            return self.store.get_message(message_id).content
        except UserError:
            return shown

    def delete_message(self, message_id: int) -> None:
        """Delete a message and the turns after it, with Undo for a few seconds."""
        try:
            deleted = self.chat.delete_message(message_id)
        except UserError as exc:
            self.show_error(str(exc))
            return
        if deleted is None:
            self.statusBar().showMessage("Stop the reply before deleting messages", 3000)
            return
        self._deleted = deleted
        n = len(deleted.messages)
        self.undo_label.setText(f"Deleted {n} message{'s' * (n != 1)}.")
        self.undo_bar.show()
        self._undo_timer.start()

    def undo_message_delete(self) -> None:
        deleted, self._deleted = self._deleted, None
        self.undo_bar.hide()
        if deleted is not None:
            if self.chat.conversation_id != deleted.conversation_id:
                self.open_conversation(deleted.conversation_id)
            self.chat.undo_delete(deleted)

    def fork(self, message_id: int | None = None) -> None:
        """A new chat holding the conversation up to `message_id` (default: the last)."""
        if message_id is None:
            path = self.chat.conversation.current_path() if self.chat.conversation else []
            if not path:
                return
            message_id = path[-1].id
        try:
            self.chat.fork(message_id)
        except UserError as exc:
            self.show_error(str(exc))
            return
        self.statusBar().showMessage("Forked into a new chat", 3000)

    def regenerate_last(self) -> None:
        reply = self.transcript.last_reply()
        if reply is not None:
            spawn(self.chat.regenerate(reply.id))

    def edit_last_message(self) -> None:
        for view in reversed(self.transcript.views):
            if view.role == "user":
                self._message_action("edit", view.id)
                return

    def copy_last_reply(self) -> None:
        reply = self.transcript.last_reply()
        if reply is not None:
            QGuiApplication.clipboard().setText(reply.text)
            self.statusBar().showMessage("Copied the last reply", 2000)

    def rename_current(self) -> None:
        if self.chat.conversation_id is not None:
            self.sidebar.rename(self.chat.conversation_id)

    def update_token_count(self) -> None:
        """The context meter (what the next request sends under the context policy, draft
        and attachments included) and the transcript's marker where the context starts."""
        info = self.worker.info
        fit = self.chat.context_fit(self.composer.message_text())
        if info is None or fit is None:
            self.composer.set_token_info(None, None, None)
            self.transcript.set_context_marker(None)
            return
        draft = self.composer.message_text()
        draft_msg = [{"role": "user", "content": draft}] if draft.strip() else []
        draft_count = self.worker.count_tokens(draft_msg) if draft_msg else 0
        self.composer.set_token_info(draft_count, fit.tokens, info.context_length,
                                     left_out=len(fit.dropped),
                                     note="will not send: the context is full"
                                     if fit.stopped and fit.policy == "stop" else "")
        self._place_context_marker(fit)

    def _place_context_marker(self, fit) -> None:
        """The marker sits above the first shown message the model still sees after a gap."""
        path = self.chat.conversation.current_path() if self.chat.conversation else []
        offset = len(self.chat.chat_messages()) - len(path)  # the system prompt, if any
        index = fit.first_after_gap - offset if fit.first_after_gap is not None else None
        if index is None or not 0 <= index < len(path) or not fit.dropped:
            self.transcript.set_context_marker(None)
            return
        n = len(fit.dropped)
        what = f"{n} earlier message{'s' * (n != 1)}"
        how = ("the first exchange is kept" if fit.policy == "middle" else
               "the system prompt is kept")
        self.transcript.set_context_marker(
            path[index].id, f"⋯ {what} above {'is' if n == 1 else 'are'} outside the model's "
            f"context ({LABELS[fit.policy].split(':')[0].lower()}; {how}) ⋯")

    # ---- quick settings, attachments, folding ----------------------------------------------

    def toggle_quick_settings(self) -> None:
        self._quick_wanted = not self.quick.isVisible()
        self._show_quick(self._quick_wanted)
        if self._quick_wanted:
            self._refresh_quick()
            if self.width() < QUICK_WIDTH and self.sidebar.isVisible():
                self.sidebar.hide()  # make room beside the chat

    def _show_quick(self, on: bool) -> None:
        self.quick.setVisible(on)
        self.quick_button.setChecked(on)
        sizes = self.splitter.sizes()
        if on and sizes[2] < self.quick.minimumWidth():  # a splitter shows a new pane at 0 px
            panel = max(self.quick.minimumWidth(), min(300, self.quick.maximumWidth()))
            self.splitter.setSizes([sizes[0], max(1, sizes[1] + sizes[2] - panel), panel])

    def toggle_sidebar(self) -> None:
        self._sidebar_wanted = not self.sidebar.isVisible()
        self.sidebar.setVisible(self._sidebar_wanted)

    def resizeEvent(self, event: QResizeEvent) -> None:  # Qt override
        super().resizeEvent(event)
        self._fold(event.size().width())

    def _fold(self, width: int) -> None:
        """A narrow window hides the sidebar (and the quick settings); wide again, they
        return as the user left them."""
        narrow = width < NARROW_WIDTH
        if narrow == self._narrow:
            return
        self._narrow = narrow
        self.sidebar.setVisible(self._sidebar_wanted and not narrow)
        self._show_quick(self._quick_wanted and not narrow)

    def _refresh_quick(self) -> None:
        if self.quick.isVisible():
            self.quick.show_settings(self.chat.settings())

    def _quick_changed(self, chosen: ChatSettings) -> None:
        try:
            self.chat.apply_settings(chosen)
        except UserError as exc:
            self.show_error(str(exc))

    def _quick_reset(self) -> None:
        self.chat.apply_settings(None)
        self.quick.show_settings(self.chat.settings())

    def choose_attachments(self) -> None:
        start = QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.DocumentsLocation)
        paths_, _ = QFileDialog.getOpenFileNames(
            self, "Attach files", start,
            "Text files (*.txt *.md *.csv *.tsv *.json *.log *.py *.js *.ts *.c *.h *.cpp "
            "*.rs *.go *.java *.sh *.sql *.html *.css *.yaml *.yml *.toml *.xml *.pdf);;"
            "All files (*)")
        if paths_:
            self.attach_files(paths_)

    def attach_files(self, file_paths: list[str]) -> None:
        """Attach files to the message being written; each one refused says why, once."""
        info = self.worker.info
        for path in file_paths:
            try:
                attachment = read_attachment(path, pdf_text=_pdf_reader())
            except UserError as exc:
                self.show_error(str(exc))
                continue
            if info is not None:
                limit = info.context_length
                room = limit - reply_reserve(self.chat.settings().params.max_tokens, limit)
                tokens = self.worker.count_tokens(
                    [{"role": "user", "content": attachment_block(attachment)}]) or 0
                if tokens > room:
                    self.show_error(f"{attachment.name} is {tokens:,} tokens; the context holds "
                                    f"{limit:,} with room for the reply: attach a smaller file "
                                    "or the part you need")
                    continue
            self.composer.add_attachment(attachment)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # Qt override
        if event.mimeData().hasUrls() and self.composer.isVisible():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # Qt override
        paths_ = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths_:
            event.acceptProposedAction()
            self.attach_files(paths_)

    def _send_refused(self, text: str) -> None:
        if not self.composer.text().strip():
            self.composer.set_text(text)  # nothing the user wrote is lost

    def _renamed(self, conv_id: int, title: str) -> None:
        if conv_id == self.chat.conversation_id:
            self.title.setText(title)

    def _restored(self, ids: list[int]) -> None:
        if self.chat.conversation_id is None and self._trashed_open in ids:
            self.open_conversation(self._trashed_open)
        self._trashed_open = None

    def _read_data_version(self) -> int | None:
        try:
            return self.store.data_version()
        except UserError:
            return None

    def _check_outside_changes(self) -> None:
        """Chats imported or written by the command line show up without a restart."""
        version = self._read_data_version()
        if version != self._data_version:
            self._data_version = version
            if self.sidebar.list.findChild(QWidget, "RenameEditor") is None:  # not renaming
                self.sidebar.refresh()

    # ---- dialogs --------------------------------------------------------------------------

    def export(self, ids: list[int] | None = None) -> None:
        ids = ids or self.sidebar.selected_ids() or (
            [self.chat.conversation_id] if self.chat.conversation_id is not None else [])
        if not ids:
            self.show_error("Nothing to export: open or select a conversation first.")
            return
        title = self.chat.conversation.title if self.chat.conversation is not None else ""
        try:
            written = export_with_dialog(self, self.store, ids, title)
        except UserError as exc:
            self.show_error(str(exc))
            return
        if written:
            self.statusBar().showMessage(export_status(written), 5000)

    def import_conversations(self) -> None:
        try:
            message = import_with_dialog(self, self.store)
        except UserError as exc:
            self.show_error(str(exc))
            return
        if message:
            self.statusBar().showMessage(message, 5000)
            self.sidebar.refresh()

    def open_download(self, **kw) -> QDialog:
        """The download window; when the model is ready it becomes the model and loads."""
        from app.gui.download_view import DownloadDialog

        dialog = DownloadDialog(self.settings, self, **kw)
        dialog.finished_folder.connect(self._folder_chosen)
        dialog.open()
        return dialog

    def _settings_to_download(self, dialog: SettingsDialog) -> None:
        dialog.reject()
        self.open_download()

    def open_settings(self) -> SettingsDialog:
        conv = self.chat.conversation
        dialog = SettingsDialog(self.settings, conv.system_prompt if conv else None, self)
        dialog.accepted.connect(lambda: self.apply_settings_dialog(dialog))
        dialog.download_requested.connect(lambda: self._settings_to_download(dialog))
        dialog.open()
        return dialog

    def apply_settings_dialog(self, dialog: SettingsDialog) -> None:
        settings, prompt = dialog.edited()
        model_changed = model_key(settings) != model_key(self.settings)
        api_changed = api_key(settings) != api_key(self.settings)
        self.update_settings(settings)
        conv = self.chat.conversation
        if conv is not None and prompt is not None and prompt != conv.system_prompt:
            self.store.update_conversation(conv.id, system_prompt=prompt)
            self.chat.render()
        if model_changed and (settings.model_folder or settings.backend == "remote"):
            self.load_configured_model()  # the worker stops the API server while it loads
        elif api_changed:
            self.apply_api_server(announce=True)

    def apply_api_server(self, announce: bool) -> None:
        """Start, restart or stop the local API server to match the settings. A reason it
        cannot run goes to the status bar, and to the error banner when the user asked."""
        s, worker = self.settings, self.worker
        if not s.api_server_enabled:
            worker.stop_api_server()
            self.status.set_api_server(None)
            return
        if worker.info is None:
            self.status.set_api_server(None, "API server: starts when a model is loaded")
            return
        try:
            url = worker.start_api_server(s.api_server_port, s.api_server_key,
                                          s.api_server_allow_remote, s.api_cors_origins)
        except UserError as exc:
            self.status.set_api_server(None, f"API server off: {exc}")
            if announce:
                self.show_error(f"The API server did not start: {exc}")
            return
        self.status.set_api_server(url)

    def update_settings(self, settings: Settings) -> None:
        """Keep, save and apply new settings (the theme at once)."""
        theme_changed = settings.theme != self.settings.theme
        self.settings = settings
        try:
            save_settings(settings)
        except UserError as exc:
            self.show_error(str(exc))
        if theme_changed:
            theme.apply_theme(_qapp(), settings.theme)
            self.transcript.restyle()
            self.sidebar.refresh()

    def _system_scheme_changed(self) -> None:
        if self.settings.theme == "system":
            theme.apply_theme(_qapp(), "system")
            self.transcript.restyle()
            self.sidebar.refresh()

    def show_error(self, message: str, detail: str = "") -> None:
        show_error(self, message, detail)

    # ---- window state ---------------------------------------------------------------------

    def _restore_geometry(self) -> None:
        geometry = _window_state().value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Keep the partial reply, stop the engine thread (bounded wait), save geometry."""
        self._poll.stop()
        self.quick.flush()
        self.chat.close_for_exit()
        self.loader.cancel()
        _window_state().setValue("window/geometry", self.saveGeometry())
        self.worker.shutdown(timeout=1.5)
        super().closeEvent(event)


class _BannerSlot(QWidget):
    """Holds a banner with its margins and is shown only while the banner is, so hidden
    banners take no room (an empty layout would still add its margins to the window's
    minimum height)."""

    def __init__(self, banner: QWidget, parent: QWidget) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(16, 8, 16, 0)
        hidden = banner.isHidden()
        row.addWidget(banner)
        banner.installEventFilter(self)
        self.setVisible(not hidden)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # Qt override
        if event.type() == QEvent.Type.ShowToParent:
            self.show()
        elif event.type() == QEvent.Type.HideToParent:
            self.hide()
        return False


class _TitleLabel(QLabel):
    """The chat title: elided to the room there is, so a long title never holds the window
    wide (a plain QLabel's minimum width is its whole text)."""

    def minimumSizeHint(self) -> QSize:  # Qt override
        return QSize(40, super().minimumSizeHint().height())

    def paintEvent(self, event: QPaintEvent) -> None:  # Qt override
        painter = QPainter(self)
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight,
                                             self.contentsRect().width())
        painter.drawText(self.contentsRect(),
                         int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)


def _pdf_reader():
    """A PDF-to-text reader when Qt's PDF module is installed, else None."""
    try:
        from PySide6.QtPdf import QPdfDocument
    except ImportError:
        return None

    def read(path) -> str:
        doc = QPdfDocument()
        if doc.load(str(path)) != QPdfDocument.Error.None_:
            raise UserError(f"{path.name}: cannot read this PDF ({doc.status().name})")
        return "\n\n".join(doc.getAllText(i).text() for i in range(doc.pageCount()))

    return read


def _window_state() -> QSettings:
    """Window geometry only (everything else is in settings.json), beside the settings file."""
    return QSettings(str(paths.config_dir() / "window.ini"), QSettings.Format.IniFormat)


def _qapp() -> QApplication:
    """The running application; PySide6 types QApplication.instance() as QCoreApplication."""
    return cast(QApplication, QApplication.instance())
