"""PDF export with Qt's own PDF writer: the HTML export (its Qt variant) laid out by
QTextDocument.

Lines wrap at word boundaries, or anywhere inside a word longer than the line (a URL, a hash),
so nothing runs off the page. Math is drawn from SVG at 4x its size, so it stays sharp.

Text stays text (selectable, searchable, with embedded font subsets), not a picture. Qt is
imported inside the function so the core stays Qt-free; a headless process gets an offscreen
QApplication (QTextDocument needs one for fonts).
"""

from __future__ import annotations

from pathlib import Path

from app import APP_NAME
from app.atomic import atomic_path
from app.errors import UserError
from app.exchange.html_export import to_html
from app.store.conversation import Conversation

_app = None  # the QGuiApplication this module had to create, kept alive


def write_pdf(conv: Conversation, path: Path) -> None:
    """Write `conv` (its current branch) as an A4 PDF at `path`, atomically (app.atomic),
    mode 0644. Raises UserError naming the file when it cannot be written."""
    _ensure_gui_app()
    try:
        with atomic_path(path) as tmp:
            _print_pdf(conv, tmp)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except _EmptyPdf:
        raise UserError(f"cannot write {path}: Qt produced an empty PDF") from None


class _EmptyPdf(Exception):
    pass


def _print_pdf(conv: Conversation, tmp: Path) -> None:
    from PySide6.QtCore import QMarginsF
    from PySide6.QtGui import QPageLayout, QPageSize, QPdfWriter, QTextDocument, QTextOption

    writer = QPdfWriter(str(tmp))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setPageMargins(QMarginsF(18, 18, 18, 18), QPageLayout.Unit.Millimeter)
    writer.setTitle(conv.title)
    writer.setCreator(APP_NAME)
    doc = QTextDocument()
    option = doc.defaultTextOption()
    option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
    doc.setDefaultTextOption(option)
    doc.setHtml(to_html(conv, target="qt"))
    doc.print_(writer)
    del writer  # flushes and closes the file
    if tmp.stat().st_size == 0:
        raise _EmptyPdf


def _ensure_gui_app() -> None:
    global _app
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    if QGuiApplication.instance() is None:
        # A QApplication, not a QGuiApplication: a GUI started later in the same process
        # (tests, `python -m app`) needs the widgets kind, and Qt allows only one.
        _app = QApplication(["grok-desktop", "-platform", "offscreen"])
