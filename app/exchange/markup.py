"""Message text (Markdown as the model writes it) to HTML: one pipeline for the GUI and exports.

Plain Python, no Qt. markdown-it-py parses CommonMark plus GitHub's tables, strikethrough and
task lists (mdit-py-plugins), and math: `$...$`, `$$...$$`, `\\(...\\)` and `\\[...\\]`.
Pygments colours code, ziamath draws math as SVG (pure Python, STIX fonts: no LaTeX install).

Safety: raw HTML in a message is shown as text, never interpreted; links keep only http, https
and mailto targets (anything else stays visible as Markdown source); images become links, so
rendering never fetches anything.

Two targets: "browser" (the HTML export: CSS classes, inline SVG math) and "qt" (Qt's rich-text
subset, for the GUI and the PDF: inline styles, table attributes, math as SVG images, task
boxes as characters, and zero-width break chances in long words because QLabel cannot break
inside a word).
"""

from __future__ import annotations

import base64
import html
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.tasklists import tasklists_plugin
from mdit_py_plugins.texmath import texmath_plugin

SAFE_SCHEMES = ("http:", "https:", "mailto:")
LIGHT_STYLE = "default"  # Pygments styles for light and dark backgrounds
DARK_STYLE = "github-dark"
ZWSP = "\u200b"
LONG_RUN = 24  # a run of this many non-space characters gets break chances (qt target)


# ---- blocks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prose:
    """Markdown source between top-level code blocks."""

    text: str


@dataclass(frozen=True)
class Code:
    """A fenced or indented code block: its code (no fences, no final newline)."""

    code: str
    language: str = ""
    closed: bool = True  # False while a streamed reply is still inside the block


Block = Prose | Code


