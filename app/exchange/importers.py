"""Import conversations: our JSON export (lossless) and ChatGPT's `conversations.json`.

A file is read and checked completely before anything is written, then stored in one
transaction: a malformed or truncated file is rejected with one message naming the file and
the first problem, and nothing is half-imported. Conversations already in the store (same id)
are skipped, so importing a file twice is harmless.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import BadImport, UserError
from app.exchange.chatgpt import conversations_from_chatgpt
from app.exchange.export import FORMAT_NAME, SCHEMA_VERSION
from app.messages import GenerationParams
from app.store.conversation import (
    FINISH_REASONS,
    ROLES,
    STATUSES,
    Conversation,
    Message,
    ms_from_iso,
)

if TYPE_CHECKING:
    from app.store.store import Store


@dataclass(frozen=True)
class ImportResult:
    source: str  # "Grok Desktop JSON" | "ChatGPT export"
    imported_ids: tuple[int, ...]
    skipped: int  # already present (same conversation id)


def import_file(store: Store, path: Path) -> ImportResult:
    """Read, check and store every conversation in `path` (one transaction)."""
    source, conversations = read_import_file(path)
    ids, skipped = store.import_conversations(conversations)
    return ImportResult(source, tuple(ids), skipped)


def read_import_file(path: Path) -> tuple[str, list[Conversation]]:
    """Parse and validate a file; raises UserError naming the file and the first problem."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
        return parse_document(data)
    except json.JSONDecodeError as exc:
        raise _reject(
            path,
            f"not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); is the file complete?",
        ) from exc
    except BadImport as exc:
        raise _reject(path, str(exc)) from exc


def parse_document(data: Any) -> tuple[str, list[Conversation]]:
    """Recognise the format and convert it; raises BadImport."""
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        return "Grok Desktop JSON", conversations_from_export(data)
    if isinstance(data, dict) and "mapping" in data:
        data = [data]  # a single ChatGPT conversation
    if isinstance(data, list) and all(isinstance(c, dict) and "mapping" in c for c in data):
        return "ChatGPT export", conversations_from_chatgpt(data)
    raise BadImport(
        "",
        'not a Grok Desktop export (no "format": "' + FORMAT_NAME + '") '
        "nor a ChatGPT conversations.json (a list of conversations with a mapping)",
    )


def _read_text(path: Path) -> str:
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("conversations.json")]
                if not names:
                    raise _reject(path, "the archive holds no conversations.json")
                return archive.read(min(names, key=len)).decode("utf-8")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise _reject(path, f"cannot be read ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise _reject(path, "is not UTF-8 text; is it really a JSON export?") from exc


def _reject(path: Path, problem: str) -> UserError:
    return UserError(f"cannot import {path}: {problem}; nothing was imported")


# ---- our JSON -----------------------------------------------------------------------------


def conversations_from_export(doc: dict[str, Any]) -> list[Conversation]:
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise BadImport("version", "missing or not a positive integer")
    if version > SCHEMA_VERSION:
        raise BadImport(
            "version",
            f"{version} is newer than this app reads ({SCHEMA_VERSION}); update Grok Desktop",
        )
    items = _get(doc, "conversations", list, "")
    return [_conversation(c, f"conversations[{i}]") for i, c in enumerate(items)]


def _conversation(data: Any, where: str) -> Conversation:
    if not isinstance(data, dict):
        raise BadImport(where, "expected an object")
    conv_uuid = _get(data, "id", str, where)
    if not conv_uuid.strip():
        raise BadImport(f"{where}.id", "is empty")
    settings = _get(data, "settings", dict, where, {})
    try:
        GenerationParams.from_dict(settings)
    except (TypeError, ValueError) as exc:
        raise BadImport(f"{where}.settings", str(exc)) from exc
    raw = _get(data, "messages", list, where)
    messages = _messages(raw, where)
    current = _get(data, "current_message_id", int, where, None)
    if current is not None and all(m.id != current for m in messages):
        raise BadImport(f"{where}.current_message_id", f"no message has id {current}")
    deleted = _get(data, "deleted_at", str, where, None)
    return Conversation(
        id=0,
        uuid=conv_uuid,
        title=_get(data, "title", str, where, ""),
        pinned=_get(data, "pinned", bool, where, False),
        system_prompt=_get(data, "system_prompt", str, where, ""),
        params=settings,
        created_at=_time(data, "created_at", where),
        updated_at=_time(data, "updated_at", where),
        current_leaf_id=current,
        deleted_at=None if deleted is None else _time(data, "deleted_at", where),
        messages=tuple(messages),
    )


def _messages(raw: list[Any], where: str) -> list[Message]:
    seen: set[int] = set()
    out = []
    for i, item in enumerate(raw):
        at = f"{where}.messages[{i}]"
        msg = _message(item, at)
        if msg.id in seen:
            raise BadImport(f"{at}.id", f"{msg.id} is used twice")
        if msg.parent_id is not None and msg.parent_id not in seen:
            raise BadImport(f"{at}.parent_id", f"{msg.parent_id} is not an earlier message's id")
        seen.add(msg.id)
        out.append(msg)
    return out


def _message(data: Any, at: str) -> Message:
    if not isinstance(data, dict):
        raise BadImport(at, "expected an object")
    role = _choice(data, "role", ROLES, at)
    status = _choice(data, "status", STATUSES, at)
    created = _time(data, "created_at", at)
    reason = data.get("finish_reason")
    if reason is not None and reason not in FINISH_REASONS:
        raise BadImport(f"{at}.finish_reason", f"{reason!r} is not one of {FINISH_REASONS}")
    return Message(
        id=_get(data, "id", int, at),
        conversation_id=0,
        parent_id=_get(data, "parent_id", int, at, None),
        role=role,
        content=_get(data, "content", str, at),
        status="interrupted" if status == "streaming" else status,  # cut off when exported
        created_at=created,
        updated_at=_time(data, "updated_at", at) if "updated_at" in data else created,
        finish_reason=reason,
        model=_get(data, "model", dict, at, None),
        params=_get(data, "settings", dict, at, None),
        seed=_get(data, "seed", int, at, None),
        stats=_get(data, "stats", dict, at, None),
        error=_get(data, "error", str, at, None),
    )


_MISSING = object()


def _get(data: dict[str, Any], key: str, kind: type, where: str, default: Any = _MISSING) -> Any:
    """data[key] checked against `kind`; optional when a default is given (None allowed)."""
    value = data.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadImport(f"{where}.{key}".lstrip("."), "is missing")
        return default
    wrong_bool = kind is int and isinstance(value, bool)
    if not isinstance(value, kind) or wrong_bool:
        raise BadImport(
            f"{where}.{key}".lstrip("."), f"expected {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> str:
    value = _get(data, key, str, where)
    if value not in allowed:
        raise BadImport(f"{where}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _time(data: dict[str, Any], key: str, where: str) -> float:
    text = _get(data, key, str, where)
    try:
        return ms_from_iso(text) / 1000
    except ValueError as exc:
        raise BadImport(f"{where}.{key}", f"{text!r} is not an ISO 8601 time") from exc
