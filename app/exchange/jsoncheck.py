"""Reading untrusted JSON for the importers: bytes -> checked Python values, with JSON paths.

Everything here raises `BadImport(where, problem)` (a JSON path such as
`conversations[2].messages[5].content` and what is wrong with it) or returns clean values:
text that is UTF-8 (a BOM is accepted), no lone UTF-16 surrogates (replaced by U+FFFD and
counted), numbers that are finite, times that every exporter and the GUI can show.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from app.errors import BadImport
from app.store.conversation import iso_from_ms, ms_from_iso

# 1970-01-01 .. 9998-12-31: every time inside converts both ways on every platform and local
# time zone (Windows refuses negative times; the year 9999 overflows east of UTC).
MAX_SECONDS = 253370764800.0
SQLITE_INT = (-(2**63), 2**63 - 1)

_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or the reverse: the only way
# JSON text decoded from UTF-8 can hold a lone surrogate.
_LONE_SURROGATE_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---- bytes -> JSON values -----------------------------------------------------------------


def decode_text(raw: bytes) -> str:
    """UTF-8 text (with or without a BOM); BadImport naming the encoding and the fix otherwise."""
    save_as = "open it in a text editor and save it as UTF-8, then import it again"
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise BadImport("", f"it is UTF-32 text, not UTF-8; {save_as}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(raw):
        raise BadImport("", f"it is UTF-16 text, not UTF-8; {save_as}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BadImport(
            "",
            f"it is not UTF-8 text (byte 0x{byte:02x} on line {line}; a Latin-1 or Windows-1252 "
            f"file?); {save_as}",
        ) from exc


def _looks_utf16(raw: bytes) -> bool:
    """UTF-16 without a BOM: JSON starts with an ASCII character, so one of the first two
    bytes is NUL."""
    head = raw[:2]
    return len(head) == 2 and (head[0] == 0) != (head[1] == 0)


def parse_json(text: str) -> Any:
    """json.loads that names the line and column of a syntax error and marks objects with
    repeated keys (see `duplicate_keys`)."""
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise BadImport(
            "",
            f"it is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); "
            "is the file complete? Export it again",
        ) from exc
    except RecursionError as exc:
        raise BadImport("", "it nests lists or objects too deeply to be an export") from exc


class _DupDict(dict):
    """A JSON object that named a key twice (json keeps the last value without a word)."""

    duplicates: tuple[str, ...] = ()


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    dup = _DupDict(pairs)
    seen: set[str] = set()
    dup.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return dup


def duplicate_keys(obj: Any) -> tuple[str, ...]:
    """Keys that appeared more than once in this JSON object (the last value was kept)."""
    return obj.duplicates if isinstance(obj, _DupDict) else ()


def may_hold_surrogates(raw: bytes) -> bool:
    """False when the raw file cannot decode to lone surrogates (every \\uD800-\\uDFFF escape
    is half of a pair), so the walk in `repair_surrogates` can be skipped for big files."""
    return _LONE_SURROGATE_ESCAPE.search(raw) is not None


@dataclass
class Repairs:
    """Lone UTF-16 surrogates replaced with U+FFFD: how many, and the first JSON path."""

    count: int = 0
    first: str = ""

    def note(self) -> str:
        if not self.count:
            return ""
        what = "character" if self.count == 1 else "characters"
        return (
            f"{self.count} invalid {what} (lone UTF-16 surrogate escapes such as \\ud800) "
            f"replaced with U+FFFD, first at {self.first}"
        )


def repair_surrogates(value: Any, where: str = "") -> tuple[Any, Repairs]:
    """A copy of `value` with every lone surrogate in keys and strings replaced by U+FFFD."""
    repairs = Repairs()

    def fix(text: str, path: tuple[Any, ...]) -> str:
        fixed, n = _SURROGATE.subn("\ufffd", text)
        if n:
            if not repairs.count:
                repairs.first = join_path(where, path)
            repairs.count += n
        return fixed

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(node, str):
            return fix(node, path)
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, dict):
            out = type(node)()
            for key, child in node.items():
                out[fix(key, (*path, key))] = walk(child, (*path, key))
            if isinstance(node, _DupDict) and isinstance(out, _DupDict):
                out.duplicates = node.duplicates
            return out
        return node

    try:
        return walk(value, ()), repairs
    except RecursionError as exc:
        raise BadImport(where, "it nests lists or objects too deeply to be an export") from exc


# ---- paths and types ----------------------------------------------------------------------


def join_path(where: str, path: tuple[Any, ...]) -> str:
    """`conversations[0]` + ("messages", 3, "content") -> conversations[0].messages[3].content."""
    out = where
    for part in path:
        out += key_path(out, part) if isinstance(part, str) else f"[{part}]"
    return out


def key_path(where: str, key: str) -> str:
    """The path step for an object key: `.title` or `["node id"]`."""
    if _IDENT.match(key):
        return f".{key}" if where else key
    return f"[{quoted(key)}]"


def at(where: str, key: str) -> str:
    return where + key_path(where, key)


def quoted(text: str) -> str:
    """A key or id as JSON writes it: "abc"."""
    return json.dumps(text, ensure_ascii=False)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, with its article: "an object", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def expected(where: str, what: str, value: Any) -> BadImport:
    return BadImport(where, f"expected {what}, got {json_type(value)}")


def first_bad_value(value: Any, where: str) -> BadImport | None:
    """The first NaN or Infinity, or object naming a key twice, in `value` (in document
    order), as a BadImport naming its path; None when there is none."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return BadImport(path, f"{node!r} is not a number JSON allows; write a finite number")
        if isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, dict):
            for key in duplicate_keys(node):
                return BadImport(at(path, key), "this key appears twice in one object; keep one")
            stack.extend((v, at(path, k)) for k, v in reversed(list(node.items())))
    return None


def is_number(value: Any) -> bool:
    """A JSON number that is finite (true/false are not numbers)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )


def check_seconds(value: float, where: str) -> float:
    """Unix seconds inside 1970..9998 (every exporter and the GUI can show them)."""
    if not 0 <= value < MAX_SECONDS:
        raise BadImport(where, f"{value!r} seconds is not a time between 1970 and 9998")
    return float(value)


def iso_seconds(text: str, where: str) -> float:
    """An ISO 8601 time (as our export writes: 2025-01-31T12:00:00.123Z) -> unix seconds."""
    try:
        seconds = ms_from_iso(text) / 1000
        iso_from_ms(round(seconds * 1000))
    except (ValueError, OverflowError, OSError) as exc:
        raise BadImport(
            where, f"{text!r} is not an ISO 8601 time like 2025-01-31T12:00:00.000Z"
        ) from exc
    return check_seconds(seconds, where)
