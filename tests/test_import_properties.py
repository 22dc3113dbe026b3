"""Property-based tests of the import boundary (hypothesis), both formats.

(a) Valid documents (trees with branches, any Unicode text including astral characters) import,
    export to JSON and import again exactly.
(b) Mutated documents (keys deleted, types swapped, NaN, null, lists for objects, cycles,
    repeated ids, truncated or re-encoded bytes) end in success or a clean UserError, never
    another exception; after a failure the store holds exactly what it held before, and after
    a success everything stored can be exported and read again.

`outcome_*` return a word instead of asserting, so a script can count outcomes.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import UserError
from app.exchange.export import export_document, to_markdown, to_text
from app.exchange.importers import import_file, read_import_file
from app.exchange.jsoncheck import MAX_SECONDS
from app.store.conversation import iso_from_ms
from app.store.store import Store

EXAMPLES = 200
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_ids = itertools.count()

# Any text but lone surrogates (which UTF-8 cannot hold); astral characters, joiners, RTL and
# Markdown marks made likely by a few fixed strings.
TRICKY = ["😀 👨\u200d👩\u200d👧 𝄞 𠜎", "שלום \u202eabc", "```py\nx\n```", "> q\r\n# h", "\ufeff"]
TEXT = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(TRICKY)
TIME_MS = st.integers(0, int(MAX_SECONDS * 1000) - 1)


# ---- valid documents: our format ----------------------------------------------------------

SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(0, 200),
        "min_p": st.floats(0, 0.99),
        "repetition_penalty": st.floats(0.5, 2),
        "max_tokens": st.integers(1, 8192),
        "seed": st.none() | st.integers(0, 2**63 - 1),
    },
)
MODEL = st.fixed_dictionaries(
    {"name": TEXT, "folder": TEXT, "config_hash": st.text("0123456789abcdef", min_size=16,
     max_size=16), "quantization": st.sampled_from(["bf16", "int8", "int4"]),
     "device": st.sampled_from(["cuda", "cpu"]), "context_length": st.integers(1, 2**17),
     "is_demo": st.booleans()}
)  # fmt: skip
STATS = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6),
     "ttft_s": st.floats(0, 100), "tokens_per_s": st.floats(0, 1000), "total_s": st.floats(0, 1e4)}
)  # fmt: skip


@st.composite
def our_message(draw: st.DrawFn, local_id: int) -> dict[str, Any]:
    created = draw(TIME_MS)
    msg: dict[str, Any] = {
        "id": local_id,
        "parent_id": draw(st.none() | st.integers(1, local_id - 1)) if local_id > 1 else None,
        "role": draw(st.sampled_from(["user", "assistant", "system"])),
        "content": draw(TEXT),
        "status": draw(st.sampled_from(["complete", "interrupted", "error"])),
        "created_at": iso_from_ms(created),
        "updated_at": iso_from_ms(draw(st.integers(created, int(MAX_SECONDS * 1000) - 1))),
    }
    optional = {
        "finish_reason": st.sampled_from(["stop", "length", "cancelled"]),
        "model": MODEL,
        "settings": SETTINGS,
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stats": STATS,
        "error": TEXT,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            msg[key] = draw(strategy)
    return msg


@st.composite
def our_conversation(draw: st.DrawFn, max_messages: int = 8) -> dict[str, Any]:
    n = draw(st.integers(0, max_messages))
    messages = [draw(our_message(i)) for i in range(1, n + 1)]
    conv: dict[str, Any] = {
        "id": f"prop-{next(_ids)}-{draw(TEXT)}",
        "title": draw(TEXT),
        "pinned": draw(st.booleans()),
        "system_prompt": draw(TEXT),
        "settings": draw(SETTINGS),
        "created_at": iso_from_ms(draw(TIME_MS)),
        "updated_at": iso_from_ms(draw(TIME_MS)),
        "current_message_id": draw(st.sampled_from(range(1, n + 1))) if n else None,
        "messages": messages,
    }
    if n and draw(st.booleans()):
        del conv["current_message_id"]  # opens at the newest leaf
    if draw(st.booleans()):
        conv["deleted_at"] = iso_from_ms(draw(TIME_MS))
    return conv


@st.composite
def our_document(draw: st.DrawFn, max_conversations: int = 3, max_messages: int = 8) -> dict:
    conversations = st.lists(our_conversation(max_messages), min_size=1, max_size=max_conversations)
    return {
        "format": "grok-desktop.conversations",
        "version": 1,
        "conversations": draw(conversations),
    }


# ---- valid documents: ChatGPT -------------------------------------------------------------

KINDS = ("user", "assistant", "system", "hidden", "tool_call", "tool", "null", "voice", "image",
         "code")  # fmt: skip


def _content(kind: str, text: str) -> tuple[dict[str, Any], str, str]:
    """(message, its expected text or "" when left out, role) for one kind of node."""
    if kind == "voice":
        parts = [
            {"content_type": "audio_transcription", "text": text},
            {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://a"},
        ]
        return {"content_type": "multimodal_text", "parts": parts}, f"{text}\n[audio]", "user"
    if kind == "image":
        parts = [text, {"content_type": "image_asset_pointer", "asset_pointer": "file-service://i"}]
        return {"content_type": "multimodal_text", "parts": parts}, f"{text}\n[image]", "user"
    if kind == "code":
        body = text.replace("`", "'")  # no backticks inside: the fence is three
        return (
            {"content_type": "code", "language": "python", "text": body},
            f"```python\n{body.rstrip(chr(10))}\n```" if body.strip() else "",
            "assistant",
        )
    role = {"hidden": "system", "tool_call": "assistant", "tool": "tool"}.get(kind, kind)
    shown = kind in ("user", "assistant", "system")
    return {"content_type": "text", "parts": [text]}, text if shown else "", role


@st.composite
def chatgpt_conversation(
    draw: st.DrawFn, max_nodes: int = 8
) -> tuple[dict[str, Any], list[tuple[str, str | None]]]:
    """A conversation and the (text, parent text) pairs an import must give, in tree order."""
    keys = ["root"]
    nodes: dict[str, dict[str, Any]] = {"root": {"id": "root", "message": None, "parent": None,
                                                 "children": []}}  # fmt: skip
    expected_text: dict[str, str] = {"root": ""}
    for i in range(draw(st.integers(1, max_nodes))):
        key = f"{draw(TEXT)}#{i}"
        parent = draw(st.sampled_from(keys))
        kind = draw(st.sampled_from(KINDS))
        text = draw(TEXT)
        content, expected, role = _content(kind, text)
        message = None
        if kind != "null":
            message = {
                "id": key,
                "author": {"role": role, "name": None, "metadata": {}},
                "create_time": draw(st.none() | st.floats(0, MAX_SECONDS - 1)),
                "content": content,
                "status": "finished_successfully",
                "metadata": {"is_visually_hidden_from_conversation": True}
                if kind == "hidden"
                else {"model_slug": "gpt-4o"},
                "recipient": "python" if kind == "tool_call" else "all",
            }
        nodes[key] = {"id": key, "message": message, "parent": parent, "children": []}
        nodes[parent]["children"].append(key)
        keys.append(key)
        expected_text[key] = expected if expected.strip() else ""
    conv = {
        "title": draw(TEXT),
        "create_time": draw(st.floats(0, MAX_SECONDS - 1)),
        "update_time": None,
        "mapping": nodes,
        "current_node": draw(st.sampled_from(keys) | st.none()),
        "conversation_id": f"gpt-{next(_ids)}",
    }
    return conv, _tree_order(nodes, expected_text)


def _tree_order(nodes: dict[str, Any], text: dict[str, str]) -> list[tuple[str, str | None]]:
    """The reference: kept nodes in depth-first order with their nearest kept ancestor."""
    out: list[tuple[str, str | None]] = []

    def visit(key: str, kept_parent: str | None) -> None:
        here = kept_parent
        if text[key]:
            out.append((text[key], kept_parent))
            here = text[key]
        for child in nodes[key]["children"]:
            visit(child, here)

    visit("root", None)
    return out


CHATGPT = st.lists(chatgpt_conversation(), min_size=1, max_size=3)


# ---- outcomes -----------------------------------------------------------------------------


def _export(store: Store, ids: tuple[int, ...]) -> list[dict[str, Any]]:
    return export_document([store.get_conversation(i) for i in ids])["conversations"]


def _write(folder: Path, data: object) -> Path:
    path = folder / "doc.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def outcome_round_trip_ours(doc: dict[str, Any], stores: tuple[Store, Store], folder: Path) -> str:
    """ "ok" when import -> export -> import -> export gives the document back exactly."""
    first = import_file(stores[0], _write(folder, doc))
    exported = _export(stores[0], first.imported_ids)
    for conv, want in zip(exported, doc["conversations"]):
        if "current_message_id" not in want:
            leaf = conv["current_message_id"]
            if any(m["parent_id"] == leaf for m in conv["messages"]):
                return "lost: the default current message is not a leaf"
            want = {**want, "current_message_id": leaf}
        if conv != want:
            return "lost: the first export differs from the document"
    second = import_file(stores[1], _write(folder, {**doc, "conversations": exported}))
    return "ok" if _export(stores[1], second.imported_ids) == exported else "lost: second export"


def outcome_round_trip_chatgpt(
    items: list[tuple[dict[str, Any], list[tuple[str, str | None]]]],
    stores: tuple[Store, Store],
    folder: Path,
) -> str:
    """ "ok" when the visible text and its tree arrive, and our JSON export round-trips."""
    result = import_file(stores[0], _write(folder, [conv for conv, _ in items]))
    if result.broken or len(result.imported_ids) != len(items):
        return "lost: a valid conversation was skipped"
    for conv_id, (_, want) in zip(result.imported_ids, items):
        conv = stores[0].get_conversation(conv_id)
        by_id = {m.id: m.content for m in conv.messages}
        got = [(m.content, by_id.get(m.parent_id) if m.parent_id else None) for m in conv.messages]
        if got != want:
            return "lost: the text or tree differs"
    exported = _export(stores[0], result.imported_ids)
    doc = {"format": "grok-desktop.conversations", "version": 1, "conversations": exported}
    second = import_file(stores[1], _write(folder, doc))
    return "ok" if _export(stores[1], second.imported_ids) == exported else "lost: second export"


def snapshot(path: Path) -> list[tuple]:
    """Every stored row, read through a separate connection (what is committed)."""
    with sqlite3.connect(path) as conn:
        return [
            *conn.execute("SELECT * FROM conversations ORDER BY id"),
            *conn.execute("SELECT * FROM messages ORDER BY id"),
        ]


def outcome_mutated(raw: bytes, store: Store, folder: Path) -> str:
    """ "ok" (imported; all of it exports and reads back), "clean" (one-line UserError, store
    unchanged), "lost: ..." (store changed by a failed import) or "traceback: ..."."""
    path = folder / "mutated.json"
    path.write_bytes(raw)
    before = snapshot(store.path)
    try:
        result = import_file(store, path)
    except UserError as exc:
        if "\n" in str(exc) or str(path) not in str(exc):
            return f"traceback: not one line naming the file: {exc}"
        return "clean" if snapshot(store.path) == before else "lost: store changed on failure"
    except Exception as exc:  # noqa: BLE001 - the property: nothing else escapes
        return f"traceback: {type(exc).__name__}: {exc}"
    try:
        for conv_id in result.imported_ids:
            conv = store.get_conversation(conv_id)
            to_markdown(conv), to_text(conv)
        text = json.dumps(export_document([store.get_conversation(i) for i in result.imported_ids]),
                          allow_nan=False)  # fmt: skip
        again = folder / "again.json"
        again.write_text(text, encoding="utf-8")
        read_import_file(again)  # what was stored reads back without a complaint
    except Exception as exc:  # noqa: BLE001
        return f"traceback: stored data breaks export: {type(exc).__name__}: {exc}"
    return "ok"


# ---- mutations ----------------------------------------------------------------------------

WEIRD = [None, True, False, 0, -1, 2**70, 1.5, math.nan, math.inf, -math.inf, "", "x",
         "a\ud800b", "2025-13-45T99:00:00Z", [], [1, "x"], {}, {"a": None}]  # fmt: skip


def _locations(value: Any, path: tuple = ()) -> list[tuple]:
    out = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        out.append((*path, key))
        out += _locations(child, (*path, key))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy, structural: Any) -> bytes:
    """A valid document damaged by 1-4 edits, then perhaps by byte-level damage."""
    doc = copy.deepcopy(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        places = _locations(doc)
        if not places:
            break
        path = draw(st.sampled_from(places))
        holder, key = _get(doc, path[:-1]), path[-1]
        action = draw(st.sampled_from(["delete", "weird", "copy", "duplicate", "structural"]))
        if action == "delete":
            del holder[key]
        elif action == "weird":
            holder[key] = copy.deepcopy(draw(st.sampled_from(WEIRD)))
        elif action == "copy":  # a value from elsewhere: repeated ids, wrong links, wrong types
            holder[key] = copy.deepcopy(_get(doc, draw(st.sampled_from(places))))
        elif action == "duplicate" and isinstance(holder, list):
            holder.append(copy.deepcopy(holder[key]))
        else:
            structural(draw, doc)
    # A lone surrogate written raw (ensure_ascii=False) gives bytes that are not UTF-8.
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "truncate", "bom", "utf16", "latin1", "flip"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif damage == "utf16":
        raw = raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    elif damage == "latin1":
        raw = raw.decode("utf-8", "surrogatepass").encode("latin-1", errors="replace")
    elif damage == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    return raw


def _relink_ours(draw: st.DrawFn, doc: Any) -> None:
    """Point a message's parent at another message (or itself): cycles, self-parents."""
    convs = doc.get("conversations")
    if not isinstance(convs, list):
        return
    convs = [c for c in convs if isinstance(c, dict)]
    messages = [m for c in convs if isinstance(c.get("messages"), list) for m in c["messages"]]
    messages = [m for m in messages if isinstance(m, dict)]
    if messages:
        child, parent = draw(st.sampled_from(messages)), draw(st.sampled_from(messages))
        child["parent_id"] = parent.get("id")


