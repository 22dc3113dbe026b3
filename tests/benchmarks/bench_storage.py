"""Benchmark the conversation store at scale (a script, not a test).

    python3 tests/benchmarks/bench_storage.py [--conversations 10000] [--messages 1000000]

Builds a database in a temporary folder through the real schema (triggers and FTS included),
with one 2,000-message conversation among the rest, then times what the app does most: list
the newest 200 conversations, open the long conversation, search, and reports the file size.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.messages import GenerationParams, GenerationStats, ModelInfo
from app.store.store import Store

MODEL = json.dumps(ModelInfo("Grok-2", "/models/grok-2", "0" * 16, "int4", "cuda", 8192).to_dict())
PARAMS = json.dumps(GenerationParams(seed=1).to_dict())
STATS = json.dumps(GenerationStats(300, 250, 0.8, 7.1, 36.0).to_dict())
LONG = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--reply-words", type=int, default=60, help="mean words per reply")
    parser.add_argument("--keep", type=Path, help="build here instead of a temporary folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="grok-bench-"))
    path = folder / "conversations.sqlite3"
    rng = random.Random(0)
    vocab = _vocabulary(rng)
    with Store.open(path) as store:
        t = time.perf_counter()
        long_id = _fill(store, args.conversations, args.messages, args.reply_words, vocab, rng)
        build_s = time.perf_counter() - t
        print(
            f"built {args.conversations:,} conversations / {args.messages:,} messages in "
            f"{build_s:.1f} s ({args.messages / build_s:,.0f} messages/s)"
        )
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(p.stat().st_size for p in folder.glob("conversations.sqlite3*"))
    t = time.perf_counter()
    store = Store.open(path)
    print(f"open (incl. interrupted-reply scan): {1000 * (time.perf_counter() - t):.1f} ms")
    _time("list newest 200 conversations", lambda: store.list_conversations(200))
    _time(
        f"open the {LONG:,}-message conversation",
        lambda: store.get_conversation(long_id).current_path(),
    )
    _time("search a rare word (limit 50)", lambda: store.search("zyzzyva"))
    _time("search a common word (limit 50)", lambda: store.search(vocab[0]))
    _time("search two words, prefix (limit 50)", lambda: store.search(f"{vocab[3]} {vocab[7][:3]}"))
    _time("search a 2-letter prefix (limit 50)", lambda: store.search(vocab[0][:2]))
    _time(
        "list 200 conversations further down (offset 5000)",
        lambda: store.list_conversations(200, offset=5000),
    )
    store.close()
    print(f"database size: {size / 2**20:,.0f} MiB ({size / args.messages:,.0f} bytes/message)")
    print(f"database: {path}" if args.keep else f"(temporary folder {folder}; delete it)")


def _vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(20000)}
    ordered = sorted(words - {"zyzzyva"})
    rng.shuffle(ordered)  # word frequency must not follow the alphabet
    return ordered


def _text(rng: random.Random, vocab: list[str], words: int) -> str:
    # Zipf-like: a few words are very common, most are rare, like real text.
    picks = [vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)] for _ in range(words)]
    return " ".join(picks)


def _fill(
    store: Store, n_conv: int, n_msg: int, reply_words: int, vocab: list[str], rng: random.Random
) -> int:
    """Insert everything in batches of transactions; returns the long conversation's id."""
    per_conv = max(2, (n_msg - LONG) // max(1, n_conv - 1))
    sizes = [per_conv] * (n_conv - 1) + [LONG]
    sizes[0] += n_msg - sum(sizes)
    now = int(time.time() * 1000) - n_msg * 1000
    long_id = 0
    batch: list[tuple[int, int]] = []
    for index, size in enumerate(sizes):
        batch.append((index + 1, size))
        if len(batch) == 200 or index == len(sizes) - 1:
            with store.transaction(durable=False) as conn:
                for conv_id, count in batch:
                    now = _conversation(conn, conv_id, count, now, reply_words, vocab, rng)
            batch = []
        if size == LONG:
            long_id = index + 1
    with store.transaction() as conn:  # one needle for the rare-word search
        conn.execute("UPDATE messages SET content = content || ' zyzzyva' WHERE id = 12345")
    return long_id


def _conversation(
    conn, conv_id: int, count: int, now: int, reply_words: int, vocab: list[str], rng: random.Random
) -> int:
    conn.execute(
        "INSERT INTO conversations (id, uuid, title, params, created_ms, updated_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (conv_id, str(uuid.uuid4()), _text(rng, vocab, 5), PARAMS, now, now),
    )
    rows = []
    first_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()[0]
    for i in range(count):
        now += 1000
        msg_id = first_id + i
        parent = msg_id - 1 if i else None
        if i % 2 == 0:
            rows.append((msg_id, conv_id, parent, "user", _text(rng, vocab, 12), now, None))
        else:
            words = max(5, int(rng.expovariate(1 / reply_words)))
            rows.append((msg_id, conv_id, parent, "assistant", _text(rng, vocab, words), now, 1))
    conn.executemany(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content, created_ms,"
        " updated_ms, model, params, stats, finish_reason)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6,"
        " CASE WHEN ?7 THEN ?8 END, CASE WHEN ?7 THEN ?9 END, CASE WHEN ?7 THEN ?10 END,"
        " CASE WHEN ?7 THEN 'stop' END)",
        [(*r, MODEL, PARAMS, STATS) for r in rows],
    )
    conn.execute(
        "UPDATE conversations SET current_leaf_id = ?, updated_ms = ? WHERE id = ?",
        (first_id + count - 1, now, conv_id),
    )
    return now


def _time(label: str, fn, repeat: int = 7) -> None:
    t = time.perf_counter()
    fn()  # the first call after opening also fills SQLite's page cache
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    print(
        f"{label}: first {1000 * first:.1f} ms, then median "
        f"{1000 * statistics.median(times):.1f} ms"
    )


if __name__ == "__main__":
    main()
