"""Start the GUI: the log file, the single-instance check, the Qt application, the asyncio
loop on top of it, the store, the engine thread and the main window. `app/cli.py` calls
`run_gui`.

One running app per user (and per GROK_DESKTOP_HOME): the first start listens on a local
socket named by `instance_name()`; a second start connects, asks the first to bring its window
forward, and exits 0 instead of loading the model a second time.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import cast

from PySide6.QtCore import QMessageLogContext, QTimer, QtMsgType, qInstallMessageHandler
from PySide6.QtNetwork import QLocalServer, QLocalSocket
from PySide6.QtWidgets import QApplication, QWidget

from app import APP_ID, APP_NAME, __version__, paths
from app.errors import UserError
from app.gui import theme
from app.gui.main_window import MainWindow
from app.logs import setup_logging
from app.settings import Settings, load_settings
from app.store.store import Store
from app.worker import EngineWorker


def create_app(argv: list[str] | None = None) -> QApplication:
    # PySide6 types instance() as QCoreApplication; here it can only be a QApplication
    app = cast("QApplication | None", QApplication.instance()) or QApplication(
        argv or sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_ID)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(APP_ID)
    app.setWindowIcon(theme.app_icon())
    return app


def read_settings() -> tuple[Settings, str | None]:
    """The saved settings, or the defaults plus the reason the file could not be used."""
    try:
        return load_settings(), None
    except UserError as exc:
        return Settings(), str(exc)


ACTIVATE = b"activate\n"
CONNECT_MS = 500
qt_log = logging.getLogger("grok_desktop.qt")
_QT_LEVELS = {QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
              QtMsgType.QtWarningMsg: logging.WARNING, QtMsgType.QtCriticalMsg: logging.ERROR,
              QtMsgType.QtFatalMsg: logging.CRITICAL}


def qt_message(kind: QtMsgType, context: QMessageLogContext, message: str) -> None:
    """Qt's own warnings (a bad style sheet, a failed image load...) go to the log file."""
    where = f" ({context.file}:{context.line})" if context.file else ""
    qt_log.log(_QT_LEVELS.get(kind, logging.WARNING), "%s%s", message, where)


def instance_name() -> str:
    """The local socket name of this user's running app: one per user and per data folder."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        user = "user"
    folder = hashlib.sha256(str(paths.data_dir()).encode()).hexdigest()[:12]
    return f"{APP_ID}-{user}-{folder}"


def activate_running(name: str, timeout_ms: int = CONNECT_MS) -> bool:
    """Ask a running app to bring its window forward; False when none answers."""
    socket = QLocalSocket()
    socket.connectToServer(name)
    if not socket.waitForConnected(timeout_ms):
        return False
    socket.write(ACTIVATE)
    socket.flush()
    socket.waitForBytesWritten(timeout_ms)
    socket.disconnectFromServer()
    return True


def listen_for_others(name: str, on_activate: Callable[[], None],
                      parent: QApplication | QWidget | None = None) -> QLocalServer | None:
    """Listen for later starts; each one calls `on_activate`. A socket left by a crashed run
    is removed first. None when the name cannot be taken (the app still runs)."""
    server = QLocalServer(parent)
    server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
    if not server.listen(name):
        QLocalServer.removeServer(name)  # a crashed run left its socket file behind
        if not server.listen(name):
            logging.getLogger("grok_desktop").warning(
                "single instance: cannot listen on %s: %s", name, server.errorString())
            return None

    def accept() -> None:
        while server.hasPendingConnections():
            socket = server.nextPendingConnection()
            socket.readyRead.connect(lambda s=socket: _read_request(s, on_activate))
            socket.disconnected.connect(socket.deleteLater)

    server.newConnection.connect(accept)
    return server


def _read_request(socket: QLocalSocket, on_activate: Callable[[], None]) -> None:
    if bytes(socket.readAll().data()).startswith(ACTIVATE.strip()):
        on_activate()


def bring_forward(window: QWidget) -> None:
    if window.isMinimized():
        window.showNormal()
    window.show()
    window.raise_()
    window.activateWindow()


def close_on_signals(window: QWidget) -> QTimer:
    """Ctrl-C in the terminal (SIGINT) and SIGTERM close the window as its close button does
    (the partial reply kept, the engine stopped, geometry saved) instead of raising
    KeyboardInterrupt inside whatever Qt slot runs next. Python runs signal handlers only
    between its own bytecodes, so a 200 ms timer gives it a turn while Qt idles; the timer
    is returned (it must stay alive)."""
    def close(_signum: int, _frame: object) -> None:
        QTimer.singleShot(0, window.close)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, close)
    tick = QTimer(window)
    tick.timeout.connect(lambda: None)
    tick.start(200)
    return tick


def run_gui(demo: bool = False, model: str | None = None) -> int:
    import qasync

    setup_logging()
    qInstallMessageHandler(qt_message)
    app = create_app()
    name = instance_name()
    if activate_running(name):
        logging.getLogger("grok_desktop").info("another start: brought the running app forward")
        return 0
    settings, problem = read_settings()
    theme.apply_theme(app, settings.theme)
    store = Store.open()  # a StorageError here is printed by the CLI as one line
    worker = EngineWorker()
    window = MainWindow(store, worker, settings)
    server = listen_for_others(name, lambda: bring_forward(window), app)
    if problem:
        window.show_error(problem)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    close_on_signals(window)
    window.show()
    loop.call_soon(window.start, demo, model)
    with loop:
        loop.run_until_complete(closed.wait())
    if server is not None:
        server.close()
    store.close()
    return 0
