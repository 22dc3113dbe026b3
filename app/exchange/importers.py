"""Import conversations: our JSON export (lossless) and ChatGPT's export, as people have them.

Accepted: our JSON export; ChatGPT's `conversations.json`, or the newer split export
(`conversations-000.json`, `conversations-001.json`, ...), each as a file, a folder or the zip
ChatGPT mails out. Text must be UTF-8 (a BOM is fine).

Everything is read and checked before anything is written, then stored in ONE transaction.
Our format is all-or-nothing: one problem rejects the file, naming the JSON path. In a ChatGPT
export a broken conversation is skipped and reported (index, title, path and problem) while the
rest import; `strict=True` rejects the whole file instead. Conversations already in the store
(same id) are left as they are, so importing a file twice is harmless; the same id twice in one
file imports both (the second under a new id derived from the first). Lone UTF-16 surrogates
are replaced with U+FFFD and reported.
"""

from __future__ import annotations

import re
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import BadImport, UserError
from app.exchange.chatgpt import conversation_title, convert_conversation
from app.exchange.export import FORMAT_NAME
from app.exchange.jsoncheck import (
    decode_text,
    may_hold_surrogates,
    parse_json,
    quoted,
    repair_surrogates,
)
from app.exchange.our_json import check_document, conversation
from app.store.conversation import Conversation

if TYPE_CHECKING:
    from app.store.store import Store

OURS = "Grok Desktop JSON"
CHATGPT = "ChatGPT export"
Progress = Callable[[int, int], None]  # (conversations done, total)
_SHARD = re.compile(r"conversations-(\d+)\.json\Z")


@dataclass(frozen=True)
class Skipped:
    """A conversation left out of a ChatGPT import because it is broken."""

    where: str  # its index in the file, e.g. "[4]" or "conversations-001.json [4]"
    title: str
    problem: str  # JSON path inside the conversation and what is wrong there

    def __str__(self) -> str:
        title = f" {quoted(self.title)}" if self.title else ""  # JSON-escaped: one line
        return f"{self.where}{title}: {self.problem}"


@dataclass(frozen=True)
class ImportResult:
    source: str  # OURS | CHATGPT
    imported_ids: tuple[int, ...]
    skipped: int  # already present (same conversation id), left as they are
    broken: tuple[Skipped, ...] = ()  # ChatGPT conversations left out, with the reason
    notes: tuple[str, ...] = ()  # repairs made (new ids for repeated ids, replaced characters)

    def summary(self, name: str) -> str:
        """What happened, for the CLI and the GUI: one line, then one per broken conversation
        when there are several, then the notes."""
        n = len(self.imported_ids)
        lines = [f"imported {_count(n, 'conversation')} from {name} ({self.source})"]
        if self.skipped:
            lines[0] += f"; {self.skipped} already present, skipped"
        if len(self.broken) == 1:
            lines[0] += f"; skipped 1: {self.broken[0]}"
        elif self.broken:
            lines[0] += f"; skipped {len(self.broken)} that cannot be read:"
            lines += [f"  {b}" for b in self.broken]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ParsedImport:
    source: str
    conversations: tuple[Conversation, ...]
    broken: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()


def import_file(
    store: Store, path: Path, *, strict: bool = False, progress: Progress | None = None
) -> ImportResult:
    """Read, check and store every conversation in `path` (a file, folder or zip).

    One transaction: on any error nothing is stored. `strict` makes a broken ChatGPT
    conversation reject the whole file (our format is always strict). `progress(done, total)`
    is called as conversations are read. Raises UserError naming the file, the JSON path and
    the fix; StorageError when the database cannot be written.
    """
    parsed = read_import_file(path, strict=strict, progress=progress)
    ids, skipped = store.import_conversations(parsed.conversations)
    return ImportResult(parsed.source, tuple(ids), skipped, parsed.broken, parsed.notes)


def read_import_file(
    path: Path, *, strict: bool = False, progress: Progress | None = None
) -> ParsedImport:
    """Parse and check a file, folder or zip; raises UserError naming it and the problem."""
    path = Path(path)
    try:
        docs = [(label, _parse(raw, label)) for label, raw in _sources(path)]
        parsed = _convert(docs, strict, progress or _no_progress)
    except BadImport as exc:
        raise _reject(path, str(exc) + _fix(exc)) from exc
    if not parsed.conversations and parsed.broken:
        shown = "; ".join(map(str, parsed.broken[:3]))
        more = f"; and {len(parsed.broken) - 3} more" if len(parsed.broken) > 3 else ""
        raise _reject(path, f"no conversation could be read: {shown}{more}")
    return _distinct_ids(parsed)


def _no_progress(done: int, total: int) -> None:
    pass


def _reject(path: Path, problem: str) -> UserError:
    return UserError(f"cannot import {path}: {problem}; nothing was imported")


def _fix(exc: BadImport) -> str:
    """What to do about a value at a JSON path (file-level problems say it themselves)."""
    if not exc.where or exc.problem.startswith("it ") or "--strict" in exc.problem:
        return ""
    return "; correct that value in the file, or export it again"


