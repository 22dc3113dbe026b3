"""Self-contained HTML export (also the source of the PDF): messages rendered as the GUI does.

No remote resource and no script: the styles are inline and a Content-Security-Policy forbids
loading anything. Replies go through the shared Markdown pipeline (app/exchange/markup.py:
CommonMark + GFM tables, strikethrough, task lists, math as inline SVG, Pygments colours);
the user's own messages are shown as typed, as in the GUI. Long words wrap
(`overflow-wrap:anywhere`), code wraps inside its block and wide tables scroll inside theirs,
so the page never grows sideways.

`target="qt"` makes the variant for Qt's rich-text engine (the PDF): the same content in the
HTML/CSS subset QTextDocument understands.
"""

from __future__ import annotations

import html

from app import APP_NAME, __version__
from app.exchange.markup import pygments_css
from app.exchange.markup import to_html as markdown_html
from app.exchange.render import format_time, heading_details, speaker, status_note
from app.store.conversation import Conversation, Message

# Fonts: an emoji font is named so emoji render in colour where one is installed
# (the .deb depends on fonts-noto-color-emoji).
SANS = ('system-ui, -apple-system, "Segoe UI", "Noto Sans", "DejaVu Sans", sans-serif, '
        '"Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji"')
MONO = ('ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace, '
        '"Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji"')

CSS = f"""
body {{ font-family: {SANS}; color: #1f2328; background: #ffffff; max-width: 52em;
       margin: 2em auto; padding: 0 1em; line-height: 1.5; overflow-wrap: anywhere; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
.meta {{ color: #59636e; font-size: 0.9em; }}
.msg {{ margin: 1.2em 0; padding: 0.2em 1em 0.6em; border-left: 4px solid #d1d9e0;
        min-width: 0; }}
.msg.user {{ border-left-color: #0969da; background: #f6f8fa; }}
.msg.assistant {{ border-left-color: #8250df; }}
.who {{ font-size: 1em; margin: 0.6em 0 0.3em; }}
.details {{ color: #59636e; font-weight: normal; font-size: 0.85em; }}
.plain {{ white-space: pre-wrap; margin: 0.4em 0; }}
.text {{ margin: 0.4em 0; }}
.text h1, .text h2, .text h3, .text h4 {{ margin: 0.8em 0 0.3em; line-height: 1.25; }}
.text h1 {{ font-size: 1.4em; }} .text h2 {{ font-size: 1.25em; }} .text h3 {{ font-size: 1.1em; }}
.note {{ color: #9a6700; font-style: italic; }}
pre {{ background: #f6f8fa; border: 1px solid #d1d9e0; padding: 0.7em; margin: 0.3em 0 0.8em;
      white-space: pre-wrap; overflow-wrap: anywhere; overflow-x: auto; max-width: 100%;
      font-family: {MONO}; font-size: 0.9em; }}
code {{ font-family: {MONO}; background: #eff2f5; padding: 0 0.2em; border-radius: 3px; }}
pre code {{ background: transparent; padding: 0; }}
.lang {{ color: #59636e; font-size: 0.8em; margin-top: 0.6em; }}
blockquote {{ margin: 0.5em 0; padding: 0 1em; color: #59636e; border-left: 4px solid #d1d9e0; }}
table {{ border-collapse: collapse; margin: 0.5em 0; display: block; overflow-x: auto;
        max-width: 100%; }}
th, td {{ border: 1px solid #d1d9e0; padding: 0.3em 0.7em; }}
th {{ background: #f6f8fa; }}
ul.contains-task-list {{ list-style: none; padding-left: 1.2em; }}
.math.display {{ display: block; text-align: center; margin: 0.6em 0; overflow-x: auto; }}
svg.math {{ display: inline; max-width: 100%; height: auto; }}
a {{ color: #0969da; }}
{pygments_css(".msg")}
@media (prefers-color-scheme: dark) {{
  body {{ color: #e6edf3; background: #0d1117; }}
  .msg.user, pre, th {{ background: #161b22; }}
  code {{ background: #1f242c; }}
  pre, th, td, .msg, blockquote {{ border-color: #30363d; }}
  .meta, .details, .lang, blockquote {{ color: #9198a1; }}
  a {{ color: #4493f8; }}
  svg.math {{ filter: invert(1); }}
{pygments_css(".msg", dark=True)}
}}
"""

# Qt's rich-text engine (PDF): no max-width, no media queries, few selectors.
QT_CSS = f"""
body {{ font-family: {SANS}; color: #1f2328; }}
.meta, .details {{ color: #59636e; }}
.plain {{ white-space: pre-wrap; }}
.note {{ color: #9a6700; font-style: italic; }}
pre {{ background-color: #f6f8fa; font-family: {MONO}; white-space: pre-wrap; }}
code {{ font-family: {MONO}; background-color: #eff2f5; }}
th {{ background-color: #f6f8fa; }}
blockquote {{ color: #59636e; }}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def to_html(conv: Conversation, target: str = "browser") -> str:
    """One conversation (the current branch) as a complete HTML page.

    target "browser": the HTML export. "qt": the same for QTextDocument (the PDF export).
    """
    title = html.escape(conv.title or "Untitled conversation")
    css = CSS if target == "browser" else QT_CSS
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f'<meta name="generator" content="{APP_NAME} {__version__}">',
        f"<title>{title}</title><style>{css}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="meta">Exported from {APP_NAME} · started {format_time(conv.created_at)}</p>',
    ]
    if conv.system_prompt:
        parts.append(
            '<div class="msg system"><p class="who">System prompt</p>'
            f'<div class="plain" dir="auto">{html.escape(conv.system_prompt)}</div></div>'
        )
    parts += [message_html(conv, m, target) for m in conv.current_path()]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def message_html(conv: Conversation, msg: Message, target: str = "browser") -> str:
    """One message: speaker line, body (Markdown for replies, as typed for the user), note."""
    details = html.escape(" · ".join(heading_details(conv, msg)))
    name = html.escape(speaker(msg))
    who = f'<p class="who"><b>{name}</b> <span class="details">· {details}</span></p>'
    if msg.role == "user":
        body = f'<div class="plain" dir="auto">{html.escape(msg.content)}</div>'
    else:
        qt = target == "qt"  # the PDF: 9 pt text, math drawn 4x for print
        rendered = markdown_html(msg.content, target=target, math_scale=4.0 if qt else 1.0,
                                 math_px=12.5 if qt else 16.0)
        body = f'<div class="text" dir="auto">{rendered}</div>'
    note = status_note(msg)
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    if target == "qt":  # QTextDocument draws no borders on divs: a rule between messages
        return f'<hr><div class="msg {msg.role}">{who}{body}{note_html}</div>'
    return f'<div class="msg {msg.role}">{who}{body}{note_html}</div>'
