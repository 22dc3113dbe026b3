"""The OpenAI-compatible server in-process: wire format, limits, queueing, disconnects, stop.

Servers listen on 127.0.0.1, port 0; every wait is bounded. `grok-desktop serve` itself, with
the official `openai` client, is tested in tests/backends/test_remote.py (one subprocess).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from app.api.server import ApiServer
from app.backends import RemoteBackend, RemoteConfig, RemoteDisconnected
from app.commands import serve
from app.errors import UserError
from app.messages import Finished, GenerationParams, GenerationStats, ModelInfo, Token

KEY = "sk-local-test"
HELLO = [{"role": "user", "content": "Hello there"}]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def call(server: ApiServer, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         key: str | None = None) -> tuple[int, Any]:
    """One request on a fresh connection; the JSON answer (or the text of a stream)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(text) if is_json else text


def sse_objects(text: str) -> list[Any]:
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in datas]


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory: pytest.TempPathFactory):
    from app.engine.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROK_DESKTOP_HOME", str(tmp_path_factory.mktemp("home")))
        yield Engine.demo()


class FakeEngine:
    """Generates "a", then waits for `release` (or a cancel), then "b"; records everything."""

    def __init__(self) -> None:
        self.info = ModelInfo("fake", "", "", "float32", "cpu", 64)
        self.context_length = 64
        self.tokenizer = SimpleNamespace(encode=lambda text: [ord(c) for c in text])
        self.release = threading.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.continued: list[str | None] = []
        self.fail = False

    def chat_prompt_ids(self, messages: list[dict], continue_text: str | None = None,
                        ) -> list[int]:
        self.continued.append(continue_text)
        return [ord(c) for c in messages[-1]["content"]]

    def stream_ids(self, ids: list[int], params: GenerationParams,
                   cancel: threading.Event | None = None,
                   stop_strings: tuple[str, ...] = ()) -> Iterator[Token | Finished]:
        name = "".join(map(chr, ids))

        def run() -> Iterator[Token | Finished]:
            self.started.append(name)
            yield Token("a")
            if self.fail:
                raise RuntimeError("CUDA out of memory")
            for _ in range(1000):  # at most 10 s
                if cancel is not None and cancel.is_set():
                    self.cancelled.append(name)
                    yield Finished("cancelled")
                    return
                if self.release.wait(0.01):
                    break
            yield Token("b")
            yield Finished("stop", GenerationStats(len(ids), 2))

        return run()


# ---- wire format (the real demo engine) ----------------------------------------------------


def test_models_lists_the_loaded_model_and_needs_the_key(demo_engine, start) -> None:
    """/v1/models names the model; without the right Bearer key every endpoint says 401."""
    server = start(demo_engine, api_key=KEY)
    status, body = call(server, "GET", "/v1/models", key=KEY)
    assert status == 200 and body["data"][0]["id"] == "grok-2-demo"
    assert body["data"][0]["max_model_len"] == demo_engine.context_length
    assert call(server, "GET", "/v1/models")[0] == 401
    status, body = call(server, "POST", "/v1/chat/completions", {"messages": HELLO}, key="bad")
    assert status == 401 and "API key" in body["error"]["message"]


def test_chat_answers_what_the_engine_generates(demo_engine, start) -> None:
    """Non-streaming and streaming chat both give the engine's own greedy text and counts."""
    server = start(demo_engine)
    params = GenerationParams(temperature=0, max_tokens=9)
    want = "".join(e.text for e in demo_engine.stream_chat(HELLO, params)
                   if isinstance(e, Token))
    request = {"model": "anything", "messages": HELLO, "temperature": 0, "max_tokens": 9}
    status, body = call(server, "POST", "/v1/chat/completions", request)
    assert status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": want}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 9
    stream = {**request, "stream": True, "stream_options": {"include_usage": True}}
    status, text = call(server, "POST", "/v1/chat/completions", stream)
    chunks = sse_objects(text)
    assert status == 200 and chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]]
    assert "".join(pieces) == want
    assert chunks[-3]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 9


