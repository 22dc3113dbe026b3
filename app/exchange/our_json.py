"""Our own JSON export (`"format": "grok-desktop.conversations"`) -> checked Conversations.

Every value is checked before anything is stored: JSON types, finite numbers, settings in
range, times the app can show, ids that fit SQLite, and message trees that are trees (each
parent exists, no message is its own ancestor, ids unique). Messages may be listed in any order;
they are stored parents first, keeping the file's order where it already is. A conversation
without `current_message_id` opens at its newest leaf, as a ChatGPT import does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from app.errors import BadImport
from app.exchange.chatgpt import default_leaf
from app.exchange.export import SCHEMA_VERSION
from app.exchange.jsoncheck import (
    SQLITE_INT,
    at,
    expected,
    first_bad_value,
    is_number,
    iso_seconds,
    json_type,
)
from app.messages import GenerationParams
from app.store.conversation import FINISH_REASONS, ROLES, STATUSES, Conversation, Message

_NUMBER_SETTINGS = ("temperature", "top_p", "min_p", "repetition_penalty")
_INT_SETTINGS = ("top_k", "max_tokens")
_MODEL_TEXT = ("name", "folder", "config_hash", "quantization", "device")
_STATS = ("prompt_tokens", "completion_tokens", "ttft_s", "tokens_per_s", "total_s")
_MISSING = object()


def check_document(doc: dict[str, Any]) -> list[Any]:
    """The envelope: version and the conversations list; raises BadImport."""
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadImport(
            "version", f"expected a positive whole number like 1, got {_shown(version)}"
        )
    if version > SCHEMA_VERSION:
        raise BadImport(
            "version",
            f"{version} is newer than this app reads ({SCHEMA_VERSION}); update Grok Desktop",
        )
    if problem := first_bad_value(doc, ""):
        raise problem
    return _get(doc, "conversations", list, "", "a list")


def conversations_from_export(doc: dict[str, Any]) -> list[Conversation]:
    """Every conversation of a parsed export document; raises BadImport at the first problem."""
    return [conversation(c, f"conversations[{i}]") for i, c in enumerate(check_document(doc))]


def conversation(data: Any, where: str) -> Conversation:
    """One exported conversation -> Conversation (local message ids); raises BadImport."""
    if not isinstance(data, dict):
        raise expected(where, "an object", data)
    conv_uuid = _get(data, "id", str, where, "a string")
    if not conv_uuid.strip():
        raise BadImport(at(where, "id"), "is empty")
    settings = _get(data, "settings", dict, where, "an object", {})
    check_settings(settings, at(where, "settings"))
    messages = _tree(_get(data, "messages", list, where, "a list"), at(where, "messages"))
    current = _get(data, "current_message_id", int, where, "a message id (a number)", None)
    if current is not None and all(m.id != current for m in messages):
        raise BadImport(at(where, "current_message_id"), f"no message has id {current}")
    if current is None and messages:
        current = default_leaf(messages)
    deleted = _get(data, "deleted_at", str, where, "a time", None)
    return Conversation(
        id=0,
        uuid=conv_uuid,
        title=_get(data, "title", str, where, "a string", ""),
        pinned=_get(data, "pinned", bool, where, "true or false", False),
        system_prompt=_get(data, "system_prompt", str, where, "a string", ""),
        params=settings,
        created_at=_time(data, "created_at", where),
        updated_at=_time(data, "updated_at", where),
        current_leaf_id=current,
        deleted_at=None if deleted is None else iso_seconds(deleted, at(where, "deleted_at")),
        messages=tuple(messages),
    )


def check_settings(settings: dict[str, Any], where: str) -> None:
    """Sampling settings: the right JSON types, then GenerationParams' ranges."""
    for key in _NUMBER_SETTINGS:
        if key in settings and not is_number(settings[key]):
            raise expected(at(where, key), "a number", settings[key])
    for key in _INT_SETTINGS:
        if key in settings and not (is_number(settings[key]) and isinstance(settings[key], int)):
            raise expected(at(where, key), "a whole number", settings[key])
    if settings.get("seed") is not None:
        _seed(settings["seed"], at(where, "seed"))
    try:
        GenerationParams.from_dict(settings)
    except (TypeError, ValueError) as exc:
        raise BadImport(where, str(exc)) from exc


# ---- messages -----------------------------------------------------------------------------


def _tree(raw: list[Any], where: str) -> list[Message]:
    """Check the messages and their links; returns them parents first."""
    messages = [_message(item, f"{where}[{i}]") for i, item in enumerate(raw)]
    index: dict[int, int] = {}
    for i, msg in enumerate(messages):
        if msg.id in index:
            raise BadImport(
                f"{where}[{i}].id", f"{msg.id} is also the id of {where}[{index[msg.id]}]"
            )
        index[msg.id] = i
    for i, msg in enumerate(messages):
        if msg.parent_id == msg.id:
            raise BadImport(f"{where}[{i}].parent_id", f"message {msg.id} is its own parent")
        if msg.parent_id is not None and msg.parent_id not in index:
            raise BadImport(
                f"{where}[{i}].parent_id",
                f"{msg.parent_id} is not the id of a message in this conversation",
            )
    ordered = _parents_first(messages)
    if len(ordered) < len(messages):
        raise _cycle(messages, {m.id for m in ordered}, index, where)
    return ordered


