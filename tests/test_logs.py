"""The log file (app/logs.py): rotating, in the log folder, with uncaught exceptions of any
thread and Qt's own messages."""

from __future__ import annotations

import logging
import threading

import pytest

from app.logs import LOGGERS, setup_logging


@pytest.fixture
def log_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path))
    root = logging.getLogger()
    before = list(root.handlers)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after
    path = setup_logging()
    yield path
    for logger in (root, *(logging.getLogger(n) for n in LOGGERS[2:])):
        for handler in logger.handlers[:]:
            if handler not in before and getattr(handler, "grok_desktop", False):
                logger.removeHandler(handler)
                handler.close()


def _text(path) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return path.read_text(encoding="utf-8")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # on purpose
def test_a_crash_in_any_thread_is_logged_with_its_traceback(log_file):
    def crash() -> None:
        raise ValueError("thread boom")

    worker = threading.Thread(target=crash, name="crasher")
    worker.start()
    worker.join()
    text = _text(log_file)
    assert "uncaught ValueError in thread crasher: thread boom" in text and "Traceback" in text
    assert log_file.name == "grok-desktop.log" and log_file.parent.name == "logs"


def test_qt_messages_and_server_lines_are_logged(log_file):
    from PySide6.QtCore import QMessageLogContext, QtMsgType

    from app.gui.main import qt_message
    from app.worker import _server_log

    qt_message(QtMsgType.QtWarningMsg, QMessageLogContext(), "Could not parse stylesheet")
    _server_log("generation failed: RuntimeError('boom')")
    text = _text(log_file)
    assert "WARNING grok_desktop.qt" in text and "Could not parse stylesheet" in text
    assert "WARNING grok_desktop.api" in text and "generation failed" in text


def test_setup_is_idempotent(log_file):
    assert setup_logging() == log_file
    ours = [h for h in logging.getLogger().handlers if getattr(h, "grok_desktop", False)]
    assert len(ours) == 1
