"""`grok-desktop ask | list | export | import`, and what survives a kill -9 in the middle of ask."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app import paths
from app.cli import main
from app.commands.chat import ask
from app.errors import StorageError
from app.messages import Finished, GenerationStats, ModelInfo, Token
from app.store.store import Store

ROOT = Path(__file__).parent.parent
FAKE_INFO = ModelInfo("Fake", "/fake/model", "feedfacecafebeef", "float32", "cpu", 4096)


class FakeEngine:
    """Same stream_chat signature as app.engine.engine.Engine; yields scripted pieces."""

    info = FAKE_INFO

    def __init__(self, pieces=("Hel", "lo", "!"), fail_at=None, interrupt_at=None, delay=0.0):
        self.pieces, self.fail_at, self.interrupt_at, self.delay = (
            pieces,
            fail_at,
            interrupt_at,
            delay,
        )
        self.calls = []

    def stream_chat(self, messages, params, cancel=None, continue_text=None):
        self.calls.append((messages, params))
        for i, piece in enumerate(self.pieces):
            if cancel is not None and cancel.is_set():
                yield Finished("cancelled")
                return
            if i == self.fail_at:
                raise RuntimeError("CUDA out of memory")
            if i == self.interrupt_at:
                raise KeyboardInterrupt
            time.sleep(self.delay)
            yield Token(piece, (i,))
        yield Finished("stop", GenerationStats(5, len(self.pieces), 0.01, 99.0, 0.05), seed=321)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def store(home):
    with Store.open() as s:
        yield s


def test_ask_streams_and_stores_both_messages(store):
    """ask prints the reply and stores user message and reply like the GUI does."""
    conv = store.create_conversation(system_prompt="Be kind.")
    out = io.StringIO()
    engine = FakeEngine()
    result = ask(store, engine, conv, "Hi there", out=out)
    assert out.getvalue() == "Hello!\n" and result.reason == "stop"
    c = store.get_conversation(conv)
    user, reply = c.current_path()
    assert (user.role, user.content, user.status) == ("user", "Hi there", "complete")
    assert (reply.role, reply.content, reply.status) == ("assistant", "Hello!", "complete")
    assert reply.model == FAKE_INFO.to_dict() and reply.seed == 321
    assert reply.stats["completion_tokens"] == 3
    assert engine.calls[0][0] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi there"},
    ]
    ask(store, engine, conv, "Again", out=io.StringIO())
    assert [m["content"] for m in engine.calls[1][0]] == ["Be kind.", "Hi there", "Hello!", "Again"]


def test_ctrl_c_keeps_the_reply_as_cancelled(store):
    """Ctrl+C during ask stores the text so far as a finished, cancelled reply."""
    conv = store.create_conversation()
    with pytest.raises(KeyboardInterrupt):
        ask(
            store,
            FakeEngine(("one ", "two ", "three"), interrupt_at=2),
            conv,
            "count",
            out=io.StringIO(),
        )
    reply = store.get_conversation(conv).current_path()[-1]
    assert (reply.content, reply.status, reply.finish_reason) == (
        "one two ",
        "complete",
        "cancelled",
    )


def test_engine_failure_keeps_the_text_with_status_error(store):
    """An engine error mid-reply keeps the text so far, marked `error` with the reason."""
    conv = store.create_conversation()
    with pytest.raises(RuntimeError):
        ask(store, FakeEngine(("partial ", "more"), fail_at=1), conv, "go", out=io.StringIO())
    reply = store.get_conversation(conv).current_path()[-1]
    assert (reply.content, reply.status) == ("partial ", "error")
    assert "CUDA out of memory" in reply.error


def test_full_disk_stops_generation_with_a_clear_error(store):
    """When the database fills up mid-reply, generation stops and the question is kept."""
    conv = store.create_conversation()
    engine = FakeEngine(["x" * 200_000] * 20, delay=0.26)  # > 250 ms apart: a write per token
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 120}")
    cancel = threading.Event()
    with pytest.raises(StorageError, match="disk is full"):
        ask(store, engine, conv, "fill it", out=io.StringIO(), cancel=cancel)
    assert cancel.is_set()
    user, reply = store.get_conversation(conv).current_path()
    assert user.content == "fill it" and set(reply.content) == {"x"}
    assert store.integrity_check() == "ok"


_KILL_SCRIPT = """
import sys, time
from app.commands.chat import ask
from app.messages import ModelInfo, Token, Finished
from app.store.store import Store