def test_completions_take_text_or_token_ids(demo_engine, start) -> None:
    """/v1/completions continues a raw prompt exactly as the engine does, streamed or not."""
    server = start(demo_engine)
    params = GenerationParams(temperature=0, max_tokens=6)
    want = "".join(e.text for e in demo_engine.stream_prompt("Once upon", params)
                   if isinstance(e, Token))
    request = {"prompt": "Once upon", "temperature": 0, "max_tokens": 6}
    status, body = call(server, "POST", "/v1/completions", request)
    assert status == 200 and body["choices"][0]["text"] == want
    ids = demo_engine.tokenizer.encode("Once upon")
    status, by_ids = call(server, "POST", "/v1/completions", {**request, "prompt": ids})
    assert status == 200 and by_ids["choices"][0]["text"] == want
    status, text = call(server, "POST", "/v1/completions", {**request, "stream": True})
    chunks = sse_objects(text)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == want


@pytest.mark.parametrize(("raw", "status", "words"), [
    (b'{"messages": [', 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"messages": []}', 400, "'messages'"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', 400, "role"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400,
     "'temperature' must be a number"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}', 400, "top_p"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "'n' must be 1"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{}]}', 400, "'tools'"),
    (b'{"messages": [{"role": "user", "content": "' + b"word " * 5000 + b'"}]}', 400,
     "context"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}', 413, "at most"),
])
def test_bad_requests_get_a_clear_error(demo_engine, start, raw: bytes, status: int,
                                        words: str) -> None:
    """Malformed or unservable bodies get 400 (413 when too large) with a message that says why."""
    server = start(demo_engine, max_body_bytes=65536)
    got, body = call(server, "POST", "/v1/chat/completions", raw=raw)
    assert got == status and words in body["error"]["message"]


def test_one_connection_serves_several_requests(demo_engine, start) -> None:
    """Keep-alive: answers (streamed ones too) and errors after a read body keep the connection."""
    server = start(demo_engine)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    bodies = [None, {"messages": HELLO, "max_tokens": 2, "stream": True}, {"messages": "x"},
              {"messages": HELLO, "max_tokens": 2}]
    statuses = []
    for body in bodies:
        method, path = ("GET", "/v1/models") if body is None else ("POST", "/v1/chat/completions")
        conn.request(method, path, body=None if body is None else json.dumps(body))
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        assert not response.will_close
    conn.close()
    assert statuses == [200, 200, 400, 200]


def test_unknown_paths_and_methods(demo_engine, start) -> None:
    """A wrong path is 404 and a wrong method 405, both in OpenAI's error format."""
    server = start(demo_engine)
    assert call(server, "GET", "/v1/embeddings")[0] == 404
    status, body = call(server, "GET", "/v1/chat/completions")
    assert status == 405 and "POST" in body["error"]["message"]


# ---- sharing the engine (a fake engine that waits for the test) ----------------------------


def _post_in_thread(server: ApiServer, content: str, results: dict) -> threading.Thread:
    body = {"messages": [{"role": "user", "content": content}]}
    thread = threading.Thread(target=lambda: results.__setitem__(
        content, call(server, "POST", "/v1/chat/completions", body)), daemon=True)
    thread.start()
    return thread


def test_requests_queue_in_order_and_overflow_gets_503(start) -> None:
    """One generates, the next ones wait in arrival order, one more than the limit gets 503."""
    engine = FakeEngine()
    server = start(engine, max_queue=2)
    results: dict[str, Any] = {}
    threads = [_post_in_thread(server, "A", results)]
    assert wait_until(lambda: engine.started == ["A"])
    for name, waiting in (("B", 1), ("C", 2)):
        threads.append(_post_in_thread(server, name, results))
        assert wait_until(lambda w=waiting: server.line.waiting() == w)
    status, body = call(server, "POST", "/v1/chat/completions", {"messages": HELLO})
    assert status == 503 and "busy" in body["error"]["message"]
    engine.release.set()
    for thread in threads:
        thread.join(10)
    assert engine.started == ["A", "B", "C"]
    assert all(results[n][1]["choices"][0]["message"]["content"] == "ab" for n in "ABC")


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_cancels_its_generation(start, stream: bool) -> None:
    """Closing the connection mid-generation (streaming or not) cancels it on the server."""
    engine = FakeEngine()
    server = start(engine)
    body = json.dumps({"messages": [{"role": "user", "content": "X"}], "stream": stream})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        assert wait_until(lambda: engine.started == ["X"])
    assert wait_until(lambda: engine.cancelled == ["X"])


