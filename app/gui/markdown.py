"""Message text to display pieces: the GUI's view of app/exchange/markup.py.

The same Markdown pipeline as the exports (markdown-it-py, Pygments, ziamath), in the Qt
rich-text variant: a reply is cut at its top-level code blocks (`split_segments`); each `Prose`
piece is rendered by `prose_html` into a label, each `Code` block into its own widget with a
Copy button by `code_html`. A code block nested in a list is part of its prose piece and gets a
`copy:N` link instead.
"""

from __future__ import annotations

from app.exchange.markup import Block, Code, Prose, blocks, break_long_words, highlight, to_html

__all__ = ["Code", "Prose", "Segment", "code_html", "prose_html", "split_segments"]

Segment = Block
MATH_SCALE = 2.0  # math images drawn at twice their shown size: sharp on HiDPI screens


def split_segments(text: str) -> list[Segment]:
    """Cut text at top-level code blocks; an unclosed fence runs to the end (still streaming).
    Blank prose between blocks is dropped."""
    return blocks(text)


def prose_html(text: str, *, dark: bool = False, color: str = "#1f2328",
               code_out: list[str] | None = None, font_px: float = 16.0) -> str:
    """Markdown prose as Qt rich text (headings, lists, tables, quotes, math images, links).

    code_out receives the code of blocks nested in the prose, for their `copy:N` links;
    font_px (the label's font size in pixels) sizes the math to match the text.
    """
    return to_html(text, target="qt", dark=dark, color=color, math_scale=MATH_SCALE,
                   code_out=code_out, copy_links=True, math_px=font_px)


def code_html(code: str, language: str, *, dark: bool = False) -> str:
    """A code block's text as a wrapping `<pre>` with Pygments colours in style attributes."""
    body = break_long_words(highlight(code, language, inline=True, dark=dark))
    return f'<pre style="margin:0; white-space:pre-wrap">{body}</pre>'
