"""Wrote tests/data/conversations-v1.sqlite3 once; kept to show how the frozen file was made.

Do not re-run to "fix" a test: the file is frozen on purpose, it is what a first-release user
has on disk. Schema version 1 was the first release's (see app/store/schema.py).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

V1_SCHEMA = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id),
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'done',
    created_at TEXT NOT NULL,
    model TEXT,
    settings TEXT,
    tokens INTEGER,
    tok_per_s REAL
);
CREATE INDEX messages_by_conversation ON messages(conversation_id);
PRAGMA user_version = 1;
"""

MODEL = "/models/grok-2"
SETTINGS = json.dumps({"temperature": 0.2, "top_p": 0.9, "max_tokens": 512, "seed": 7})


def main() -> None:
    path = Path(__file__).with_name("conversations-v1.sqlite3")
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conv_settings = json.dumps({"system_prompt": "You are terse.", "temperature": 0.2})
    conn.execute(
        "INSERT INTO conversations VALUES (1, 'Sorting in Python', ?, ?, ?)",
        (conv_settings, "2024-11-02T09:15:00.250", "2024-11-02T09:17:30.500"),
    )
    conn.execute(
        "INSERT INTO conversations VALUES (2, 'שלום 👋', '{}', ?, ?)",
        ("2024-11-03T20:00:00", "2024-11-03T20:01:00"),
    )
    # fmt: off
    rows = [
        (1, 1, None, "user", "How do I sort a list?", "done", "2024-11-02T09:15:00.250",
         None, None, None, None),
        (2, 1, 1, "assistant", "Use `sorted(xs)`:\n\n```python\nsorted([3, 1, 2])\n```", "done",
         "2024-11-02T09:15:02.000", MODEL, SETTINGS, 18, 4.5),
        (3, 1, 1, "assistant", "Call `xs.sort()` to sort in place.", "done",
         "2024-11-02T09:16:00.000", MODEL, SETTINGS, 9, 4.1),
        (4, 1, 3, "user", "And in reverse?", "done", "2024-11-02T09:17:00.000",
         None, None, None, None),
        (5, 1, 4, "assistant", "`xs.sort(reverse=Tr", "streaming", "2024-11-02T09:17:30.500",
         MODEL, SETTINGS, None, None),
        (6, 2, None, "user", "מה שלומך? 😀", "done", "2024-11-03T20:00:00", None, None, None,
         None),
        (7, 2, 6, "assistant", "טוב, תודה! 🎉", "done", "2024-11-03T20:01:00", MODEL, SETTINGS,
         5, 3.0),
    ]
    # fmt: on
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.execute("VACUUM")
    conn.close()


if __name__ == "__main__":
    main()
