"""Import boundary: the fault cases of November 2026, ChatGPT export shapes, our format's trees,
encodings, non-finite numbers, repeated ids, progress and the `import` command."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from app.cli import main
from app.commands.chat import _ImportProgress
from app.errors import UserError
from app.exchange.export import export_conversations, export_document, to_markdown
from app.exchange.importers import import_file
from app.store.store import Store

CASES = Path(__file__).parent / "data" / "cases"
T = "2025-03-01T18:00:00.000Z"


@pytest.fixture
def store(tmp_path):
    """A store that already holds one conversation: a failed import must leave exactly it."""
    with Store.open(tmp_path / "store.sqlite3") as s:
        conv = s.create_conversation()
        s.add_message(conv, None, "user", "already here")
        yield s


def _snapshot(store: Store) -> list:
    return [
        [(m.role, m.content) for m in store.get_conversation(i).messages]
        for i in store.all_conversation_ids()
    ]


def _texts(store: Store, conv_id: int) -> list[str]:
    return [m.content for m in store.get_conversation(conv_id).current_path()]


def _refused(store: Store, path: Path, match: str, **kw) -> str:
    before = _snapshot(store)
    with pytest.raises(UserError, match=match) as err:
        import_file(store, path, **kw)
    assert str(path) in str(err.value) and "nothing was imported" in str(err.value)
    assert "\n" not in str(err.value)
    assert _snapshot(store) == before
    return str(err.value)


# ---- the cases in tests/data/cases --------------------------------------------------------


def test_one_bad_chatgpt_conversation_is_skipped_and_named(store):
    """c09: the 1st imports; the 2nd (mapping: null) is reported by index, title and reason."""
    result = import_file(store, CASES / "c09_chatgpt_one_bad.json")
    assert len(result.imported_ids) == 1
    assert store.get_conversation(result.imported_ids[0]).title == "Good one"
    assert _texts(store, result.imported_ids[0]) == ["hello there", "hi, how can I help?"]
    assert [str(b) for b in result.broken] == [
        '[1] "Broken one": mapping: expected an object of nodes, got null'
    ]
    assert result.summary("c09.json") == (
        "imported 1 conversation from c09.json (ChatGPT export); "
        'skipped 1: [1] "Broken one": mapping: expected an object of nodes, got null'
    )


def test_strict_import_of_one_bad_chatgpt_conversation_imports_nothing(store):
    """c09 with strict=True: the broken conversation rejects the whole file."""
    message = _refused(store, CASES / "c09_chatgpt_one_bad.json", r"\[1\]\.mapping", strict=True)
    assert "expected an object of nodes, got null" in message and "without --strict" in message


def test_split_export_zip_imports_every_shard(store):
    """c16: conversations-000.json and -001.json (plus user.json) in one zip: both import."""
    result = import_file(store, CASES / "c16_split_export.zip")
    titles = [store.get_conversation(i).title for i in result.imported_ids]
    assert titles == ["Good one", "Second part chat"] and result.broken == ()
    assert _texts(store, result.imported_ids[1]) == ["hello there", "hi, how can I help?"]


def test_split_export_folder_imports_every_shard(store, tmp_path):
    """The unpacked split export (a folder, shards in a subfolder) imports the same."""
    folder = tmp_path / "export"
    with zipfile.ZipFile(CASES / "c16_split_export.zip") as z:
        z.extractall(folder / "inner")
    result = import_file(store, folder)
    titles = [store.get_conversation(i).title for i in result.imported_ids]
    assert titles == ["Good one", "Second part chat"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("c_author_str", r'\[0\] "cg c-as": mapping\["a"\]\.message\.author: expected an object'),
        ("c_metadata_list", r'mapping\["a"\]\.message\.metadata: expected an object, got a list'),
        ("c_current_list", r"current_node: expected a node id \(a string\) or null, got a list"),
        ("c_self_parent", r'mapping\["b"\]\.parent: node "b" is its own parent'),
        ("c_missing_parent", r'mapping\["a"\]\.parent: "ghost" is not a node in the mapping'),
    ],
)
def test_broken_chatgpt_cases_exit_naming_the_path(store, name, problem):
    """Wrong JSON types and broken trees in a ChatGPT file: one line naming the JSON path."""
    _refused(store, CASES / f"{name}.json", problem)


@pytest.mark.parametrize(
    ("name", "texts", "finish"),
    [
        ("c_finish_str", ["x"], "stop"),  # finish_details "stop" taken as its type
        ("c_null_parts", ["hi", "visible"], None),  # a null part is nothing
        ("c_parts_int", ["42\nx"], None),  # a number part is its text, not [attachment]
    ],
)
def test_chatgpt_cases_with_clear_meaning_import_the_text(store, name, texts, finish):
    """Where the meaning is clear the text is kept as written."""
    result = import_file(store, CASES / f"{name}.json")
    (conv_id,) = result.imported_ids
    assert _texts(store, conv_id) == texts
    assert store.get_conversation(conv_id).current_path()[-1].finish_reason == finish


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("g_self_parent", r"conversations\[0\]\.messages\[0\]\.parent_id: message 1 is its own"),
        ("g_latin1", r"it is not UTF-8 text \(byte 0xe9 .*Latin-1.*save it as UTF-8"),
        ("g_utf16", r"it is UTF-16 text, not UTF-8; .*save it as UTF-8"),
        ("g_truncated", r"it is not valid JSON: .*\(line 1, column \d+\); is the file complete"),
        ("g_version_str", r"version: expected a positive whole number like 1, got '1'"),
        ("g_title_obj", r"conversations\[0\]\.title: expected a string, got an object; correct"),
        ("g_current_str", r"conversations\[0\]\.current_message_id: expected a message id"),
        ("g_neg_temp", r"conversations\[0\]\.settings: temperature"),
    ],
)
def test_broken_files_of_our_format_store_nothing(store, name, problem):
    """Our format: wrong encoding, truncated, wrong types, out-of-range settings: exit with
    the path and the fix; nothing stored."""
    _refused(store, CASES / f"{name}.json", problem)


# ---- our format ---------------------------------------------------------------------------


def _doc(*conversations: dict) -> dict:
    return {
        "format": "grok-desktop.conversations",
        "version": 1,
        "conversations": list(conversations),
    }


def _conv(messages: list[dict], **extra) -> dict:
    conv = {"id": "c1", "title": "t", "created_at": T, "updated_at": T, "messages": messages}
    return {**conv, **extra}


def _msg(id: int, parent: int | None, content: str, role: str = "user") -> dict:
    return {"id": id, "parent_id": parent, "role": role, "content": content,
            "status": "complete", "created_at": T}  # fmt: skip


def _write(tmp_path: Path, doc: object, name: str = "in.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_a_utf8_bom_is_accepted(store, tmp_path):
    """Windows editors add a BOM: the file imports as if it had none."""
    path = tmp_path / "bom.json"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(_doc(_conv([_msg(1, None, "caf\u00e9")]))).encode()
    )
    (conv_id,) = import_file(store, path).imported_ids
    assert _texts(store, conv_id) == ["café"]


def test_lone_surrogates_are_replaced_and_reported(store, tmp_path):
    """ "a\\ud800b" cannot be stored as UTF-8: it becomes U+FFFD and the result says where."""
    path = _write(tmp_path, _doc(_conv([_msg(1, None, "a\ud800b \ud83d\ude00")])))
    assert "\\ud800" in path.read_text()
    result = import_file(store, path)
    assert _texts(store, result.imported_ids[0]) == ["a\ufffdb 😀"]
    assert result.notes == (
        (
            "1 invalid character (lone UTF-16 surrogate escapes such as \\ud800) replaced with "
            "U+FFFD, first at conversations[0].messages[0].content"
        ),
    )
    assert "note: 1 invalid character" in result.summary("in.json")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('"settings": {"temperature": NaN}', r"conversations\[0\]\.settings\.temperature: nan"),
        ('"settings": {"top_p": Infinity}', r"settings\.top_p: inf is not a number JSON allows"),
        ('"settings": {"min_p": -1e999}', r"settings\.min_p: -inf"),
    ],
)
def test_non_finite_numbers_are_refused_with_their_path(store, tmp_path, text, where):
    """NaN and Infinity (and 1e999, which parses as infinity) never reach the store."""
    body = json.dumps(_doc(_conv([_msg(1, None, "hi")]))).replace(
        '"messages"', text + ', "messages"'
    )
    _refused(store, _write(tmp_path, body), where)


def test_non_finite_stats_are_refused_too(store, tmp_path):
    """Anywhere in the document, not only in settings."""
    msg = {**_msg(1, None, "hi", "assistant"), "stats": {"tokens_per_s": 1}}
    body = json.dumps(_doc(_conv([msg]))).replace('"tokens_per_s": 1', '"tokens_per_s": NaN')
    _refused(store, _write(tmp_path, body), r"messages\[0\]\.stats\.tokens_per_s: nan")


def test_missing_current_message_defaults_to_the_newest_leaf(store, tmp_path):
    """Without current_message_id the conversation opens at its newest leaf, so the readable
    exports show its messages."""
    messages = [_msg(1, None, "q"), _msg(2, 1, "old", "assistant"), _msg(3, 1, "new", "assistant")]
    (conv_id,) = import_file(store, _write(tmp_path, _doc(_conv(messages)))).imported_ids
    conv = store.get_conversation(conv_id)
    assert [m.content for m in conv.current_path()] == ["q", "new"]
    assert "new" in to_markdown(conv) and "q" in to_markdown(conv)


def test_messages_listed_before_their_parent_are_stored_parents_first(store, tmp_path):
    """Any order is accepted; the tree is the same."""
    messages = [_msg(3, 2, "c"), _msg(2, 1, "b", "assistant"), _msg(1, None, "a")]
    doc = _doc(_conv(messages, current_message_id=3))
    (conv_id,) = import_file(store, _write(tmp_path, doc)).imported_ids
    assert _texts(store, conv_id) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([_msg(1, 2, "a"), _msg(2, 1, "b")], r"cycle \(messages (1 -> 2 -> 1|2 -> 1 -> 2)\)"),
        (
            [_msg(1, None, "r"), _msg(2, 4, "a"), _msg(3, 2, "b"), _msg(4, 3, "c")],
            r"messages\[\d\]\.parent_id: the parent links form a cycle \(messages \d -> \d -> \d",
        ),
        ([_msg(1, None, "a"), _msg(1, None, "b")], r"messages\[1\]\.id: 1 is also the id of"),
        ([_msg(1, 9, "a")], r"messages\[0\]\.parent_id: 9 is not the id of a message"),
    ],
)
def test_broken_trees_of_our_format_are_named(store, tmp_path, messages, problem):
    """Cycles of any length, duplicate ids and dangling parents: refused naming the message."""
    _refused(store, _write(tmp_path, _doc(_conv(messages))), problem)


def test_the_same_conversation_id_twice_imports_both(store, tmp_path):
    """No text is dropped: the second copy gets an id derived from the first, the same on
    every import, so importing the file again adds nothing."""
    first = _conv([_msg(1, None, "first text")])
    second = _conv([_msg(1, None, "second text")], title="t2")
    path = _write(tmp_path, _doc(first, second))
    result = import_file(store, path)
    assert [_texts(store, i) for i in result.imported_ids] == [["first text"], ["second text"]]
    assert result.skipped == 0 and "'c1' is used by more than one conversation" in result.notes[0]
    again = import_file(store, path)
    assert again.imported_ids == () and again.skipped == 2


def test_json_export_after_import_is_valid_json(store, tmp_path):
    """The JSON export never holds bare NaN: what comes in is finite, and the writer refuses
    non-finite values (allow_nan=False)."""
    msg = {**_msg(1, None, "hi", "assistant"), "stats": {"tokens_per_s": 12.5}}
    (conv_id,) = import_file(store, _write(tmp_path, _doc(_conv([msg])))).imported_ids
    out = tmp_path / "out.json"
    export_conversations(store, [conv_id], "json", out)
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the export"))


# ---- ChatGPT shapes -----------------------------------------------------------------------


def _chatgpt(*contents: dict, role: str = "user", metadata: dict | None = None) -> list:
    """One conversation: a root, then one message per content, each the child of the last."""
    mapping = {"root": {"id": "root", "message": None, "parent": None, "children": []}}
    parent = "root"
    for i, content in enumerate(contents):
        key = f"m{i}"
        mapping[parent]["children"].append(key)
        mapping[key] = {
            "id": key,
            "parent": parent,
            "children": [],
            "message": {
                "id": key,
                "author": {"role": role},
                "content": content,
                "metadata": metadata or {},
                "recipient": "all",
                "create_time": 1700000000.0 + i,
            },
        }
        parent = key
    return [{"title": "shapes", "create_time": 1700000000.0, "mapping": mapping,
             "conversation_id": "shapes-1", "current_node": parent}]  # fmt: skip


def _import_chatgpt(store: Store, tmp_path: Path, data: list) -> list[str]:
    (conv_id,) = import_file(store, _write(tmp_path, data)).imported_ids
    return _texts(store, conv_id)


def test_voice_transcripts_become_text_and_pointers_markers(store, tmp_path):
    """Voice mode: the transcript is the text, the audio a marker; images, video and files
    are named by their kind."""
    parts = [
        {"content_type": "audio_transcription", "text": "Book a table for two", "direction": "in"},
        {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://x", "format": "wav"},
        {"content_type": "image_asset_pointer", "asset_pointer": "file-service://y"},
        {"content_type": "real_time_user_audio_video_asset_pointer",
         "video_container_asset_pointer": {"asset_pointer": "sediment://v"}},
        {"content_type": "file_asset_pointer", "name": "plan.pdf"},
        {"content_type": "something_new_pointer"},
    ]  # fmt: skip
    texts = _import_chatgpt(
        store, tmp_path, _chatgpt({"content_type": "multimodal_text", "parts": parts})
    )
    assert texts == [
        "Book a table for two\n[audio]\n[image]\n[video]\n[file: plan.pdf]\n[attachment]"
    ]


def test_uploaded_files_in_metadata_become_markers(store, tmp_path):
    """Non-image attachments are named; images already have their [image] part."""
    metadata = {"attachments": [{"name": "notes.txt", "mimeType": "text/plain"},
                                {"name": "cat.png", "mimeType": "image/png"}]}  # fmt: skip
    data = _chatgpt({"content_type": "text", "parts": ["summarise this"]}, metadata=metadata)
    assert _import_chatgpt(store, tmp_path, data) == ["summarise this\n[file: notes.txt]"]


def test_code_output_and_reasoning_are_kept(store, tmp_path):
    """code and execution_output become fenced blocks; thoughts a quoted Reasoning block;
    reasoning_recap ("Thought for 3 seconds") and empty code are left out."""
    data = _chatgpt(
        {"content_type": "thoughts",
         "thoughts": [{"summary": "Planning", "content": "Use a loop.\nThen print."}]},
        {"content_type": "reasoning_recap", "content": "Thought for 3 seconds"},
        {"content_type": "code", "language": "python", "text": "for i in range(3):\n    print(i)"},
        {"content_type": "execution_output", "text": "0\n1\n```\n2"},
        {"content_type": "code", "language": "unknown", "text": "ls"},
        {"content_type": "code", "language": "python", "text": "  \n"},
        {"content_type": "code", "language": "sh```\nrm", "text": "pwd"},
        role="assistant",
    )  # fmt: skip
    assert _import_chatgpt(store, tmp_path, data) == [
        "> **Reasoning**\n>\n> **Planning**\n> Use a loop.\n> Then print.",
        "```python\nfor i in range(3):\n    print(i)\n```",
        "````\n0\n1\n```\n2\n````",
        "```\nls\n```",
        "```\npwd\n```",  # an empty block is left out; a language that is not a name too
    ]


def _two_nodes(changes: dict | None = None) -> list:
    data = _chatgpt(
        {"content_type": "text", "parts": ["a"]}, {"content_type": "text", "parts": ["b"]}
    )
    for (key, field), value in (changes or {}).items():
        data[0]["mapping"][key][field] = value
    return data


_CYCLE = {("m0", "parent"): "m1", ("m1", "children"): ["m0"], ("root", "children"): []}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (_CYCLE, r'cycle \("m[01]" -> "m[01]" -> "m[01]"\)'),
        ({("m1", "parent"): "root"}, r'\["m1"\]: has parent "root" but is listed as a child'),
        ({("root", "children"): ["m0", "m1"]}, r'\["m0"\]\.children: "m1" is also listed as a'),
        ({("m0", "children"): [{"id": "m1"}]}, r'\["m0"\]\.children\[0\]: expected a node id'),
        ({("m1", "message"): ["x"]}, r'mapping\["m1"\]\.message: expected an object or null'),
    ],
)
def test_broken_chatgpt_trees_are_named(store, tmp_path, changes, problem):
    """Cycles, links that disagree, objects where ids belong: refused naming the node."""
    _refused(store, _write(tmp_path, _two_nodes(changes)), problem)


def test_repeated_node_and_message_ids_are_named(store, tmp_path):
    """A mapping that names a node twice (JSON keeps the last silently) or two nodes holding
    the same message id."""
    text = json.dumps(_two_nodes()).replace('"mapping": {', '"mapping": {"m1": {}, ', 1)
    _refused(store, _write(tmp_path, text), r'mapping\["m1"\]: this node id appears twice')
    data = _two_nodes()
    data[0]["mapping"]["m1"]["message"]["id"] = "m0"
    _refused(store, _write(tmp_path, data), r'message id "m0" is also in node "m0"')


def test_several_broken_conversations_are_each_listed(store, tmp_path):
    """The summary lists each skipped conversation on its own line."""
    good = _two_nodes()[0]
    items = [good, {"title": "Trip plan", "mapping": []}, {"title": 7, "mapping": None}]
    result = import_file(store, _write(tmp_path, items))
    assert result.summary("x.json").splitlines() == [
        "imported 1 conversation from x.json (ChatGPT export); skipped 2 that cannot be read:",
        '  [1] "Trip plan": mapping: expected an object of nodes, got a list',
        "  [2]: mapping: expected an object of nodes, got null",
    ]


# ---- progress and the command -------------------------------------------------------------


def test_progress_is_reported_per_conversation(store, tmp_path):
    """The callback sees (done, total) rising to (total, total)."""
    items = [{**_two_nodes()[0], "conversation_id": f"id-{i}"} for i in range(5)]
    calls: list[tuple[int, int]] = []
    result = import_file(store, _write(tmp_path, items), progress=lambda d, t: calls.append((d, t)))
    assert len(result.imported_ids) == 5 and calls == [(i, 5) for i in range(1, 6)]


def test_terminal_progress_shows_only_for_many_conversations():
    """A few conversations print nothing; many print a line that is cleared at the end."""
    out = io.StringIO()
    bar = _ImportProgress(out)
    bar(1, 3)
    assert out.getvalue() == ""
    bar(10, 500)
    bar(500, 500)
    bar.clear()
    assert "reading conversations 500/500" in out.getvalue() and out.getvalue().endswith("\033[K")


def test_import_command_reports_skips_and_strict_exits_2(tmp_path, monkeypatch, capsys):
    """The CLI prints the summary; --strict turns a broken conversation into exit 2."""
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
    case = str(CASES / "c09_chatgpt_one_bad.json")
    assert main(["import", "--strict", case]) == 2
    assert "[1].mapping: expected an object of nodes" in capsys.readouterr().err
    assert main(["import", case]) == 0
    assert capsys.readouterr().out == (
        f"imported 1 conversation from {case} (ChatGPT export); "
        'skipped 1: [1] "Broken one": mapping: expected an object of nodes, got null\n'
    )
    assert main(["import", str(CASES / "g_utf16.json")]) == 2
    assert "UTF-16" in capsys.readouterr().err


def test_round_trip_through_export_keeps_imported_chatgpt_text(store, tmp_path):
    """ChatGPT -> store -> our JSON -> another store: the same messages."""
    (conv_id,) = import_file(store, CASES / "c_parts_int.json").imported_ids
    doc = export_document([store.get_conversation(conv_id)])
    with Store.open(tmp_path / "other.sqlite3") as other:
        (again,) = import_file(other, _write(tmp_path, doc, "ours.json")).imported_ids
        assert _texts(other, again) == ["42\nx"]


def test_a_folder_with_conversations_json_imports_it(store, tmp_path):
    """The unpacked older export: conversations.json beside chat.html."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "chat.html").write_text("<html></html>")
    (folder / "conversations.json").write_bytes((CASES / "c_parts_int.json").read_bytes())
    (conv_id,) = import_file(store, folder).imported_ids
    assert _texts(store, conv_id) == ["42\nx"]