class Endless:
    info = ModelInfo("Endless", "/fake", "0" * 16, "float32", "cpu", 4096)
    def stream_chat(self, messages, params, cancel=None, continue_text=None):
        i = 0
        while True:
            i += 1
            time.sleep(0.01)
            yield Token(f"w{i} ")

store = Store.open()
conv = store.create_conversation()
print(conv, flush=True)
ask(store, Endless(), conv, "tell me everything", out=sys.stdout)
"""


def _wait_for_reply_text(db: Path, proc: subprocess.Popen, min_chars: int) -> None:
    """Poll with a plain sqlite3 connection (a Store would mark the row interrupted)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ask ended before it could be killed: {proc.stderr.read()}")
        if db.exists():
            conn = sqlite3.connect(db)
            try:
                row = conn.execute(
                    "SELECT length(content) FROM messages WHERE role = 'assistant'"
                    " AND status = 'streaming'"
                ).fetchone()
            except sqlite3.OperationalError:
                row = None
            finally:
                conn.close()
            if row and row[0] >= min_chars:
                return
        time.sleep(0.05)
    pytest.fail("no streaming reply appeared")


def _check_after_kill(home: Path) -> int:
    with Store.open(home / "data" / "conversations.sqlite3") as store:
        assert store.integrity_check() == "ok"
        [summary] = store.list_conversations()
        user, reply = store.get_conversation(summary.id).current_path()
        assert (user.role, user.status) == ("user", "complete")
        assert reply.status == "interrupted" and reply.content
        return summary.id


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9")
def test_kill_9_mid_reply_loses_nothing_committed(home):
    """kill -9 during ask: the question is whole, the reply interrupted with its text."""
    env = {**os.environ, "GROK_DESKTOP_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = home / "data" / "conversations.sqlite3"
    _wait_for_reply_text(db, proc, min_chars=200)
    time.sleep(0.6)  # a few more writes
    proc.kill()
    proc.wait()
    conv = _check_after_kill(home)
    with Store.open(db) as store:
        reply = store.get_conversation(conv).current_path()[-1]
        words = reply.content.split()
        assert words == [f"w{i}" for i in range(1, len(words) + 1)]  # a clean prefix
        ask(store, FakeEngine(), conv, "still there?", out=io.StringIO())
        path = store.get_conversation(conv).current_path()
        assert [m.status for m in path] == ["complete", "interrupted", "complete", "complete"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("app.engine.engine") is None,
    reason="app.engine.engine (the demo engine) is not built yet",
)
def test_kill_9_during_a_real_demo_ask(home):
    """The real `python -m app ask --demo` survives kill -9 and the next ask works."""
    env = {**os.environ, "GROK_DESKTOP_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "app",
        "ask",
        "--demo",
        "--temperature",
        "0",
        "--max-tokens",
        "8000",
        "Tell me a very long story",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_reply_text(home / "data" / "conversations.sqlite3", proc, min_chars=20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conv = _check_after_kill(home)
    again = subprocess.run(
        [*cmd[:5], "--max-tokens", "3", "-c", str(conv), "and then?"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    with Store.open(home / "data" / "conversations.sqlite3") as store:
        path = store.get_conversation(conv).current_path()
        assert [m.status for m in path] == ["complete", "interrupted", "complete", "complete"]
        assert path[-1].model["is_demo"] is True


def test_list_export_and_import_commands(home, tmp_path, capsys, monkeypatch):
    """list shows ids and titles; export --all then import into another home round-trips."""
    with Store.open() as store:
        for text in ("first question", "second question"):
            conv = store.create_conversation()
            ask(store, FakeEngine(), conv, text, out=io.StringIO())
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "first question" in listing and "second question" in listing
    out = tmp_path / "all.json"
    assert main(["export", "--all", "--format", "json", "--out", str(out)]) == 0
    assert main(["export", "-c", "1", "--format", "md", "--out", str(tmp_path / "one.md")]) == 0
    assert "first question" in (tmp_path / "one.md").read_text()
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "other"))
    assert main(["import", str(out)]) == 0
    assert "imported 2 conversations" in capsys.readouterr().out
    assert main(["list", "--search", "second"]) == 0
    assert "second question" in capsys.readouterr().out
    assert paths.database_path().parent == tmp_path / "other" / "data"


def test_command_errors_are_one_line(home, tmp_path, capsys):
    """Unknown conversation ids and bad import files exit 2 with one clear line."""
    assert main(["export", "-c", "42", "--format", "md", "--out", str(tmp_path / "x.md")]) == 2
    assert "no conversation 42" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "grok-desktop.conversations", "version": 1, "conver')
    assert main(["import", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not valid JSON" in err and str(bad) in err


def test_ask_command_keeps_options_as_conversation_settings(home, monkeypatch, capsys):
    """`ask` options become the conversation's settings; without any it follows the app's."""
    from app.commands import chat

    engine = FakeEngine()
    monkeypatch.setattr(chat, "open_engine", lambda args: engine)
    assert main(["ask", "--demo", "--system", "Be terse.", "--temperature", "0.1", "hi"]) == 0
    assert capsys.readouterr().out == "Hello!\n"
    assert main(["ask", "--demo", "-c", "1", "more"]) == 0
    assert [call[1].temperature for call in engine.calls] == [0.1, 0.1]
    assert engine.calls[1][0][0] == {"role": "system", "content": "Be terse."}
    assert main(["ask", "--demo", "plain"]) == 0
    with Store.open() as store:
        assert store.get_conversation(2).params == {}  # follows the app's settings
        assert store.get_conversation(1).params["temperature"] == 0.1
    assert main(["ask", "--demo", "--top-p", "7", "bad"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_generate_ends_the_reply_with_a_newline_before_the_stats(tmp_path):
    """With stdout and stderr in one pipe (2>&1), the stats line starts on its own line."""
    env = {**os.environ, "GROK_DESKTOP_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "generate", "--demo", "--prompt", "Hello",
         "--max-tokens", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=180, check=True)
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("[length: ") and lines[-2].strip(), proc.stdout


def test_ask_without_model_flags_uses_the_configured_model(home, monkeypatch, capsys, tmp_path):
    """`ask` with neither --model nor --demo loads the Grok-2 folder chosen in Settings (with
    its context length); with none configured it exits 2 with one line."""
    from app.commands import chat
    from app.settings import Settings, save_settings

    assert main(["ask", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no model configured" in err and "--demo" in err
    seen = []
    engine = FakeEngine()
    monkeypatch.setattr(chat, "open_engine", lambda args: seen.append(args) or engine)
    monkeypatch.setattr("app.settings.check_model_folder",
                        lambda folder: type("Check", (), {"ok": True})())
    save_settings(Settings(model_folder=str(tmp_path), context_tokens=2048))
    assert main(["ask", "hi"]) == 0
    assert seen[0].model == str(tmp_path) and seen[0].context == 2048 and not seen[0].demo
    assert capsys.readouterr().out == "Hello!\n"


def test_plan_names_a_missing_folder(capsys):
    """`plan --model nope` says there is no such folder (not that config.json is missing)."""
    assert main(["plan", "--model", "/no/such/grok", "--gpu-mem", "0", "--cpu-mem", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "/no/such/grok: no such folder" in err


@pytest.mark.parametrize("target", ["/no/such/grok", "FILE"])
def test_every_command_words_a_bad_model_folder_alike(target, tmp_path, capsys):
    """generate, plan, bench and prepare give the same one line for a missing folder and for
    a file given as the folder."""
    if target == "FILE":
        target = str(tmp_path / "config.json")
        (tmp_path / "config.json").write_text("{}")
    commands = [["generate", "--model", target, "--prompt", "hi"],
                ["plan", "--model", target, "--gpu-mem", "0", "--cpu-mem", "64"],
                ["bench", "--model", target, "--gpu-mem", "0"],
                ["prepare", "--model", target, "--quant", "int4"]]
    errors = set()
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        errors.add(err)
    assert len(errors) == 1, errors
    what = "no such folder" if target == "/no/such/grok" else "not a folder"
    assert f"{target}: {what}; choose the folder that holds config.json" in errors.pop()


def test_plan_rows_line_up():
    """Every part row of the plan puts its size in the same column."""
    from app.engine.config import Grok2Config
    from app.engine.plan import GB, Bandwidths, describe, make_plan

    text = describe(make_plan(Grok2Config(), "int4", 48 * GB, 256 * GB, 8192), Bandwidths())
    rows = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(rows) > 5 and len({len(line) for line in rows}) == 1, rows


def test_list_search_without_matches_says_so(home, capsys):
    """A search that finds nothing says so (on stderr) instead of printing nothing."""
    assert main(["list", "--search", "zzzqqq"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no conversation matches 'zzzqqq'" in captured.err
