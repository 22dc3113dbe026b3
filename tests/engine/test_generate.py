"""Generation layers: events from scripted tokens, the real engine on the tiny model, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch

from app.engine.engine import Engine
from app.engine.generate import generate_text, stream_events
from app.engine.tiny import write_tiny_checkpoint
from app.messages import Finished, GenerationParams, Token


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", n_merges=300)
    return Engine.load(folder, device="cpu", dtype=torch.float32)


GREEDY = GenerationParams(temperature=0, max_tokens=12)


def _events(tok, ids, **kw):
    kw.setdefault("params", GenerationParams(max_tokens=50))
    return list(stream_events(iter(ids), tok, prompt_tokens=3, stop_ids={tok.eos_id}, **kw))


def test_stop_token_ends_with_stop(engine):
    """A stop id ends the reply with reason stop and is not part of the text."""
    tok = engine.tokenizer
    ids = tok.encode("Hello world") + [tok.eos_id] + tok.encode("never")
    events = _events(tok, ids)
    assert isinstance(events[-1], Finished) and events[-1].reason == "stop"
    assert "".join(e.text for e in events[:-1]) == "Hello world"
    assert events[-1].stats.completion_tokens == len(tok.encode("Hello world"))


def test_length_limit(engine):
    """max_tokens ends the reply with reason length after exactly that many tokens."""
    tok = engine.tokenizer
    events = _events(tok, tok.encode("a b c d e f g h i j"), params=GenerationParams(max_tokens=3))
    assert events[-1].reason == "length" and events[-1].stats.completion_tokens == 3


def test_cancel_between_steps(engine):
    """A set cancel event finishes with reason cancelled before the next token."""
    tok, cancel = engine.tokenizer, threading.Event()
    gen = stream_events(iter(tok.encode("one two three four five six")), tok, prompt_tokens=1,
                        params=GenerationParams(max_tokens=50), stop_ids=set(), cancel=cancel)
    first = next(gen)
    cancel.set()
    rest = list(gen)
    assert isinstance(first, Token) and rest[-1].reason == "cancelled"


def test_stop_string_is_cut_and_never_streamed(engine):
    """Text is held back while it could start a stop string; the stop string never appears."""
    tok = engine.tokenizer
    ids = tok.encode("Sure.\nHuman: more")
    events = _events(tok, ids, stop_strings=("\nHuman:",))
    assert "".join(e.text for e in events[:-1]) == "Sure."
    assert events[-1].reason == "stop"


def test_streamed_text_equals_decode_with_multibyte(engine):
    """Streaming pieces concatenate to the full decode, with no replacement characters."""
    tok = engine.tokenizer
    text = "naïve café 😀 Grüße 日本語"
    events = _events(tok, tok.encode(text))
    assert "".join(e.text for e in events[:-1]) == text
    assert all("\ufffd" not in e.text for e in events[:-1])


def test_greedy_is_deterministic_and_prefix_reuse_is_exact(engine, tmp_path):
    """A second turn reusing the KV-cache prefix gives the same tokens as a fresh engine."""
    turn1 = [{"role": "user", "content": "Tell me a story"}]
    text1, _, _ = generate_text(engine.stream_chat(turn1, GREEDY))
    turn2 = turn1 + [{"role": "assistant", "content": text1}, {"role": "user", "content": "More"}]
    _, ids_reused, _ = generate_text(engine.stream_chat(turn2, GREEDY))
    fresh = Engine.load(engine.info.folder, device="cpu", dtype=torch.float32)
    _, ids_fresh, _ = generate_text(fresh.stream_chat(turn2, GREEDY))
    assert ids_reused == ids_fresh


def test_seed_reproduces_sampling(engine):
    """The same seed gives the same sampled reply; Finished reports the seed."""
    params = GenerationParams(temperature=1.0, max_tokens=10, seed=42)
    msgs = [{"role": "user", "content": "Hi"}]
    a = generate_text(engine.stream_chat(msgs, params))
    b = generate_text(engine.stream_chat(msgs, params))
    assert a[1] == b[1] and a[2].seed == 42


def test_context_overflow_is_a_clear_error(engine):
    """A prompt longer than the context is refused with a message, not a crash."""
    from app.errors import UserError

    with pytest.raises(UserError, match="context"):
        list(engine.stream_chat([{"role": "user", "content": "x " * 5000}], GREEDY))


def test_generate_json_cli(tmp_path):
    """`generate --json` prints one object with the documented fields."""
    env = {"GROK_DESKTOP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "generate", "--demo", "--prompt", "Hello",
         "--temperature", "0", "--max-tokens", "8", "--json"],
        check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("text", "token_ids", "prompt_token_ids", "finish_reason", "prompt_tokens",
                "completion_tokens", "ttft_s", "tokens_per_s"):
        assert key in out
    assert out["finish_reason"] in ("stop", "length")
    assert out["prompt_tokens"] == len(out["prompt_token_ids"])
    assert out["completion_tokens"] == len(out["token_ids"]) <= 8


def test_cpu_load_that_cannot_fit_is_refused_before_loading(engine, monkeypatch):
    """A plain CPU load larger than RAM is a clear error naming the fix, not an OOM kill."""
    from app.errors import UserError

    monkeypatch.setattr("app.engine.loader.detect_budgets", lambda: (0, 100_000))
    with pytest.raises(UserError, match="prepare an int4 copy"):
        Engine.load(engine.info.folder, device="cpu", dtype=torch.float32)
