"""Start the GUI: the Qt application, the asyncio loop on top of it, the store, the engine
thread and the main window. Only wiring; `app/cli.py` calls `run_gui`."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import cast

from PySide6.QtWidgets import QApplication

from app import APP_ID, APP_NAME, __version__, paths
from app.errors import UserError
from app.gui import theme
from app.gui.main_window import MainWindow
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


def run_gui(demo: bool = False, model: str | None = None) -> int:
    import qasync

    logging.basicConfig(filename=paths.log_dir() / "grok-desktop.log", level=logging.INFO)
    app = create_app()
    settings, problem = read_settings()
    theme.apply_theme(app, settings.theme)
    store = Store.open()  # a StorageError here is printed by the CLI as one line
    worker = EngineWorker()
    window = MainWindow(store, worker, settings)
    if problem:
        window.show_error(problem)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    closed = asyncio.Event()
    app.lastWindowClosed.connect(closed.set)
    window.show()
    loop.call_soon(window.start, demo, model)
    with loop:
        loop.run_until_complete(closed.wait())
    store.close()
    return 0
