"""The main window: wires the sidebar, transcript, composer, banners, status bar and menus to
the chat controller, the model loader, the store and the settings. Behaviour lives in those
pieces; this module connects them and decides what the user sees first.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QByteArray, QSettings, QTimer
from PySide6.QtGui import QCloseEvent, QGuiApplication
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app import APP_NAME, paths
from app.errors import UserError
from app.gui import theme
from app.gui.chat import ChatController
from app.gui.composer import Composer
from app.gui.errors import ErrorBanner, show_error
from app.gui.files import export_with_dialog, import_with_dialog
from app.gui.loading import ModelLoader, ProgressBanner
from app.gui.menus import build_menus
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
from app.store.store import Store
from app.worker import EngineWorker, LoadModel, Unload

NO_MODEL = "No model loaded: choose the Grok-2 folder in Settings (Ctrl+,) or load the demo "\
           "model from the Model menu."
COUNT_DELAY_MS = 300


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
        self._connect()
        self.actions = build_menus(self, self)
        self._restore_geometry()
        self.set_model(None)

    # ---- building -------------------------------------------------------------------------

    def _build_views(self) -> None:
        self.sidebar = Sidebar(self.store, self)
        self.transcript = Transcript(self)
        self.composer = Composer(self)
        self.welcome = WelcomeView(self)
        self.error_banner = ErrorBanner(self)
        self.progress = ProgressBanner(self)
        self.title = QLabel("New chat", self)
        self.title.setObjectName("ChatTitle")
        self.title.setAccessibleName("Conversation title")
        header = self.header = QFrame(self)
        header.setObjectName("ChatHeader")
        row = QHBoxLayout(header)
        row.setContentsMargins(20, 10, 20, 10)
        row.addWidget(self.title, 1)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.transcript)
        self.stack.addWidget(self.welcome)
        right = QWidget(self)
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(header)
        for banner in (self.error_banner, self.progress):
            holder = QHBoxLayout()
            holder.setContentsMargins(16, 8, 16, 0)
            holder.addWidget(banner)
            column.addLayout(holder)
        column.addWidget(self.stack, 1)
        composer_row = QHBoxLayout()
        composer_row.setContentsMargins(24, 0, 24, 0)
        composer_row.addStretch(1)
        composer_row.addWidget(self.composer, 100)
        composer_row.addStretch(1)
        self.composer.setMaximumWidth(820)
        column.addLayout(composer_row)
        splitter = QSplitter(self)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([270, 1010])
        splitter.setChildrenCollapsible(False)
        self.sidebar.setMinimumWidth(200)
        self.setCentralWidget(splitter)
        self.status = StatusBar(self.worker.gpu_memory_bytes, self)
        self.setStatusBar(self.status)

    def _connect(self) -> None:
        self.sidebar.conversation_selected.connect(self.open_conversation)
        self.sidebar.conversation_removed.connect(self.chat.forget)
        self.sidebar.new_chat_requested.connect(self.new_chat)
        self.sidebar.export_requested.connect(self.export)
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
        if not generating:
            self.sidebar.refresh()
            if self.chat.conversation is not None:
                self.title.setText(self.chat.conversation.title or "New chat")
            self._count_timer.start()

    def _message_action(self, name: str, message_id: int) -> None:
        widget = self.transcript.widget_for(message_id)
        if name == "copy" and widget is not None:
            widget.copy_text()
            self.statusBar().showMessage("Copied to the clipboard", 2000)
        elif name == "edit" and widget is not None:
            widget.start_edit()
        elif name == "regenerate":
            spawn(self.chat.regenerate(message_id))
        elif name == "continue":
            spawn(self.chat.continue_reply(message_id))
        elif name == "discard":
            self.chat.discard(message_id)
        elif name in ("prev", "next"):
            self.chat.switch_sibling(message_id, -1 if name == "prev" else 1)

    def copy_last_reply(self) -> None:
        reply = self.transcript.last_reply()
        if reply is not None:
            QGuiApplication.clipboard().setText(reply.text)
            self.statusBar().showMessage("Copied the last reply", 2000)

    def rename_current(self) -> None:
        if self.chat.conversation_id is not None:
            self.sidebar.rename(self.chat.conversation_id)

    def update_token_count(self) -> None:
        info = self.worker.info
        if info is None:
            self.composer.set_token_info(None, None, None)
            return
        draft = self.composer.text()
        messages = self.chat.chat_messages()
        draft_msg = [{"role": "user", "content": draft}] if draft.strip() else []
        used = self.worker.count_tokens(messages + draft_msg) if messages or draft_msg else 0
        draft_count = self.worker.count_tokens(draft_msg) if draft_msg else 0
        self.composer.set_token_info(draft_count, used, info.context_length)

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
            self.statusBar().showMessage(f"Exported to {written[0].parent}", 5000)

    def import_conversations(self) -> None:
        try:
            message = import_with_dialog(self, self.store)
        except UserError as exc:
            self.show_error(str(exc))
            return
        if message:
            self.statusBar().showMessage(message, 5000)
            self.sidebar.refresh()

    def open_settings(self) -> SettingsDialog:
        conv = self.chat.conversation
        dialog = SettingsDialog(self.settings, conv.system_prompt if conv else None, self)
        dialog.accepted.connect(lambda: self.apply_settings_dialog(dialog))
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
                                          s.api_server_allow_remote)
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
            theme.apply_theme(QApplication.instance(), settings.theme)
            self.transcript.restyle()
            self.sidebar.refresh()

    def _system_scheme_changed(self) -> None:
        if self.settings.theme == "system":
            theme.apply_theme(QApplication.instance(), "system")
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
        self.chat.close_for_exit()
        self.loader.cancel()
        _window_state().setValue("window/geometry", self.saveGeometry())
        self.worker.shutdown(timeout=1.5)
        super().closeEvent(event)


def _window_state() -> QSettings:
    """Window geometry only (everything else is in settings.json), beside the settings file."""
    return QSettings(str(paths.config_dir() / "window.ini"), QSettings.Format.IniFormat)