def _parents_first(messages: list[Message]) -> list[Message]:
    """A stable topological order: the input order, except that a message listed before its
    parent moves to just after it. Messages on a cycle are left out."""
    done: set[int] = set()
    waiting: dict[int, list[Message]] = defaultdict(list)
    out: list[Message] = []
    for msg in messages:
        if msg.parent_id is not None and msg.parent_id not in done:
            waiting[msg.parent_id].append(msg)
            continue
        stack = [msg]
        while stack:
            node = stack.pop()
            out.append(node)
            done.add(node.id)
            stack.extend(reversed(waiting.pop(node.id, [])))
    return out


def _cycle(
    messages: list[Message], placed: set[int], index: dict[int, int], where: str
) -> BadImport:
    by_id = {m.id: m for m in messages}
    chain = [next(m.id for m in messages if m.id not in placed)]
    while True:
        parent = by_id[chain[-1]].parent_id
        assert parent is not None  # a message left unplaced has an unplaced parent
        if parent in chain:
            break
        chain.append(parent)
    cycle = [*chain[chain.index(parent) :], parent]
    return BadImport(
        f"{where}[{index[parent]}].parent_id",
        "the parent links form a cycle (messages " + " -> ".join(map(str, cycle)) + ")",
    )


def _message(data: Any, where: str) -> Message:
    if not isinstance(data, dict):
        raise expected(where, "an object", data)
    role = _choice(data, "role", ROLES, where)
    status = _choice(data, "status", STATUSES, where)
    created = _time(data, "created_at", where)
    reason = data.get("finish_reason")
    if reason is not None and reason not in FINISH_REASONS:
        raise BadImport(
            at(where, "finish_reason"),
            f"{_shown(reason)} is not one of {', '.join(FINISH_REASONS)}",
        )
    params = _get(data, "settings", dict, where, "an object", None)
    if params is not None:
        check_settings(params, at(where, "settings"))
    seed = data.get("seed")
    return Message(
        id=_get(data, "id", int, where, "a message id (a number)"),
        conversation_id=0,
        parent_id=_get(data, "parent_id", int, where, "a message id (a number) or null", None),
        role=role,
        content=_get(data, "content", str, where, "a string"),
        status="interrupted" if status == "streaming" else status,  # cut off when exported
        created_at=created,
        updated_at=_time(data, "updated_at", where) if "updated_at" in data else created,
        finish_reason=reason,
        model=_model(data, where),
        params=params,
        seed=None if seed is None else _seed(seed, at(where, "seed")),
        stats=_stats(data, where),
        error=_get(data, "error", str, where, "a string", None),
    )


def _model(data: dict[str, Any], where: str) -> dict[str, Any] | None:
    model = _get(data, "model", dict, where, "an object", None)
    if model is None:
        return None
    for key in _MODEL_TEXT:
        _get(model, key, str, at(where, "model"), "a string", None)
    _get(model, "context_length", int, at(where, "model"), "a whole number", None)
    _get(model, "is_demo", bool, at(where, "model"), "true or false", None)
    return model


def _stats(data: dict[str, Any], where: str) -> dict[str, Any] | None:
    stats = _get(data, "stats", dict, where, "an object", None)
    for key in _STATS if stats is not None else ():
        if stats.get(key) is not None and not is_number(stats[key]):
            raise expected(at(at(where, "stats"), key), "a number", stats[key])
    return stats


def _seed(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise expected(where, "a whole number", value)
    if not SQLITE_INT[0] <= value <= SQLITE_INT[1]:
        raise BadImport(where, f"{value} does not fit in 64 bits; use a smaller seed")
    return value


# ---- checked getters ----------------------------------------------------------------------


def _get(
    data: dict[str, Any], key: str, kind: type, where: str, what: str, default: Any = _MISSING
) -> Any:
    """data[key] checked against `kind`; optional when a default is given (null allowed)."""
    value = data.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadImport(at(where, key), f"is missing (expected {what})")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise expected(at(where, key), what, value)
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> str:
    value = _get(data, key, str, where, "a string")
    if value not in allowed:
        raise BadImport(at(where, key), f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _time(data: dict[str, Any], key: str, where: str) -> float:
    return iso_seconds(
        _get(data, key, str, where, "a time like 2025-01-31T12:00:00.000Z"), at(where, key)
    )


def _shown(value: Any) -> str:
    plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return repr(value) if plain else json_type(value)