def _relink_chatgpt(draw: st.DrawFn, doc: Any) -> None:
    """Move a node under another node (perhaps its own descendant: a cycle), keeping the
    children lists in step, or break the two apart."""
    convs = [c for c in doc if isinstance(c, dict) and isinstance(c.get("mapping"), dict)]
    if not convs:
        return
    mapping = draw(st.sampled_from(convs))["mapping"]
    nodes = [k for k, n in mapping.items() if isinstance(n, dict)]
    if not nodes:
        return
    key, new_parent = draw(st.sampled_from(nodes)), draw(st.sampled_from(nodes))
    old = mapping[key].get("parent")
    if draw(st.booleans()) and isinstance(old, str) and isinstance(mapping.get(old), dict):
        children = mapping[old].get("children")
        if isinstance(children, list) and key in children:
            children.remove(key)
        children = mapping[new_parent].setdefault("children", [])
        if isinstance(children, list):
            children.append(key)
    mapping[key]["parent"] = new_parent


CHATGPT_DOCS = st.lists(chatgpt_conversation(5), min_size=1, max_size=2).map(
    lambda items: [conv for conv, _ in items]
)


# ---- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("props")
    with Store.open(folder / "a.sqlite3") as a, Store.open(folder / "b.sqlite3") as b:
        conv = a.create_conversation()
        a.add_message(conv, None, "user", "held before every import")
        yield a, b, folder


