"""The log file: a rotating file in the app's log folder (paths.log_dir()) that collects the
engine, worker, API server and GUI errors, plus uncaught exceptions of any thread.

`setup_logging()` is called once by the GUI (and may be by any command); it is idempotent.
No Qt and no torch here: the GUI adds Qt's own messages through `qt_message` (app/gui/main.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import TracebackType

from app import paths

LOG_NAME = "grok-desktop.log"
MAX_BYTES = 1_000_000  # one file up to 1 MB, then grok-desktop.log.1 ... .3
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
LOGGERS = ("grok_desktop", "app", "uvicorn", "uvicorn.error", "py.warnings")

log = logging.getLogger("grok_desktop")


def log_path() -> Path:
    """Where the log is written (the folder is created)."""
    return paths.log_dir() / LOG_NAME


def setup_logging(level: int = logging.INFO) -> Path:
    """Send warnings and errors of the app's loggers (and the API server's) to the rotating
    log file, and log uncaught exceptions of the main thread and of other threads. Returns
    the file's path. A log folder that cannot be written leaves logging to stderr."""
    path = log_path()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "grok_desktop", False)]:
        if getattr(old, "baseFilename", None) != os.path.abspath(path):  # another folder now
            for logger in (root, *(logging.getLogger(n) for n in LOGGERS[2:])):
                logger.removeHandler(old)
            old.close()
    if not any(getattr(h, "grok_desktop", False) for h in root.handlers):
        try:
            handler: logging.Handler = RotatingFileHandler(
                path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        except OSError as exc:
            print(f"grok-desktop: cannot write the log {path}: {exc}", file=sys.stderr)
            handler = logging.StreamHandler()
        handler.grok_desktop = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        for name in LOGGERS[2:]:  # uvicorn's loggers do not propagate to the root
            logging.getLogger(name).addHandler(handler)
    root.setLevel(min(root.level or level, level))
    logging.getLogger("grok_desktop").setLevel(level)
    logging.captureWarnings(True)
    _install_hooks()
    return path


def _install_hooks() -> None:
    """Wrap sys.excepthook and threading.excepthook (once each): log, then call the old one."""
    previous = sys.excepthook
    if not getattr(previous, "grok_desktop", False):
        def excepthook(kind: type[BaseException], exc: BaseException,
                       tb: TracebackType | None) -> None:
            if not issubclass(kind, KeyboardInterrupt):
                log.critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))
            previous(kind, exc, tb)

        excepthook.grok_desktop = True  # type: ignore[attr-defined]
        sys.excepthook = excepthook
    previous_thread = threading.excepthook
    if not getattr(previous_thread, "grok_desktop", False):
        def thread_hook(args: threading.ExceptHookArgs) -> None:
            if args.exc_type is not SystemExit and args.exc_value is not None:
                name = args.thread.name if args.thread is not None else "?"
                log.critical("uncaught %s in thread %s: %s", args.exc_type.__name__, name,
                             args.exc_value,
                             exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
            previous_thread(args)

        thread_hook.grok_desktop = True  # type: ignore[attr-defined]
        threading.excepthook = thread_hook
