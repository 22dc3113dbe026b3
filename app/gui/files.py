"""Export and import through file dialogs (the formats themselves live in app/exchange/export.py)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget

from app.exchange.export import FORMATS, export_conversations
from app.exchange.importers import import_file
from app.store.store import Store

_FILTERS = {
    "md": "Markdown (*.md)", "json": "JSON, every branch (*.json)", "html": "Web page (*.html)",
    "txt": "Plain text (*.txt)", "pdf": "PDF (*.pdf)",
}


def choose_export_target(parent: QWidget, count: int, title: str) -> tuple[str, Path] | None:
    """Ask for a format and a file (one chat, or JSON) or a folder (several chats)."""
    filters = ";;".join(_FILTERS[f] for f in FORMATS)
    stem = "conversations" if count > 1 else (title or "conversation")
    path, chosen = QFileDialog.getSaveFileName(parent, "Export", f"{stem}.md", filters)
    if not path:
        return None
    fmt = next((f for f, text in _FILTERS.items() if text == chosen), None)
    fmt = Path(path).suffix.lstrip(".").lower() if fmt is None else fmt
    if fmt not in FORMATS:
        fmt = "md"
    target = Path(path)
    if count > 1 and fmt != "json":
        target = target.with_suffix("")  # several chats: a folder with one file each
    elif target.suffix.lower() != f".{fmt}":
        target = target.with_suffix(f".{fmt}")
    return fmt, target


def export_with_dialog(parent: QWidget, store: Store, ids: list[int], title: str) -> list[Path]:
    """Raises UserError (shown by the caller) when writing fails."""
    choice = choose_export_target(parent, len(ids), title)
    if choice is None:
        return []
    fmt, target = choice
    return export_conversations(store, ids, fmt, target)


def import_with_dialog(parent: QWidget, store: Store) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Import conversations", "",
                                          "Grok Desktop export (*.json);;All files (*)")
    if not path:
        return None
    result = import_file(store, Path(path))
    skipped = f", {result.skipped} already here" if result.skipped else ""
    n = len(result.imported_ids)
    return f"Imported {n} conversation{'s' * (n != 1)} ({result.source}){skipped}."
