"""Self-contained HTML export (also the source of the PDF): escaped text, highlighted code.

No remote resource and no script: the styles are inline and a Content-Security-Policy forbids
loading anything. Code is coloured by the highlighter the GUI uses (app/exchange/markup.py); code without a language
is shown plain but styled.
Prose is escaped and keeps its line breaks; inline `code` and **bold** are rendered.
"""

from __future__ import annotations

import html
import re

from app import APP_NAME, __version__
from app.exchange.markup import highlight_classes as highlight
from app.exchange.markup import split_fences
from app.exchange.render import format_time, heading_details, speaker, status_note
from app.store.conversation import Conversation, Message

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       background: #ffffff; max-width: 52em; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.meta { color: #59636e; font-size: 0.9em; }
.msg { margin: 1.2em 0; padding: 0.2em 1em 0.6em; border-left: 4px solid #d1d9e0; }
.msg.user { border-left-color: #0969da; background: #f6f8fa; }
.msg.assistant { border-left-color: #8250df; }
.who { font-size: 1em; margin: 0.6em 0 0.3em; }
.details { color: #59636e; font-weight: normal; font-size: 0.85em; }
.text { white-space: pre-wrap; margin: 0.4em 0; }
.note { color: #9a6700; font-style: italic; }
pre { background: #f6f8fa; border: 1px solid #d1d9e0; padding: 0.7em; white-space: pre-wrap;
      font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
      font-size: 0.9em; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
       background: #eff2f5; }
pre code { background: transparent; }
.lang { color: #59636e; font-size: 0.8em; }
.k { color: #cf222e; font-weight: bold; }
.s { color: #0a3069; }
.c { color: #6e7781; font-style: italic; }
.n { color: #0550ae; }
.f { color: #6639ba; }
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def to_html(conv: Conversation) -> str:
    """One conversation (the current branch) as a complete HTML page."""
    title = html.escape(conv.title or "Untitled conversation")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f'<meta name="generator" content="{APP_NAME} {__version__}">',
        f"<title>{title}</title><style>{CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="meta">Exported from {APP_NAME} · started {format_time(conv.created_at)}</p>',
    ]
    if conv.system_prompt:
        parts.append(
            '<div class="msg system"><p class="who">System prompt</p>'
            f'<div class="text" dir="auto">{html.escape(conv.system_prompt)}</div></div>'
        )
    parts += [message_html(conv, m) for m in conv.current_path()]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def message_html(conv: Conversation, msg: Message) -> str:
    details = html.escape(" · ".join(heading_details(conv, msg)))
    name = html.escape(speaker(msg))
    who = f'<p class="who"><b>{name}</b> <span class="details">· {details}</span></p>'
    body = "".join(_segment_html(s.kind, s.text, s.lang) for s in split_fences(msg.content))
    note = status_note(msg)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<div class="msg {msg.role}">{who}{body}{note_html}</div>'


def _segment_html(kind: str, text: str, lang: str) -> str:
    if kind == "code":
        label = f'<div class="lang">{html.escape(lang)}</div>' if lang else ""
        return f"{label}<pre><code>{highlight(text, lang)}</code></pre>"
    text = text.strip("\n")
    return f'<div class="text" dir="auto">{prose_html(text)}</div>' if text else ""


def prose_html(text: str) -> str:
    """Escaped prose with inline `code` spans and **bold**; line breaks kept by CSS."""
    out = []
    pos = 0
    for match in re.finditer(r"(`+)(.+?)\1", text, flags=re.DOTALL):
        out.append(_bold(html.escape(text[pos : match.start()])))
        out.append(f"<code>{html.escape(match.group(2))}</code>")
        pos = match.end()
    out.append(_bold(html.escape(text[pos:])))
    return "".join(out)


def _bold(escaped: str) -> str:
    return re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"<b>\1</b>", escaped)