def test_an_archive_without_conversations_is_refused(store, tmp_path):
    """A zip that is not a ChatGPT export says what it lacks."""
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("cat.jpg", b"\xff\xd8")
    _refused(store, archive, "it holds no conversations.json or conversations-000.json")


def test_a_broken_shard_is_named(store, tmp_path):
    """A truncated shard rejects the import, naming the shard inside the zip."""
    archive = tmp_path / "split.zip"
    with zipfile.ZipFile(CASES / "c16_split_export.zip") as src, zipfile.ZipFile(archive, "w") as z:
        for name in src.namelist():
            data = src.read(name)
            z.writestr(name, data[:-20] if name == "conversations-001.json" else data)
    _refused(store, archive, r"conversations-001\.json: it is not valid JSON")


def test_lone_surrogates_in_a_chatgpt_export_are_replaced(store, tmp_path):
    """Cut-off emoji (half a surrogate pair) in ChatGPT text: U+FFFD, reported."""
    data = _chatgpt({"content_type": "text", "parts": ["smile \ud83d"]})
    path = _write(tmp_path, data)  # json.dumps writes the escape \ud83d
    result = import_file(store, path)
    assert _texts(store, result.imported_ids[0]) == ["smile \ufffd"]
    assert result.notes[0].endswith("first at [0].mapping.m0.message.content.parts[0]")
