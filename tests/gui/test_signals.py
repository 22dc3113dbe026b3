"""Ctrl-C (SIGINT) and SIGTERM close the window like its close button, with no traceback."""

from __future__ import annotations

import os
import signal

from PySide6.QtWidgets import QWidget

from app.gui.main import close_on_signals


def test_sigint_and_sigterm_close_the_window(qtbot):
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            window = QWidget()
            qtbot.addWidget(window)
            window.show()
            tick = close_on_signals(window)
            assert tick.isActive()
            os.kill(os.getpid(), sig)  # delivered to Python's handler at its next bytecode
            qtbot.waitUntil(lambda w=window: not w.isVisible(), timeout=3000)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
