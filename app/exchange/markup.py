"""Message text as the model writes it (Markdown): fenced code blocks and code colouring.

Plain Python, no Qt: shared by the GUI's message view and the exporters, so a reply is cut
into prose and code, and coloured, the same way on screen and in an exported file.
Highlighting is a small regex lexer for the common languages: no extra dependency.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# CommonMark fences: up to 3 spaces, then 3+ backticks or 3+ tildes, then an info string.
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


@dataclass(frozen=True)
class Segment:
    """A run of message text: prose, or one fenced code block (body without its fences)."""

    kind: str  # "text" | "code"
    text: str
    lang: str = ""
    fence: str = ""  # the opening fence, e.g. "```" or "~~~~"
    closed: bool = True  # False for a code block the message left open


def split_fences(text: str) -> list[Segment]:
    """Split Markdown into prose and fenced code blocks, CommonMark-style."""
    segments: list[Segment] = []
    prose: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None or (match.group(1)[0] == "`" and "`" in match.group(2)):
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            segments.append(Segment("text", "\n".join(prose)))
            prose = []
        fence, lang = match.group(1), match.group(2).strip().split(" ")[0]
        end = _closing_line(lines, i + 1, fence)
        body = "\n".join(lines[i + 1 : end])
        segments.append(Segment("code", body, lang, fence, closed=end < len(lines)))
        i = end + 1
    if prose:
        segments.append(Segment("text", "\n".join(prose)))
    return segments


def _closing_line(lines: list[str], start: int, fence: str) -> int:
    closer = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    for j in range(start, len(lines)):
        if closer.match(lines[j]):
            return j
    return len(lines)


def close_open_fences(text: str) -> str:
    """The text unchanged, plus a closing fence if it ends inside an unclosed code block."""
    segments = split_fences(text)
    if not segments or segments[-1].kind != "code" or segments[-1].closed:
        return text
    return text.rstrip("\n") + "\n" + segments[-1].fence + "\n"


def fence_for(text: str, char: str = "`") -> str:
    """A fence longer than any run of `char` in `text`, so the text can sit inside verbatim."""
    runs = re.findall(rf"{re.escape(char)}+", text)
    return char * max(3, max((len(r) for r in runs), default=0) + 1)


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
    "python": frozenset(
        _words("""False None True and as assert async await break class
        continue def del elif else except finally for from global if import in is lambda nonlocal not or
        pass raise return try while with yield self match case print len range""")
    ),
    "shell": frozenset(
        _words("""if then else elif fi for while do done case esac in
        function return export local echo cd exit set unset source sudo pip python git""")
    ),
    "sql": frozenset(
        _words("""select from where insert into values update set delete
        create table drop alter index join left right inner outer on group by order having limit and or not
        null as distinct primary key references integer text""")
    ),
    "c": frozenset(_C_LIKE),
    "json": frozenset(_words("true false null")),
}
_ALIASES = {
    "py": "python",
    "python3": "python",
    "sh": "shell",
    "bash": "shell",
    "zsh": "shell",
    "console": "shell",
    "shell-session": "shell",
    "sqlite": "sql",
    "postgresql": "sql",
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


def code_tokens(code: str, language: str) -> Iterator[tuple[str | None, str]]:
    """Code cut into (kind, text) runs; kind is keyword, string, comment, number, function or
    None for plain text. Joining the texts gives the code back unchanged."""
    lang = canonical_language(language)
    keywords = _KEYWORDS.get(lang, _KEYWORDS["c"] if lang else frozenset())
    pos = 0
    for m in _pattern(lang).finditer(code):
        kind = _style_for(m.lastgroup, m, keywords, code)
        if kind is None:
            continue
        if m.start() > pos:
            yield None, code[pos : m.start()]
        yield kind, m.group()
        pos = m.end()
    if pos < len(code):
        yield None, code[pos:]


def highlight_html(code: str, language: str, colors: Mapping[str, str]) -> str:
    """Code as HTML `<pre>` with inline colours (Qt rich text supports inline styles only).

    `colors` maps keyword, string, comment, number, function to CSS colours.
    """
    out = [
        html.escape(text)
        if kind is None
        else f'<span style="color:{colors[kind]}">{html.escape(text)}</span>'
        for kind, text in code_tokens(code, language)
    ]
    return f'<pre style="margin:0; white-space:pre-wrap">{"".join(out)}</pre>'


CSS_CLASSES = {"keyword": "k", "string": "s", "comment": "c", "number": "n", "function": "f"}


def highlight_classes(code: str, language: str) -> str:
    """Escaped code with <span class="k|s|c|n|f"> runs, for HTML export with a stylesheet.
    Without a language the code is only escaped."""
    if not language:
        return html.escape(code)
    return "".join(
        html.escape(text)
        if kind is None
        else f'<span class="{CSS_CLASSES[kind]}">{html.escape(text)}</span>'
        for kind, text in code_tokens(code, language)
    )


def _style_for(
    kind: str | None, m: re.Match[str], keywords: frozenset[str], code: str
) -> str | None:
    if kind in ("comment", "string", "number"):
        return kind
    word = m.group()
    if word in keywords or word.lower() in keywords and keywords is _KEYWORDS["sql"]:
        return "keyword"
    if code[m.end() : m.end() + 1] == "(":
        return "function"
    return None