def test_a_waiting_client_that_leaves_gives_up_its_place(start) -> None:
    """A queued request whose client disconnects leaves the line without generating."""
    engine = FakeEngine()
    server = start(engine)
    results: dict[str, Any] = {}
    first = _post_in_thread(server, "A", results)
    assert wait_until(lambda: engine.started == ["A"])
    body = json.dumps({"messages": [{"role": "user", "content": "B"}]})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        assert wait_until(lambda: server.line.waiting() == 1)
    assert wait_until(lambda: server.line.waiting() == 0)
    engine.release.set()
    first.join(10)
    assert engine.started == ["A"]


def test_an_engine_failure_is_answered_and_the_server_lives_on(start) -> None:
    """A failing generation gets a 500 (an error event when streaming); the next one works."""
    engine = FakeEngine()
    engine.fail = True
    server = start(engine)
    status, body = call(server, "POST", "/v1/chat/completions", {"messages": HELLO})
    assert status == 500 and "CUDA out of memory" in body["error"]["message"]
    status, text = call(server, "POST", "/v1/chat/completions",
                        {"messages": HELLO, "stream": True})
    *_, error, done = sse_objects(text)
    assert "CUDA out of memory" in error["error"]["message"] and done == "[DONE]"
    engine.fail = False
    engine.release.set()
    assert call(server, "POST", "/v1/chat/completions", {"messages": HELLO})[0] == 200


def test_continue_final_message_resumes_the_last_assistant_message(start) -> None:
    """SGLang's continue_final_message hands the partial reply to the engine as continue_text."""
    engine = FakeEngine()
    engine.release.set()
    server = start(engine)
    messages = [*HELLO, {"role": "assistant", "content": " Hi"}]
    call(server, "POST", "/v1/chat/completions", {"messages": messages,
                                                  "continue_final_message": True})
    call(server, "POST", "/v1/chat/completions", {"messages": messages})
    assert engine.continued == [" Hi", None]


def test_stop_cuts_streams_and_frees_the_port(start) -> None:
    """stop() ends a running stream as a dropped connection and releases the port at once."""
    engine = FakeEngine()
    server = start(engine)
    backend = RemoteBackend(RemoteConfig(server.url, model="grok-2", read_timeout_s=10))
    events = backend.stream_chat(HELLO, GenerationParams())
    assert next(events) == Token("a")
    stopping = threading.Timer(0.1, server.stop)
    stopping.start()
    with pytest.raises(RemoteDisconnected):
        list(events)
    stopping.join(10)
    assert engine.cancelled == ["Hello there"]
    again = start(engine, port=server.port)  # the GUI switch turned on again
    assert call(again, "GET", "/v1/models")[0] == 200


def test_other_addresses_need_the_flag_and_a_key() -> None:
    """0.0.0.0 is refused without --allow-remote and without a key; loopback needs neither.
    `serve` refuses before it loads the model."""
    engine = FakeEngine()
    with pytest.raises(UserError, match="--allow-remote"):
        ApiServer(engine, host="0.0.0.0")
    with pytest.raises(UserError, match="API key"):
        ApiServer(engine, host="0.0.0.0", allow_remote=True)
    assert ApiServer(engine, host="0.0.0.0", allow_remote=True, api_key=KEY).host == "0.0.0.0"
    assert ApiServer(engine, host="::1").url == "http://[::1]:1234/v1"
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "/no/such/folder", "--host", "0.0.0.0",
                              "--api-key", KEY])
    with pytest.raises(UserError, match="--allow-remote"):
        args.func(args)
