"""The conversation store: SQLite (WAL) tables, the message tree, and the reply writer.

- `conversation`: Conversation/Message dataclasses and the tree logic (no SQL).
- `schema`: opening the database, schema versions and migrations with a backup.
- `rows`: row <-> dataclass conversion and the StorageError wording.
- `store`: `Store`, the one object the app, the CLI and the API server write through.
- `reply`: `ReplyWriter`, which keeps a streaming reply's row current (kill -9 safe).

No Qt, no torch (tests/test_layering.py).
"""
