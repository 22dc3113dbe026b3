"""Attached files: text files (code, Markdown, CSV, JSON, logs...) read, checked and sent as
fenced blocks with the file name, inside the user's message, so they are stored and exported
with it. PDFs are read as text when the GUI passes a reader (Qt's PDF module).

The block format, which `summarize` recognises to show a short line in the transcript:

    Attached file `notes.md`:
    ```markdown
    ...the file...
    ```

No Qt and no torch here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.errors import UserError
from app.exchange.markup import fence_for

MAX_BYTES = 256 * 1024
LANGUAGES = {
    ".py": "python", ".js": "javascript", ".ts": "typescript", ".tsx": "tsx", ".jsx": "jsx",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".rs": "rust",
    ".go": "go", ".java": "java", ".kt": "kotlin", ".rb": "ruby", ".php": "php", ".sh": "bash",
    ".sql": "sql", ".html": "html", ".css": "css", ".md": "markdown", ".json": "json",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".xml": "xml", ".csv": "csv",
    ".tsv": "tsv", ".log": "text", ".txt": "text", ".ini": "ini", ".swift": "swift",
}
_BLOCK = re.compile(r"Attached file `(?P<name>[^`\n]+)`:\n(?P<fence>`{3,})[^\n]*\n"
                    r"(?P<body>.*?)\n?(?P=fence)(?=\n|$)", re.DOTALL)
PdfReader = Callable[[Path], str]


@dataclass(frozen=True)
class Attachment:
    name: str  # the file name shown and sent (no folders)
    text: str
    language: str = "text"

    @property
    def size_text(self) -> str:
        return _size(len(self.text.encode("utf-8")))


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KB" if n >= 1024 else f"{n} bytes"


def read_attachment(path: str | Path, pdf_text: PdfReader | None = None,
                    max_bytes: int = MAX_BYTES) -> Attachment:
    """Read a file to attach. Raises UserError with one line naming the file: too large
    (over `max_bytes`), not text (binary or not UTF-8), unreadable, or a PDF without a reader."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UserError(f"{path.name}: not a file; attach a text file")
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        if pdf_text is None:
            raise UserError(f"{path.name}: PDF text needs Qt's PDF module (QtPdf), which this "
                            "installation lacks; copy the text out of the PDF instead")
        text = pdf_text(path)
    else:
        if size > max_bytes:
            raise UserError(f"{path.name} is {_size(size)}; attachments are limited to "
                            f"{_size(max_bytes)}: attach a smaller file or paste the part you "
                            "need")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
        if b"\0" in data:
            raise UserError(f"{path.name} is not a text file; only text files (code, Markdown, "
                            "CSV, JSON, logs) and PDFs can be attached")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path.name} is not UTF-8 text (byte {exc.start}); save it as "
                            "UTF-8 and attach it again") from exc
    if len(text.encode("utf-8")) > max_bytes:
        raise UserError(f"{path.name}: its text is {_size(len(text.encode('utf-8')))}; "
                        f"attachments are limited to {_size(max_bytes)}")
    return Attachment(path.name, text.replace("\r\n", "\n"), LANGUAGES.get(suffix, "text"))


def attachment_block(att: Attachment) -> str:
    """The fenced block sent for one attachment (a fence longer than any inside the file)."""
    fence = fence_for(att.text)
    body = att.text if att.text.endswith("\n") or not att.text else att.text + "\n"
    return f"Attached file `{att.name}`:\n{fence}{att.language}\n{body}{fence}"


def compose(text: str, attachments: list[Attachment]) -> str:
    """The message as sent and stored: the typed text, then one block per attachment."""
    parts = [text.strip()] if text.strip() else []
    parts += [attachment_block(a) for a in attachments]
    return "\n\n".join(parts)


def summarize(content: str) -> str:
    """The message with each attachment block shown as one line: "📎 notes.md · 12 lines"."""
    def line(match: re.Match[str]) -> str:
        lines = match.group("body").count("\n") + 1
        return f"📎 {match.group('name')} · {lines:,} line{'s' * (lines != 1)}"

    return _BLOCK.sub(line, content)


def attached_names(content: str) -> list[str]:
    """The names of the files attached to a stored message."""
    return [m.group("name") for m in _BLOCK.finditer(content)]