@lru_cache(maxsize=1)
def markdown() -> MarkdownIt:
    """The shared parser (CommonMark + GFM tables, strikethrough, task lists, math)."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.use(tasklists_plugin)
    md.use(dollarmath_plugin, allow_space=True, allow_digits=False, double_inline=True)
    md.use(texmath_plugin, delimiters="brackets")
    md.inline.ruler.before("escape", "math_inline_bracket", _inline_display_bracket)
    md.validateLink = _safe_link  # type: ignore[method-assign]
    rules = md.add_render_rule
    for name in ("math_inline", "math_single"):
        rules(name, lambda s, t, i, o, e: _math(t[i], False, e))
    for name in ("math_inline_double", "math_block", "math_block_eqno", "math_block_label"):
        rules(name, lambda s, t, i, o, e: _math(t[i], True, e))
    rules("fence", _render_code)
    rules("code_block", _render_code)
    rules("image", _render_image)
    rules("table_open", _render_table_open)
    rules("blockquote_open", _render_blockquote_open)
    rules("html_inline", _render_html_inline)
    return md


def _safe_link(url: str) -> bool:
    return url.strip().lower().startswith(SAFE_SCHEMES)


def _inline_display_bracket(state: StateInline, silent: bool) -> bool:
    """`\\[ ... \\]` inside a paragraph (texmath only knows it at the start of a block)."""
    if not state.src.startswith("\\[", state.pos):
        return False
    end = state.src.find("\\]", state.pos + 2)
    if end < 0 or not state.src[state.pos + 2 : end].strip():
        return False
    if not silent:
        token = state.push("math_inline_double", "math", 0)
        token.content = state.src[state.pos + 2 : end]
        token.markup = "\\["
    state.pos = end + 2
    return True


def blocks(text: str) -> list[Block]:
    """Text cut at its top-level code blocks (the GUI gives each a Copy button).

    Prose keeps its Markdown source; blank prose is dropped. A fence the text leaves open
    (a reply still streaming) runs to the end with `closed=False`.
    """
    lines = text.split("\n")
    out: list[Block] = []
    start = 0
    for token in markdown().parse(text):
        if token.level != 0 or token.type not in ("fence", "code_block") or token.map is None:
            continue
        first, end = token.map
        _add_prose(out, lines[start:first])
        out.append(_code(token, lines))
        start = end
    _add_prose(out, lines[start:])
    return out


def _add_prose(out: list[Block], lines: list[str]) -> None:
    source = "\n".join(lines).strip("\n")
    if source.strip():
        out.append(Prose(source))


def _code(token: Token, lines: Sequence[str]) -> Code:
    code = token.content.removesuffix("\n")
    language = token.info.strip().split(" ")[0].lower() if token.type == "fence" else ""
    return Code(code, language, closed=_closed(token, lines))


def _closed(token: Token, lines: Sequence[str]) -> bool:
    if token.type != "fence" or token.map is None:
        return True
    first, end = token.map
    last = lines[end - 1].strip() if end - 1 < len(lines) else ""
    return end - first >= 2 and len(last) >= len(token.markup) and set(last) == {token.markup[0]}


def code_blocks(text: str) -> list[Code]:
    """Every code block in the text, at any depth (a fence under a list item too)."""
    lines = text.split("\n")
    return [_code(t, lines) for t in _walk(markdown().parse(text))
            if t.type in ("fence", "code_block")]


def _walk(tokens: Sequence[Token]) -> list[Token]:
    out: list[Token] = []
    for token in tokens:
        out.append(token)
        if token.children:
            out += _walk(token.children)
    return out


def close_open_fences(text: str) -> str:
    """The text unchanged, plus a closing fence if it ends inside an unclosed code block."""
    lines = text.split("\n")
    fences = [t for t in markdown().parse(text) if t.type == "fence" and t.map is not None]
    if not fences or _closed(fences[-1], lines):
        return text
    opener = lines[fences[-1].map[0]]  # type: ignore[index]
    indent = opener[: len(opener) - len(opener.lstrip())]
    return text.rstrip("\n") + "\n" + indent + fences[-1].markup + "\n"


def fence_for(text: str, char: str = "`") -> str:
    """A fence longer than any run of `char` in `text`, so the text can sit inside verbatim."""
    runs = re.findall(rf"{re.escape(char)}+", text)
    return char * max(3, max((len(r) for r in runs), default=0) + 1)


# ---- HTML --------------------------------------------------------------------------------


def to_html(text: str, *, target: str = "browser", dark: bool = False,
            color: str = "#1f2328", math_scale: float = 1.0,
            code_out: list[str] | None = None, copy_links: bool = False,
            math_px: float = 16.0) -> str:
    """Markdown to an HTML fragment.

    target: "browser" (CSS classes from `page_css`, inline SVG math) or "qt" (Qt rich text).
    dark picks the Pygments style for the qt target; color is the math ink (qt target);
    math_scale > 1 draws math images that many times larger than shown, for sharp output
    (Qt rasterises SVG images at their own size); math_px is the math font size in CSS px.
    code_out, if given, receives the code of each block the qt target rendered inline (under
    a list item), in order, for its `copy:N` link (shown when copy_links: the GUI).
    """
    env: dict[str, Any] = {"target": target, "dark": dark, "color": color,
                           "scale": math_scale, "px": math_px,
                           "code": [] if code_out is None else code_out, "copy": copy_links}
    out = markdown().render(text, env)
    if target != "qt":
        return out
    out = out.replace('<ul class="contains-task-list">', '<ul style="list-style-type:none">')
    return break_long_words(out)


def _render_code(self: Any, tokens: list[Token], idx: int, options: Any, env: dict) -> str:
    token = tokens[idx]
    code = token.content
    language = token.info.strip().split(" ")[0] if token.type == "fence" else ""
    body = highlight(code, language, inline=env.get("target") == "qt", dark=env.get("dark", False))
    if env.get("target") != "qt":
        label = f'<div class="lang">{html.escape(language)}</div>' if language else ""
        cls = f' class="language-{html.escape(language)}"' if language else ""
        return f'<div class="code">{label}<pre><code{cls}>{body}</code></pre></div>\n'
    # Qt: a code block inside a list or quote lives in the prose label, with a copy link.
    env.setdefault("code", []).append(code.removesuffix("\n"))
    n = len(env["code"]) - 1
    head = html.escape(language) or "code"
    if env.get("copy"):
        head += f' · <a href="copy:{n}">Copy</a>'
    return (f'<p style="margin:6px 0 0 0; font-size:small">{head}</p>'
            f'<pre style="margin:2px 0 6px 0; white-space:pre-wrap">{body}</pre>\n')


def _render_image(self: Any, tokens: list[Token], idx: int, options: Any, env: dict) -> str:
    token = tokens[idx]
    alt = html.escape(self.renderInlineAsText(token.children or [], options, env) or "image")
    src = str(token.attrGet("src") or "")
    if not _safe_link(src):
        return f"[{alt}]"
    return f'<a href="{html.escape(src)}">[image: {alt}]</a>'


def _render_table_open(self: Any, tokens: list[Token], idx: int, options: Any, env: dict) -> str:
    if env.get("target") == "qt":
        return '<table border="1" cellspacing="0" cellpadding="5" style="border-collapse:collapse">'
    return "<table>\n"


def _render_blockquote_open(self: Any, tokens: list[Token], idx: int, options: Any,
                            env: dict) -> str:
    if env.get("target") == "qt":  # Qt draws no side border: the quote is indented and grey
        return '<blockquote style="color:#7b8490; font-style:italic">'
    return "<blockquote>\n"


def _render_html_inline(self: Any, tokens: list[Token], idx: int, options: Any,
                        env: dict) -> str:
    """Only the task-list plugin makes html_inline tokens (raw HTML is off)."""
    content = tokens[idx].content
    if env.get("target") == "qt" and "task-list-item-checkbox" in content:
        return "☑" if "checked" in content else "☐"
    return content


def _math(token: Token, display: bool, env: dict) -> str:
    source = token.content.strip()
    image = math_image(source, display, env.get("target", "browser"),
                       env.get("color", "#1f2328"), float(env.get("scale", 1.0)),
                       float(env.get("px", 16.0)))
    if image is None:  # does not parse: show what was typed
        markup = token.markup or ("$$" if display else "$")
        closer = {"\\(": "\\)", "\\[": "\\]"}.get(markup, markup)
        shown = html.escape(f"{markup}{token.content}{closer}")
        return f"<p>{shown}</p>\n" if token.block else f"<span>{shown}</span>"
    if not display:
        return image
    if env.get("target") == "qt":
        return f'<p align="center">{image}</p>\n' if token.block else f"<br>{image}<br>"
    if token.block:
        return f'<div class="math display">{image}</div>\n'
    return f'<span class="math display">{image}</span>'  # $$...$$ inside a paragraph


@lru_cache(maxsize=2048)
def math_image(latex: str, display: bool, target: str = "browser", color: str = "#1f2328",
               scale: float = 1.0, px: float = 16.0) -> str | None:
    """LaTeX math as an inline `<svg>` (browser) or `<img>` (qt); None if it does not parse.

    Sizes are CSS pixels for a `px` body font (display math 1.1x). The SVG's baseline offset
    sets vertical-align in the browser; Qt can only centre an image on the line.
    """
    with warnings.catch_warnings():  # ziamath 0.13 uses the deprecated pkg_resources.path
        warnings.simplefilter("ignore", DeprecationWarning)
        import ziamath  # imported on first use: ~0.1 s for fonts

    ziamath.config.svg2 = False  # plain paths: Qt's SVG renderer lacks <symbol>
    size = px * 1.1 if display else px
    try:
        svg = ziamath.Latex(latex, size=size * scale, color=color, inline=not display).svg()
    except Exception:  # noqa: BLE001 - ziamath raises many kinds; the source is shown instead
        return None
    match = re.search(r'width="([\d.]+)" height="([\d.]+)" viewBox="([-\d.]+) ([-\d.]+)', svg)
    if match is None:
        return None
    width, height = float(match.group(1)) / scale, float(match.group(2)) / scale
    descent = (float(match.group(2)) + float(match.group(4))) / scale
    label = html.escape(latex, quote=True)
    if target == "qt":
        data = base64.b64encode(svg.encode()).decode()
        return (f'<img src="data:image/svg+xml;base64,{data}" width="{width:.0f}" '
                f'height="{height:.0f}" alt="{label}" style="vertical-align: middle">')
    return svg.replace(
        "<svg ", f'<svg role="img" aria-label="{label}" class="math" '
        f'style="vertical-align:{-descent:.2f}px" ', 1)


# ---- code --------------------------------------------------------------------------------


def highlight(code: str, language: str, *, inline: bool = False, dark: bool = False) -> str:
    """Escaped code with Pygments colour spans (no <pre>); plain escaped text for a language
    Pygments does not know or none. inline=True uses style attributes (Qt), else classes
    whose colours `pygments_css` defines."""
    from pygments import highlight as pyg_highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    if not language:
        return html.escape(code)
    try:
        lexer = get_lexer_by_name(language.lower(), stripnl=False, ensurenl=False)
    except ClassNotFound:
        return html.escape(code)
    formatter = HtmlFormatter(nowrap=True, noclasses=inline,
                              style=DARK_STYLE if dark else LIGHT_STYLE)
    return pyg_highlight(code, lexer, formatter)


def pygments_css(selector: str, dark: bool = False) -> str:
    """Token colours for `highlight(..., inline=False)` output under `selector`."""
    from pygments.formatters import HtmlFormatter

    style = DARK_STYLE if dark else LIGHT_STYLE
    rules = HtmlFormatter(style=style).get_style_defs(selector)
    # Token rules only: the style's own background and line-number rules stay out.
    return "\n".join(line for line in rules.splitlines() if line.startswith(f"{selector} ."))


def break_long_words(fragment: str, run: int = LONG_RUN) -> str:
    """HTML with a zero-width space after every `run` characters of an unbroken word in its
    text (tags and entities untouched), so Qt can wrap a 300-character URL or hash."""
    parts = re.split(r"(<[^>]*>)", fragment)
    for i in range(0, len(parts), 2):
        if len(parts[i]) > run:
            parts[i] = _break_text(parts[i], run)
    return "".join(parts)


def _break_text(text: str, run: int) -> str:
    out: list[str] = []
    count = 0
    for unit in re.findall(r"&#?\w+;|\s|[^\s&]|&", text):
        if unit.isspace() or unit == ZWSP:
            count = 0
        else:
            count += 1
            if count > run:
                out.append(ZWSP)
                count = 1
        out.append(unit)
    return "".join(out)
