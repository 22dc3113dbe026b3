"""Message text to display pieces: prose (Markdown) and fenced code blocks, and code colouring.

The GUI's view of `app/exchange/markup.py` (shared with the exporters): the message widget renders
`Prose` with Qt's own Markdown parser (md4c, GitHub dialect, raw HTML off) and each `Code`
block in its own widget with a copy button, coloured by `highlight_html`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.exchange.markup import canonical_language, highlight_html, split_fences

__all__ = ["Code", "Prose", "Segment", "canonical_language", "highlight_html", "split_segments"]


@dataclass(frozen=True)
class Prose:
    text: str


@dataclass(frozen=True)
class Code:
    code: str
    language: str = ""
    closed: bool = True  # False while a streamed reply is still inside the block


Segment = Prose | Code


def split_segments(text: str) -> list[Segment]:
    """Cut text at fenced code blocks; an unclosed fence runs to the end (still streaming).
    Blank prose between blocks is dropped."""
    out: list[Segment] = []
    for seg in split_fences(text):
        if seg.kind == "code":
            out.append(Code(seg.text, seg.lang.lower(), closed=seg.closed))
        elif seg.text.strip():
            out.append(Prose(seg.text.strip("\n")))
    return out
