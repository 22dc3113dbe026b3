"""Deleting a message with its later turns (and undoing it), forking a branch into a new
conversation, per-conversation settings over the app's, and export/import of those settings."""

from __future__ import annotations

from app.messages import GenerationParams
from app.store.store import Store


def _chat(store: Store) -> tuple[int, list[int]]:
    conv = store.create_conversation(system_prompt="be kind",
                                     params={"temperature": 0.2, "context_policy": "middle"})
    ids, parent = [], None
    for i, role in enumerate(["user", "assistant", "user", "assistant"]):
        parent = store.add_message(conv, parent, role, f"m{i}")
        ids.append(parent)
    return conv, ids


def test_delete_message_takes_later_turns_and_undo_brings_them_back(tmp_path):
    with Store.open(tmp_path / "db.sqlite") as store:
        conv, ids = _chat(store)
        deleted = store.delete_message(ids[2])
        assert [m.content for m in deleted.messages] == ["m2", "m3"]
        after = store.get_conversation(conv)
        assert [m.content for m in after.current_path()] == ["m0", "m1"]
        store.restore_branch(deleted)
        back = store.get_conversation(conv)
        assert [m.content for m in back.current_path()] == ["m0", "m1", "m2", "m3"]
        assert back.current_path()[2].parent_id == ids[1]


def test_fork_copies_the_branch_up_to_the_message_with_its_settings(tmp_path):
    with Store.open(tmp_path / "db.sqlite") as store:
        conv, ids = _chat(store)
        fork = store.fork_conversation(ids[1])
        copy = store.get_conversation(fork)
        assert fork != conv and copy.title == "m0 (fork)"
        assert [m.content for m in copy.current_path()] == ["m0", "m1"]
        assert copy.system_prompt == "be kind" and copy.params["context_policy"] == "middle"
        assert len(store.get_conversation(conv).messages) == 4  # the original is untouched


def test_conversation_settings_override_only_what_they_store(tmp_path):
    with Store.open(tmp_path / "db.sqlite") as store:
        conv, _ = _chat(store)
        params = store.get_conversation(conv).generation_params(
            GenerationParams(max_tokens=77, top_p=0.5))
        assert (params.temperature, params.max_tokens, params.top_p) == (0.2, 77, 0.5)


def test_data_version_moves_when_another_connection_writes(tmp_path):
    with Store.open(tmp_path / "db.sqlite") as gui, Store.open(tmp_path / "db.sqlite") as cli:
        before = gui.data_version()
        cli.create_conversation(title="from the command line")
        assert gui.data_version() != before


def test_settings_and_policy_survive_export_and_import(tmp_path):
    from app.exchange.export import to_json
    from app.exchange.importers import import_file

    with Store.open(tmp_path / "a.sqlite") as store:
        conv, _ = _chat(store)
        path = tmp_path / "out.json"
        path.write_text(to_json([store.get_conversation(conv)]), encoding="utf-8")
    with Store.open(tmp_path / "b.sqlite") as other:
        result = import_file(other, path)
        [new] = result.imported_ids
        copy = other.get_conversation(new)
        assert copy.params["context_policy"] == "middle" and copy.params["temperature"] == 0.2