# ---- files, folders and zips --------------------------------------------------------------


def _sources(path: Path) -> list[tuple[str, bytes]]:
    """(label, bytes) of each JSON document to read: one file, or the conversations of a
    folder or zip (all `conversations-NNN.json` shards, else `conversations.json`)."""
    try:
        if path.is_dir():
            names = [p.relative_to(path).as_posix() for p in path.rglob("*.json")]
            return [(n, (path / n).read_bytes()) for n in _pick(names, path)]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                return [(n, archive.read(n)) for n in _pick(names, path)]
        return [("", path.read_bytes())]  # errors name the file itself
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise UserError(f"cannot import {path}: permission denied; check who owns it") from exc
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise _reject(path, f"it cannot be read ({exc})") from exc


def _pick(names: list[str], path: Path) -> list[str]:
    shards = {n: m for n in names if (m := _SHARD.match(n.rsplit("/", 1)[-1]))}
    if shards:
        return sorted(shards, key=lambda n: (int(shards[n][1]), n))
    whole = [n for n in names if n.rsplit("/", 1)[-1] == "conversations.json"]
    if not whole:
        raise _reject(path, "it holds no conversations.json or conversations-000.json")
    return [min(whole, key=len)]


def _parse(raw: bytes, label: str) -> Any:
    try:
        data = parse_json(decode_text(raw))
    except BadImport as exc:
        raise BadImport(label, exc.problem) from exc
    return data, may_hold_surrogates(raw)


# ---- converting ---------------------------------------------------------------------------


def _convert(docs: list[tuple[str, Any]], strict: bool, progress: Progress) -> ParsedImport:
    if [_kind(data, label, len(docs) > 1) for label, (data, _) in docs] == [OURS]:
        return _ours(docs[0][1], progress)
    items: list[tuple[str, Any]] = []
    notes: list[str] = []
    for label, (data, surrogates) in docs:
        if surrogates:
            data, repairs = repair_surrogates(data)
            if repairs.count:
                notes.append(f"{label}: {repairs.note()}" if label else repairs.note())
        prefix = f"{label} " if len(docs) > 1 else ""
        rows = data if isinstance(data, list) else [data]
        items += [(f"{prefix}[{i}]", item) for i, item in enumerate(rows)]
    convs, broken = [], []
    for done, (where, item) in enumerate(items, start=1):
        try:
            convs.append(convert_conversation(item, ""))
        except BadImport as exc:
            if strict:
                raise BadImport(
                    where + _join(exc.where),
                    f"{exc.problem}; import without --strict to skip the broken conversation",
                ) from exc
            broken.append(Skipped(where, conversation_title(item), str(exc)))
        progress(done, len(items))
    return ParsedImport(CHATGPT, tuple(convs), tuple(broken), tuple(notes))


def _join(where: str) -> str:
    return where if not where or where.startswith("[") else "." + where


def _kind(data: Any, label: str, several: bool) -> str:
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME and not several:
        return OURS
    if isinstance(data, dict) and "mapping" in data:
        return CHATGPT  # a single ChatGPT conversation
    if isinstance(data, list) and (
        not data or any(isinstance(c, dict) and "mapping" in c for c in data)
    ):
        return CHATGPT
    raise BadImport(
        label if several else "",
        'it is not a Grok Desktop export (no "format": "' + FORMAT_NAME + '") '
        "nor a ChatGPT conversations.json (a list of conversations with a mapping)",
    )


def _ours(parsed: tuple[Any, bool], progress: Progress) -> ParsedImport:
    data, surrogates = parsed
    notes: tuple[str, ...] = ()
    if surrogates:
        data, repairs = repair_surrogates(data)
        notes = (repairs.note(),) if repairs.count else ()
    items = check_document(data)
    convs = []
    for i, item in enumerate(items):
        convs.append(conversation(item, f"conversations[{i}]"))
        progress(i + 1, len(items))
    return ParsedImport(OURS, tuple(convs), (), notes)


def _distinct_ids(parsed: ParsedImport) -> ParsedImport:
    """The same conversation id twice in one file: the later copies get ids derived from it
    (the same ones on every import, so importing the file again still adds nothing)."""
    seen: dict[str, int] = {}
    convs, notes = [], list(parsed.notes)
    for conv in parsed.conversations:
        copies = seen.get(conv.uuid, 0)
        seen[conv.uuid] = copies + 1
        if copies:
            new = str(uuid.uuid5(uuid.NAMESPACE_URL, f"grok-desktop:{conv.uuid}#{copies + 1}"))
            notes.append(
                f"the id {conv.uuid!r} is used by more than one conversation in the file; "
                f"copy {copies + 1} ({conv.title!r}) was imported as a separate conversation "
                f"with id {new}"
            )
            conv = replace(conv, uuid=new)
        convs.append(conv)
    return replace(parsed, conversations=tuple(convs), notes=tuple(notes))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
