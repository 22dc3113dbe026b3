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
    return export_target(path, chosen, count)


def export_target(path: str, chosen_filter: str, count: int) -> tuple[str, Path]:
    """(format, target) for what the save dialog returned.

    The extension the user typed wins (`conv.pdf` with the Markdown filter selected is a PDF);
    without a known one the selected filter decides and its extension is added. Several
    chats in a readable format go to a folder (the name without extension), one file each.
    """
    target = Path(path)
    typed = target.suffix.lower().lstrip(".")
    if typed in FORMATS:
        fmt = typed
    else:
        fmt = next((f for f, text in _FILTERS.items() if text == chosen_filter), "md")
        target = target.with_name(f"{target.name}.{fmt}")
    if count > 1 and fmt != "json":
        target = target.with_suffix("")  # several chats: a folder with one file each
    return fmt, target


def export_status(written: list[Path]) -> str:
    """The status-bar line after an export: the file written, or the folder and a count."""
    if len(written) == 1:
        return f"Exported to {written[0]}"
    return f"Exported {len(written)} files to {written[0].parent}" if written else ""


def export_with_dialog(parent: QWidget, store: Store, ids: list[int], title: str) -> list[Path]:
    """Raises UserError (shown by the caller) when writing fails."""
    choice = choose_export_target(parent, len(ids), title)
    if choice is None:
        return []
    fmt, target = choice
    return export_conversations(store, ids, fmt, target)


def import_with_dialog(parent: QWidget, store: Store) -> str | None:
    path, _ = QFileDialog.getOpenFileName(
        parent, "Import conversations", "",
        "Grok Desktop or ChatGPT export (*.json *.zip);;All files (*)")
    if not path:
        return None
    result = import_file(store, Path(path))
    summary = " ".join(line.strip() for line in result.summary(Path(path).name).splitlines())
    return summary[0].upper() + summary[1:] + "."
