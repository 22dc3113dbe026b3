"""Message text to display pieces: prose (Markdown) and fenced code blocks, and code colouring.

Plain Python (no Qt): the message widget renders `Prose` with Qt's own Markdown parser (md4c,
GitHub dialect, raw HTML off) and each `Code` block in its own widget with a copy button.
Highlighting is a small regex lexer for the common languages: no extra dependency.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")


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
    """Cut text at fenced code blocks; an unclosed fence runs to the end (still streaming)."""
    segments: list[Segment] = []
    prose: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            prose.append(lines[i])
            i += 1
            continue
        if any(s.strip() for s in prose):
            segments.append(Prose("\n".join(prose).strip("\n")))
        prose = []
        fence, body, i = m["fence"], [], i + 1
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(lines[i])
            i += 1
        segments.append(Code("\n".join(body), m["info"].lower(), closed=i < len(lines)))
        i += 1
    if any(s.strip() for s in prose):
        segments.append(Prose("\n".join(prose).strip("\n")))
    return segments


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (len(line) - len(line.lstrip(" ")) <= 3 and stripped.startswith(fence[0] * len(fence))
            and set(stripped) == {fence[0]})


# ---- highlighting -----------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return text.split()


_C_LIKE = _words("""auto break case catch char class const continue default delete do double
else enum extern false final float for friend goto if inline int long namespace new null nullptr override
private protected public return short signed sizeof static struct switch template this throw
true try typedef typename union unsigned using virtual void volatile while import package
interface extends implements boolean byte var let function async await yield export from of
in instanceof typeof undefined fn impl mut pub use mod trait match loop where self Self crate
func go chan defer select map range type struct string bool nil""")

_KEYWORDS: dict[str, frozenset[str]] = {
    "python": frozenset(_words("""False None True and as assert async await break class
        continue def del elif else except finally for from global if import in is lambda nonlocal not or
        pass raise return try while with yield self match case print len range""")),
    "shell": frozenset(_words("""if then else elif fi for while do done case esac in
        function return export local echo cd exit set unset source sudo pip python git""")),
    "sql": frozenset(_words("""select from where insert into values update set delete
        create table drop alter index join left right inner outer on group by order having limit and or not
        null as distinct primary key references integer text""")),
    "c": frozenset(_C_LIKE),
    "json": frozenset(_words("true false null")),
}
_ALIASES = {
    "py": "python", "python3": "python", "sh": "shell", "bash": "shell", "zsh": "shell",
    "console": "shell", "shell-session": "shell", "sqlite": "sql", "postgresql": "sql",
}
_HASH_COMMENT = {"python", "shell", "yaml", "toml", "ruby", "r", "perl"}

_TOKEN = re.compile(
    r"(?P<comment>{comment})"
    r"|(?P<string>\"\"\"[\s\S]*?(?:\"\"\"|$)|'''[\s\S]*?(?:'''|$)|\"(?:\\.|[^\"\\\n])*\"?"
    r"|'(?:\\.|[^'\\\n])*'?|`(?:\\.|[^`\\])*`?)"
    r"|(?P<number>\b(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)\b)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
)
_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(language: str) -> re.Pattern[str]:
    if language not in _PATTERNS:
        comment = r"#[^\n]*" if language in _HASH_COMMENT else r"//[^\n]*|/\*[\s\S]*?(?:\*/|$)"
        if language == "sql":
            comment = r"--[^\n]*"
        _PATTERNS[language] = re.compile(_TOKEN.pattern.replace("{comment}", comment))
    return _PATTERNS[language]


def canonical_language(language: str) -> str:
    language = language.lower()
    return _ALIASES.get(language, language)


def highlight_html(code: str, language: str, colors: Mapping[str, str]) -> str:
    """Code as HTML `<pre>` with inline colours (Qt rich text supports inline styles only).

    `colors` maps keyword, string, comment, number, function to CSS colours.
    """
    lang = canonical_language(language)
    keywords = _KEYWORDS.get(lang, _KEYWORDS["c"] if lang else frozenset())
    out: list[str] = []
    pos = 0
    for m in _pattern(lang).finditer(code):
        kind = m.lastgroup
        style = _style_for(kind, m, keywords, code)
        if style is None:
            continue
        out.append(html.escape(code[pos:m.start()]))
        out.append(f'<span style="color:{colors[style]}">{html.escape(m.group())}</span>')
        pos = m.end()
    out.append(html.escape(code[pos:]))
    return f"<pre style=\"margin:0; white-space:pre-wrap\">{''.join(out)}</pre>"


def _style_for(kind: str | None, m: re.Match[str], keywords: frozenset[str],
               code: str) -> str | None:
    if kind in ("comment", "string", "number"):
        return kind
    word = m.group()
    if word in keywords or word.lower() in keywords and keywords is _KEYWORDS["sql"]:
        return "keyword"
    if code[m.end():m.end() + 1] == "(":
        return "function"
    return None
