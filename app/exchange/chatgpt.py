"""ChatGPT's `conversations.json` (from its "Export data" zip) -> our Conversation tree.

Each conversation has a `mapping` of nodes {id, message, parent, children} and a
`current_node`. Visible user, assistant and system text becomes messages; hidden system
prompts, tool calls and tool output, and empty nodes are left out, and their children attach to
the nearest kept ancestor, so every branch (edits, regenerations) survives.
"""

from __future__ import annotations

import uuid
from typing import Any

from app.errors import BadImport
from app.store.conversation import Conversation, Message, make_title, newest_leaf_under

# keyed by whatever JSON value the export holds (None, a string, ...)
_STATUS: dict[object, str] = {"in_progress": "interrupted"}
_FINISH: dict[object, str] = {"stop": "stop", "max_tokens": "length", "interrupted": "cancelled"}
_TEXT_TYPES = ("text", "multimodal_text")


def conversations_from_chatgpt(items: list[dict[str, Any]]) -> list[Conversation]:
    return [_conversation(c, f"[{i}]") for i, c in enumerate(items)]


def _conversation(data: dict[str, Any], where: str) -> Conversation:
    mapping = data.get("mapping")
    if not isinstance(mapping, dict) or not all(isinstance(n, dict) for n in mapping.values()):
        raise BadImport(f"{where}.mapping", "expected an object of nodes")
    created = _number(data.get("create_time"), f"{where}.create_time", 0.0)
    messages, kept = _walk(mapping, created, where)
    leaf = kept.get(data.get("current_node"))
    if leaf is None and messages:
        leaf = newest_leaf_under(messages, messages[0].id)
    first_user = next((m.content for m in messages if m.role == "user"), "")
    raw_title = data.get("title")
    title = raw_title if isinstance(raw_title, str) else ""
    return Conversation(
        id=0,
        uuid=_uuid(data, created, title),
        title=title or make_title(first_user),
        pinned=False,
        system_prompt="",
        params={},
        created_at=created,
        updated_at=_number(data.get("update_time"), f"{where}.update_time", created),
        current_leaf_id=leaf,
        deleted_at=None,
        messages=tuple(messages),
    )


def _walk(
    mapping: dict[str, dict[str, Any]], created: float, where: str
) -> tuple[list[Message], dict[str | None, int | None]]:
    """Depth-first from the roots, parents before children; returns messages and node -> id."""
    kept: dict[str | None, int | None] = {None: None}
    messages: list[Message] = []
    roots = [k for k, n in mapping.items() if n.get("parent") not in mapping]
    stack: list[tuple[str, str | None]] = [(k, None) for k in reversed(roots)]
    while stack:
        key, parent_key = stack.pop()
        if key in kept:
            raise BadImport(f"{where}.mapping", f"node {key!r} is reached twice (a cycle?)")
        node = mapping.get(key)
        if node is None:
            raise BadImport(f"{where}.mapping", f"child {key!r} is not in the mapping")
        msg = _message(
            node.get("message"),
            len(messages) + 1,
            kept[parent_key],
            created,
            f"{where}.mapping[{key!r}]",
        )
        if msg is not None:
            messages.append(msg)
        kept[key] = msg.id if msg is not None else kept[parent_key]
        children = node.get("children") or []
        if not isinstance(children, list):
            raise BadImport(f"{where}.mapping[{key!r}].children", "expected a list")
        stack.extend((c, key) for c in reversed(children))
    return messages, kept


def _message(
    data: Any, local_id: int, parent: int | None, fallback_time: float, at: str
) -> Message | None:
    """A visible message, or None for what a reader never saw (hidden, tool, empty)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BadImport(f"{at}.message", "expected an object or null")
    role = (data.get("author") or {}).get("role")
    metadata = data.get("metadata") or {}
    if role not in ("user", "assistant", "system") or metadata.get(
        "is_visually_hidden_from_conversation"
    ):
        return None
    if data.get("recipient") not in (None, "all"):
        return None  # a tool call (browser, python): not part of the visible chat
    text = _text(data.get("content"), f"{at}.message.content")
    if not text.strip():
        return None
    created = _number(data.get("create_time"), f"{at}.message.create_time", fallback_time)
    finish = (metadata.get("finish_details") or {}).get("type")
    slug = metadata.get("model_slug")
    return Message(
        id=local_id,
        conversation_id=0,
        parent_id=parent,
        role=role,
        content=text,
        status=_STATUS.get(data.get("status"), "complete"),
        created_at=created,
        updated_at=_number(data.get("update_time"), f"{at}.message.update_time", created),
        finish_reason=_FINISH.get(finish) if role == "assistant" else None,
        model={"name": slug, "source": "ChatGPT export"} if role == "assistant" and slug else None,
    )


def _text(content: Any, at: str) -> str:
    if not isinstance(content, dict):
        raise BadImport(at, "expected an object with content_type and parts")
    if content.get("content_type") not in _TEXT_TYPES:
        return ""  # code, tool output, reasoning summaries: not shown as chat text
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise BadImport(f"{at}.parts", "expected a list")
    return "\n".join(p if isinstance(p, str) else _attachment(p) for p in parts)


def _attachment(part: Any) -> str:
    kind = part.get("content_type", "") if isinstance(part, dict) else ""
    return "[image]" if "image" in kind else "[attachment]"


def _number(value: Any, at: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadImport(at, f"expected a number of seconds, got {type(value).__name__}")
    return float(value)


def _uuid(data: dict[str, Any], created: float, title: str) -> str:
    """ChatGPT's own id when present (so a re-import is recognised), else one derived from it."""
    for key in ("conversation_id", "id"):
        if isinstance(data.get(key), str) and data[key]:
            return data[key]
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chatgpt:{created}:{title}"))