@PROPERTY
@given(doc=our_document())
def test_valid_documents_of_our_format_round_trip(stores, doc):
    """import -> export -> import -> export gives the document back (current message
    defaulting to a leaf where the document has none)."""
    a, b, folder = stores
    assert outcome_round_trip_ours(doc, (a, b), folder) == "ok"


@PROPERTY
@given(items=CHATGPT)
def test_valid_chatgpt_exports_keep_text_and_tree_and_round_trip(stores, items):
    """Every visible message arrives with its nearest visible ancestor as parent; the JSON
    export of the result round-trips."""
    a, b, folder = stores
    assert outcome_round_trip_chatgpt(items, (a, b), folder) == "ok"


@PROPERTY
@given(raw=mutated(our_document(2, 5), _relink_ours))
def test_mutated_documents_of_our_format_fail_cleanly(stores, raw):
    """Success or one clean UserError; a failure leaves the store exactly as it was."""
    a, _, folder = stores
    assert outcome_mutated(raw, a, folder) in ("ok", "clean")


@PROPERTY
@given(raw=mutated(CHATGPT_DOCS, _relink_chatgpt))
def test_mutated_chatgpt_exports_fail_cleanly(stores, raw):
    """The same for ChatGPT exports (broken conversations skipped or the file refused)."""
    a, _, folder = stores
    assert outcome_mutated(raw, a, folder) in ("ok", "clean")
