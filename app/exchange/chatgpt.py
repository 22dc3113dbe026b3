"""ChatGPT's export (`conversations.json`, or `conversations-000.json`... shards) -> our trees.

Each conversation has a `mapping` of nodes {id, message, parent, children} and a
`current_node`. The mapping must be a tree: parent links and children lists agree, no node is
its own ancestor, every id named exists; otherwise the conversation is refused naming the node.
Visible user, assistant and system messages become ours; hidden system prompts, tool calls
(a `recipient` other than "all") and tool output (author role `tool`), and empty nodes are left
out, and their children attach to the nearest kept ancestor, so every branch survives.

Content: text parts as written; numbers in parts as their text ("42"); voice-mode
`audio_transcription` parts as their text; image, audio, video and file pointers as markers
(`[image]`, `[audio]`, `[video]`, `[file: name]`), and non-image attachments listed in the
message metadata as `[file: name]`; `code` and `execution_output` content as fenced code blocks;
`thoughts` (reasoning) as a block quote headed "**Reasoning**". Left out: `reasoning_recap`
("Thought for 5 seconds"), custom-instruction context, browsing and quote displays.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from app.errors import BadImport
from app.exchange.jsoncheck import (
    at,
    check_seconds,
    duplicate_keys,
    expected,
    is_number,
    json_type,
    quoted,
)
from app.store.conversation import Conversation, Message, make_title, newest_leaf_under

_STATUS = {"in_progress": "interrupted"}
_FINISH = {"stop": "stop", "max_tokens": "length", "interrupted": "cancelled"}
_ROLES = ("user", "assistant", "system")
_LANGUAGE = re.compile(r"[\w+#.-]{1,40}\Z")  # safe as a fence's info string
_LEFT_OUT = {
    "reasoning_recap",
    "user_editable_context",
    "model_editable_context",
    "tether_browsing_display",
    "tether_quote",
    "sonic_webpage",
    "system_error",
}


def conversations_from_chatgpt(items: list[Any]) -> list[Conversation]:
    """Every conversation of a ChatGPT export list; raises BadImport at the first broken one."""
    return [convert_conversation(c, f"[{i}]") for i, c in enumerate(items)]


def conversation_title(data: Any) -> str:
    """The title to name a conversation by in a report ("" when it has none)."""
    title = data.get("title") if isinstance(data, dict) else None
    return title if isinstance(title, str) else ""


def convert_conversation(data: Any, where: str) -> Conversation:
    """One ChatGPT conversation -> Conversation; raises BadImport naming the JSON path."""
    if not isinstance(data, dict):
        raise expected(where, "a conversation (an object with a mapping)", data)
    mapping = data.get("mapping")
    if not isinstance(mapping, dict):
        raise expected(at(where, "mapping"), "an object of nodes", mapping)
    created = _seconds(data.get("create_time"), at(where, "create_time"), 0.0)
    title = _optional_str(data, "title", where) or ""
    roots = _check_tree(mapping, at(where, "mapping"))
    messages, kept = _walk(mapping, roots, created, at(where, "mapping"))
    current = data.get("current_node")
    if current is not None and not isinstance(current, str):
        raise expected(at(where, "current_node"), "a node id (a string) or null", current)
    leaf = kept.get(current) if current is not None else None
    if leaf is None and messages:
        leaf = default_leaf(messages)
    first_user = next((m.content for m in messages if m.role == "user"), "")
    return Conversation(
        id=0,
        uuid=_uuid(data, where, created, title),
        title=title or make_title(first_user),
        pinned=False,
        system_prompt="",
        params={},
        created_at=created,
        updated_at=_seconds(data.get("update_time"), at(where, "update_time"), created),
        current_leaf_id=leaf,
        deleted_at=None,
        messages=tuple(messages),
    )


def default_leaf(messages: list[Message] | tuple[Message, ...]) -> int:
    """Where a conversation without a (valid) current node opens: the newest leaf of the
    newest root, following the newest child at each branch."""
    root = max(m.id for m in messages if m.parent_id is None)
    return newest_leaf_under(messages, root)


# ---- the tree -----------------------------------------------------------------------------


def _check_tree(mapping: dict[str, Any], where: str) -> list[str]:
    """Check that the mapping is a tree; returns the roots in mapping order."""
    for key in duplicate_keys(mapping):
        raise BadImport(_node_at(where, key), "this node id appears twice in the mapping")
    listed_by: dict[str, str] = {}
    message_ids: dict[str, str] = {}
    for key, node in mapping.items():
        node_at = _node_at(where, key)
        if not isinstance(node, dict):
            raise expected(node_at, "an object (a node)", node)
        _check_parent(node, key, mapping, node_at)
        for child in _children(node, key, mapping, node_at):
            if child in listed_by:
                raise BadImport(
                    at(node_at, "children"),
                    f"{quoted(child)} is also listed as a child of {quoted(listed_by[child])}",
                )
            listed_by[child] = key
        message = node.get("message")
        msg_id = message.get("id") if isinstance(message, dict) else None
        if isinstance(msg_id, str):
            if msg_id in message_ids:
                raise BadImport(
                    at(node_at, "message") + ".id",
                    f"message id {quoted(msg_id)} is also in node {quoted(message_ids[msg_id])}",
                )
            message_ids[msg_id] = key
    for key, node in mapping.items():
        _check_links_agree(key, node.get("parent"), listed_by.get(key), _node_at(where, key))
    roots = [k for k, n in mapping.items() if n.get("parent") is None]
    _check_no_cycle(mapping, roots, where)
    return roots


def _check_parent(node: dict[str, Any], key: str, mapping: dict[str, Any], node_at: str) -> None:
    parent = node.get("parent")
    if parent is None:
        return
    if not isinstance(parent, str):
        raise expected(at(node_at, "parent"), "a node id (a string) or null", parent)
    if parent == key:
        raise BadImport(at(node_at, "parent"), f"node {quoted(key)} is its own parent")
    if parent not in mapping:
        raise BadImport(at(node_at, "parent"), f"{quoted(parent)} is not a node in the mapping")


def _children(node: dict[str, Any], key: str, mapping: dict[str, Any], node_at: str) -> list[str]:
    children = node.get("children")
    if children is None:
        return []
    if not isinstance(children, list):
        raise expected(at(node_at, "children"), "a list of node ids", children)
    for i, child in enumerate(children):
        child_at = f"{at(node_at, 'children')}[{i}]"
        if not isinstance(child, str):
            raise expected(child_at, "a node id (a string)", child)
        if child == key:
            raise BadImport(child_at, f"node {quoted(key)} is its own child")
        if child not in mapping:
            raise BadImport(child_at, f"{quoted(child)} is not a node in the mapping")
    if len(set(children)) != len(children):
        raise BadImport(at(node_at, "children"), "names a node twice")
    return children


def _check_links_agree(key: str, parent: str | None, listed_by: str | None, node_at: str) -> None:
    if parent == listed_by:
        return
    if parent is None:
        problem = f"is listed as a child of {quoted(listed_by or '')} but its parent is null"
    elif listed_by is None:
        problem = f"has parent {quoted(parent)}, whose children list does not name it"
    else:
        problem = f"has parent {quoted(parent)} but is listed as a child of {quoted(listed_by)}"
    raise BadImport(node_at, problem)


def _check_no_cycle(mapping: dict[str, Any], roots: list[str], where: str) -> None:
    reached: set[str] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        reached.add(key)
        stack.extend(mapping[key].get("children") or [])
    if len(reached) == len(mapping):
        return
    start = next(k for k in mapping if k not in reached)
    chain = [start]
    while (parent := mapping[chain[-1]]["parent"]) not in chain:
        chain.append(parent)
    cycle = chain[chain.index(parent) :] + [parent]
    raise BadImport(
        _node_at(where, parent),
        "the parent links form a cycle (" + " -> ".join(quoted(k) for k in cycle) + ")",
    )


def _walk(
    mapping: dict[str, dict[str, Any]], roots: list[str], created: float, where: str
) -> tuple[list[Message], dict[str, int | None]]:
    """Depth-first from the roots, parents before children; returns messages and node -> id
    of the nearest kept message at or above it."""
    kept: dict[str, int | None] = {}
    messages: list[Message] = []
    stack: list[tuple[str, str | None]] = [(k, None) for k in reversed(roots)]
    while stack:
        key, parent_key = stack.pop()
        node = mapping[key]
        parent_id = kept[parent_key] if parent_key is not None else None
        node_at = _node_at(where, key)
        msg = _message(node.get("message"), len(messages) + 1, parent_id, created, node_at)
        if msg is not None:
            messages.append(msg)
        kept[key] = msg.id if msg is not None else parent_id
        stack.extend((c, key) for c in reversed(node.get("children") or []))
    return messages, kept


# ---- one message --------------------------------------------------------------------------


def _message(
    data: Any, local_id: int, parent: int | None, fallback_time: float, node_at: str
) -> Message | None:
    """A visible message, or None for what a reader never saw (hidden, tool, empty)."""
    if data is None:
        return None
    msg_at = at(node_at, "message")
    if not isinstance(data, dict):
        raise expected(msg_at, "an object or null", data)
    author = data.get("author")
    if not isinstance(author, dict):
        raise expected(at(msg_at, "author"), "an object", author)
    role = author.get("role")
    if not isinstance(role, str):
        raise expected(at(msg_at, "author") + ".role", "a string", role)
    metadata = _optional(data, "metadata", dict, msg_at, "an object") or {}
    recipient = _optional_str(data, "recipient", msg_at)
    if role not in _ROLES or metadata.get("is_visually_hidden_from_conversation"):
        return None
    if recipient not in (None, "all"):
        return None  # a tool call (browser, python): not part of the visible chat
    content = data.get("content")
    if not isinstance(content, dict):
        raise expected(at(msg_at, "content"), "an object with content_type and parts", content)
    text = "\n".join(
        t
        for t in (_content_text(content, at(msg_at, "content")), _attachments(metadata, msg_at))
        if t
    )
    if not text.strip():
        return None
    created = _seconds(data.get("create_time"), at(msg_at, "create_time"), fallback_time)
    status = _optional_str(data, "status", msg_at)
    finish = _finish_type(metadata, at(msg_at, "metadata"))
    slug = _optional_str(metadata, "model_slug", at(msg_at, "metadata"))
    return Message(
        id=local_id,
        conversation_id=0,
        parent_id=parent,
        role=role,
        content=text,
        status=_STATUS.get(status or "", "complete"),
        created_at=created,
        updated_at=_seconds(data.get("update_time"), at(msg_at, "update_time"), created),
        finish_reason=_FINISH.get(finish or "") if role == "assistant" else None,
        model={"name": slug, "source": "ChatGPT export"} if role == "assistant" and slug else None,
    )


def _finish_type(metadata: dict[str, Any], where: str) -> str | None:
    """finish_details.type; a bare string ("stop") is taken as the type itself."""
    details = metadata.get("finish_details")
    if details is None or isinstance(details, str):
        return details
    if not isinstance(details, dict):
        raise expected(at(where, "finish_details"), "an object", details)
    return _optional_str(details, "type", at(where, "finish_details"))


def _content_text(content: dict[str, Any], where: str) -> str:
    kind = content.get("content_type")
    if not isinstance(kind, str):
        raise expected(at(where, "content_type"), "a string", kind)
    if kind in ("text", "multimodal_text"):
        return _parts(content, where)
    if kind in ("code", "execution_output"):
        text = _optional_str(content, "text", where)
        if text is None:
            text = _parts(content, where) if "parts" in content else ""
        if not text.strip():
            return ""
        language = (_optional_str(content, "language", where) if kind == "code" else "") or ""
        if language == "unknown" or not _LANGUAGE.match(language):
            language = ""
        return fenced(text, language)
    if kind == "thoughts":
        return _thoughts(content, where)
    if kind in _LEFT_OUT:
        return ""
    if "parts" in content:  # a newer kind of text message
        return _parts(content, where)
    return _optional_str(content, "text", where) or ""


def _parts(content: dict[str, Any], where: str) -> str:
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise expected(at(where, "parts"), "a list", parts)
    out = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            out.append(part)
        elif is_number(part):
            out.append(str(part))
        elif isinstance(part, dict):
            out.append(_asset(part, f"{at(where, 'parts')}[{i}]"))
        elif part is not None:
            raise expected(f"{at(where, 'parts')}[{i}]", "text or an object", part)
    return "\n".join(out)


def _asset(part: dict[str, Any], where: str) -> str:
    """A non-text part: its transcript or text, else a marker naming its kind."""
    kind = _optional_str(part, "content_type", where) or ""
    if kind == "audio_transcription":
        return _optional_str(part, "text", where) or ""
    if "image" in kind:
        return "[image]"
    if kind == "real_time_user_audio_video_asset_pointer":
        return "[video]" if part.get("video_container_asset_pointer") else "[audio]"
    for media in ("audio", "video"):
        if media in kind:
            return f"[{media}]"
    if "file" in kind:
        meta = part.get("metadata")
        name = part.get("name") or (meta.get("name") if isinstance(meta, dict) else None)
        return f"[file: {name}]" if isinstance(name, str) and name else "[file]"
    text = part.get("text")
    return text if isinstance(text, str) else "[attachment]"


def _attachments(metadata: dict[str, Any], msg_at: str) -> str:
    """Files uploaded with the message, except images (their pointer is in the parts)."""
    items = _optional(metadata, "attachments", list, at(msg_at, "metadata"), "a list") or []
    markers = []
    for i, item in enumerate(items):
        item_at = f"{at(msg_at, 'metadata')}.attachments[{i}]"
        if not isinstance(item, dict):
            raise expected(item_at, "an object", item)
        mime = item.get("mimeType") or item.get("mime_type")
        if isinstance(mime, str) and mime.startswith("image/"):
            continue
        name = _optional_str(item, "name", item_at)
        markers.append(f"[file: {name}]" if name else "[file]")
    return "\n".join(markers)


def _thoughts(content: dict[str, Any], where: str) -> str:
    """Reasoning as a quote: "> **Reasoning**", then each thought's summary and text."""
    thoughts = _optional(content, "thoughts", list, where, "a list") or []
    lines = ["**Reasoning**"]
    for i, thought in enumerate(thoughts):
        t_at = f"{at(where, 'thoughts')}[{i}]"
        if not isinstance(thought, dict):
            raise expected(t_at, "an object", thought)
        summary = _optional_str(thought, "summary", t_at)
        body = _optional_str(thought, "content", t_at)
        if summary or body:
            lines += ["", *([f"**{summary}**"] if summary else []), *(body or "").splitlines()]
    if len(lines) == 1:
        return ""
    return "\n".join(f"> {line}" if line else ">" for line in lines)


def fenced(text: str, language: str = "") -> str:
    """`text` as a fenced code block whose fence is longer than any backtick run inside."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip(chr(10))}\n{fence}"


def _node_at(where: str, key: str) -> str:
    """mapping["node id"]: node ids are arbitrary strings, so always in brackets."""
    return f"{where}[{quoted(key)}]"


# ---- small checked getters ----------------------------------------------------------------


def _optional(data: dict[str, Any], key: str, kind: type, where: str, what: str) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise expected(at(where, key), what, value)
    return value


def _optional_str(data: dict[str, Any], key: str, where: str) -> str | None:
    return _optional(data, key, str, where, "a string")


def _seconds(value: Any, where: str, default: float) -> float:
    if value is None:
        return default
    if not is_number(value):
        raise BadImport(where, f"expected a number of seconds, got {json_type(value)}")
    return check_seconds(value, where)


def _uuid(data: dict[str, Any], where: str, created: float, title: str) -> str:
    """ChatGPT's own id when present (so a re-import is recognised), else one derived from it."""
    for key in ("conversation_id", "id"):
        value = _optional_str(data, key, where)
        if value and value.strip():
            return value
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"chatgpt:{created}:{title}"))
