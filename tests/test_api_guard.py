"""The local API server's boundary: who may call it (Host, Origin, CORS, content type), what a
body may hold (nulls, ranges, types, token ids), a burst of clients, clients that reset, and
the recorded request shapes in tests/data/cases/.

Servers listen on 127.0.0.1, port 0; every wait is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.api.guard import RequestGuard, normalize_origin
from app.api.server import ApiServer
from app.commands import serve
from app.errors import UserError
from app.messages import Finished, GenerationParams, GenerationStats, ModelInfo, Token
from app.settings import Settings

CASES = Path(__file__).parent / "data" / "cases"
HELLO = [{"role": "user", "content": "Hello there"}]
ALLOWED = "http://localhost:3000"
JSON = "application/json"


def request(server: ApiServer, method: str, path: str, body: Any = None, *,
            raw: bytes | None = None, headers: dict[str, str] | None = None,
            ) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection: status, headers (lower-case names), JSON or text.
    A reset or a cut answer raises, so callers see it as a failure."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    send = {"Content-Type": JSON} if body is not None else {}
    send.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.putrequest(method, path, skip_host="Host" in send)
        for name, value in send.items():
            conn.putheader(name, value)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        response = conn.getresponse()
        text = response.read().decode()
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    is_json = got.get("content-type", "").startswith(JSON)
    return response.status, got, json.loads(text) if is_json else text


def sse_objects(text: str) -> list[Any]:
    datas = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in datas]


class FakeEngine:
    """Answers "ab" at once, or holds each generation until `release` (or a cancel)."""

    def __init__(self, hold: bool = False) -> None:
        self.info = ModelInfo("fake", "", "", "float32", "cpu", 64)
        self.context_length = 64
        self.tokenizer = SimpleNamespace(encode=lambda text: [ord(c) for c in text],
                                         vocab_size=0x110000)
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.started: list[str] = []
        self.params: list[GenerationParams] = []

    def chat_prompt_ids(self, messages: list[dict], continue_text: str | None = None,
                        ) -> list[int]:
        return [ord(c) for c in messages[-1]["content"]] or [0]

    def stream_ids(self, ids: list[int], params: GenerationParams,
                   cancel: threading.Event | None = None,
                   stop_strings: tuple[str, ...] = ()) -> Iterator[Token | Finished]:
        def run() -> Iterator[Token | Finished]:
            self.started.append("".join(map(chr, ids)))
            self.params.append(params)
            yield Token("a")
            for _ in range(1000):
                if cancel is not None and cancel.is_set():
                    yield Finished("cancelled")
                    return
                if self.release.wait(0.01):
                    break
            yield Token("b")
            yield Finished("stop", GenerationStats(len(ids), 2))

        return run()


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory: pytest.TempPathFactory):
    from app.engine.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROK_DESKTOP_HOME", str(tmp_path_factory.mktemp("home")))
        yield Engine.demo()


# ---- Host and Origin (DNS rebinding, web pages) --------------------------------------------


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1", 200), ("localhost", 200), ("LOCALHOST:{port}", 200), ("[::1]", 200),
    ("127.0.0.1:{port}", 200), ("[::1]:{port}", 200),
    ("evil.example", 403), ("evil.example:{port}", 403), ("127.0.0.1:1", 403),
    ("localhost.evil.example", 403), ("127.0.0.1.nip.io:{port}", 403), ("[::1", 403),
])
def test_only_hosts_that_name_this_server_are_answered(start, host: str, status: int) -> None:
    """A rebound DNS name (Host evil.example) gets 403; loopback names with our port or none
    are served."""
    server = start(FakeEngine())
    got, _, body = request(server, "GET", "/v1/models",
                           headers={"Host": host.format(port=server.port)})
    assert got == status
    if status == 403:
        assert "does not name this server" in body["error"]["message"]


def test_a_server_on_another_address_takes_any_host() -> None:
    """With --allow-remote (which needs a key) clients name the machine as they like."""
    guard = RequestGuard(None, host="0.0.0.0", port=1234, origins=(), log=print)  # type: ignore[arg-type]
    assert guard.host_ok("gpu-box.lan:1234") and guard.host_ok("10.0.0.5")
    loopback = RequestGuard(None, host="::1", port=1234, origins=(), log=print)  # type: ignore[arg-type]
    assert loopback.host_ok("[::1]:1234") and not loopback.host_ok("gpu-box.lan:1234")


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:3001",
                                    "https://localhost:3000", "file://", "http://127.0.0.1"])
def test_a_foreign_origin_is_refused(start, origin: str) -> None:
    """A web page's request (it carries Origin) gets 403 unless its origin is allowed; the
    message says how to allow it. Nothing is generated."""
    engine = FakeEngine()
    server = start(engine, cors_origins=[ALLOWED])
    status, headers, body = request(server, "POST", "/v1/chat/completions", {"messages": HELLO},
                                    headers={"Origin": origin})
    assert status == 403 and "--cors-origin" in body["error"]["message"]
    assert "access-control-allow-origin" not in headers
    assert engine.started == []


def test_an_allowed_origin_gets_cors_headers_and_preflight(start) -> None:
    """The allow-list's pages get Access-Control-Allow-Origin on answers (errors too) and an
    OPTIONS preflight that allows POST with Authorization and Content-Type."""
    server = start(FakeEngine(), cors_origins=["HTTP://LocalHost:3000/"], api_key="k")
    status, headers, body = request(server, "POST", "/v1/chat/completions", {"messages": HELLO},
                                    headers={"Origin": ALLOWED, "Authorization": "Bearer k"})
    assert status == 200 and body["choices"][0]["message"]["content"] == "ab"
    assert headers["access-control-allow-origin"] == ALLOWED
    status, headers, _ = request(server, "GET", "/v1/models", headers={"Origin": ALLOWED})
    assert status == 401 and headers["access-control-allow-origin"] == ALLOWED
    status, headers, _ = request(server, "OPTIONS", "/v1/chat/completions", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 200 and headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"].lower()
    status, _, _ = request(server, "OPTIONS", "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403


def test_without_an_allow_list_no_cors_headers_are_sent(start) -> None:
    """The server's own origin is served (same origin), with no CORS headers."""
    server = start(FakeEngine())
    own = f"http://127.0.0.1:{server.port}"
    status, headers, _ = request(server, "GET", "/v1/models", headers={"Origin": own})
    assert status == 200 and not any(h.startswith("access-control") for h in headers)


@pytest.mark.parametrize(("content_type", "status"), [
    ("text/plain", 415), ("text/plain;charset=UTF-8", 415),
    ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    ("application/json", 200), ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200), ("application/vnd.api+json", 200), (None, 200),
])
def test_a_post_that_is_not_json_gets_415(start, content_type: str | None, status: int) -> None:
    """text/plain and form bodies (a page's POST without preflight) are refused before the
    body is read; JSON, and a body with no Content-Type (curl, scripts), are served."""
    engine = FakeEngine()
    server = start(engine)
    headers = {"Content-Type": content_type} if content_type else {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"messages": HELLO}),
                 headers=headers)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == status
    if status == 415:
        assert "Content-Type: application/json" in body["error"]["message"]
        assert engine.started == []


def test_normalize_origin() -> None:
    """Allow-list entries are written the way browsers send Origin; others are refused."""
    assert normalize_origin("HTTP://LocalHost:3000/") == "http://localhost:3000"
    assert normalize_origin("https://example.org:443") == "https://example.org"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("*", "localhost:3000", "http://x/path", "ftp://x", "http://", "http://a:b",
                "http://u@x", "null"):
        with pytest.raises(ValueError, match="not a web origin"):
            normalize_origin(bad)


def test_the_allow_list_in_settings_and_the_cli() -> None:
    """Settings keeps api_cors_origins normalised and names a bad entry; `serve` refuses a bad
    --cors-origin before it loads the model."""
    s = Settings.from_dict({"api_cors_origins": ["http://LOCALHOST:3000", "http://a.b"]})
    assert s.api_cors_origins == ["http://localhost:3000", "http://a.b"]
    assert Settings().api_cors_origins == []
    with pytest.raises(ValueError, match=r"api_cors_origins\[1\]"):
        Settings(api_cors_origins=["http://ok", "*"])
    with pytest.raises(TypeError, match="api_cors_origins"):
        Settings.from_dict({"api_cors_origins": "http://a.b"})
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "/no/such/folder", "--cors-origin", "*"])
    with pytest.raises(UserError, match="--cors-origin"):
        args.func(args)


# ---- what a body may hold --------------------------------------------------------------------


OPTIONAL_CHAT = ("model", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                 "frequency_penalty", "presence_penalty", "max_tokens",
                 "max_completion_tokens", "seed", "stop", "stream", "stream_options", "n",
                 "user", "logit_bias", "response_format", "logprobs", "top_logprobs", "tools",
                 "functions", "continue_final_message", "tool_choice")
OPTIONAL_COMPLETIONS = (*(n for n in OPTIONAL_CHAT if n != "continue_final_message"), "echo",
                        "suffix", "best_of")


def test_every_optional_field_takes_null_as_its_default(start) -> None:
    """OpenAI SDKs send null for fields left unset: each one alone, and all at once, are 200
    with the default sampling settings."""
    engine = FakeEngine()
    server = start(engine)
    for path, base, names in (("/v1/chat/completions", {"messages": HELLO}, OPTIONAL_CHAT),
                              ("/v1/completions", {"prompt": "Once"}, OPTIONAL_COMPLETIONS)):
        bodies = [{**base, name: None} for name in names]
        bodies.append({**base, **dict.fromkeys(names)})
        for body in bodies:
            status, _, answer = request(server, "POST", path, body)
            assert status == 200, (body, answer)
    messages = [{"role": "user", "content": "Hi", "name": None},
                {"role": "assistant", "content": None}, {"role": "user", "content": "Go"}]
    assert request(server, "POST", "/v1/chat/completions",
                   {"messages": messages, "stream_options": {"include_usage": None}})[0] == 200
    default = GenerationParams()
    assert all((p.temperature, p.top_p, p.top_k) == (default.temperature, default.top_p, 0)
               for p in engine.params)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("temperature", -0.1, ">= 0"), ("temperature", "hot", "a number"),
    ("top_p", 0, "(0, 1]"), ("top_p", 1.5, "(0, 1]"), ("top_k", -5, ">= 0"),
    ("top_k", 2.5, "an integer"), ("min_p", 1, "[0, 1)"), ("repetition_penalty", 0, "0.01"),
    ("repetition_penalty", 3, "between 0.01 and 2"), ("frequency_penalty", 2.5, "-2 and 2"),
    ("presence_penalty", -3, "-2 and 2"), ("max_tokens", 0, ">= 1"),
    ("max_completion_tokens", -1, ">= 1"), ("max_tokens", True, "an integer"),
    ("n", 2, "must be 1"), ("seed", -1, "2**63"), ("seed", 2**63, "2**63"),
    ("stream", "yes", "true or false"), ("stream_options", [], "an object"),
    ("stop", 5, "a string or a list"), ("stop", [""], "non-empty"), ("stop", ["x"] * 17, "16"),
    ("model", 7, "a string"), ("response_format", {"type": "json_object"}, "text"),
])
def test_out_of_range_and_wrong_types_are_400_naming_the_field(
        start, field: str, value: Any, words: str) -> None:
    """Each bad value gets 400 with `param` naming the field and a message with the range."""
    server = start(FakeEngine())
    status, _, body = request(server, "POST", "/v1/chat/completions",
                              {"messages": HELLO, field: value})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"].startswith(field) and words in body["error"]["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "max_tokens", "frequency_penalty",
                                   "unknown_field"])
def test_non_finite_numbers_are_refused_anywhere(start, literal: bytes, field: str) -> None:
    """Python's json reads NaN, Infinity and 1e999 (as inf): each is 400 naming its path."""
    server = start(FakeEngine())
    raw = b'{"messages": [{"role": "user", "content": "x"}], "%s": %s}' % (field.encode(),
                                                                           literal)
    status, _, body = request(server, "POST", "/v1/chat/completions", raw=raw,
                              headers={"Content-Type": JSON})
    assert status == 400 and body["error"]["param"] == field
    assert "finite" in body["error"]["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x"}, 7]}, "messages[1]"),
    ({"messages": [{"role": "user", "content": {"text": "x"}}]}, "messages[0].content"),
    ({"messages": [{"role": None, "content": "x"}]}, "messages[0].role"),
    ({"messages": None}, "messages"),
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
    ({"messages": HELLO, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"messages": HELLO, "stop": ["ok", 3]}, "stop[1]"),
])
def test_wrong_types_name_the_json_path(start, body: dict, param: str) -> None:
    """A wrong type deep in the body names its JSON path."""
    server = start(FakeEngine())
    status, _, answer = request(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and answer["error"]["param"] == param, answer


def test_token_ids_outside_the_vocabulary_are_400_naming_the_index(demo_engine, start) -> None:
    """/v1/completions checks each id against the tokenizer's vocabulary (the demo: 1272)."""
    server = start(demo_engine)
    vocab = demo_engine.tokenizer.vocab_size
    for prompt, param in (([1, 2, vocab], "prompt[2]"), ([-1], "prompt[0]"),
                          ([5, 10**30], "prompt[1]"), ([1, True], "prompt[1]"),
                          ([1, 2.0], "prompt[1]"), ([[1, 2], [3]], "prompt[0]"), ([], "prompt"),
                          ("", "prompt"), (None, "prompt"), (["a", "b"], "prompt[0]")):
        status, _, body = request(server, "POST", "/v1/completions",
                                  {"prompt": prompt, "max_tokens": 1})
        assert status == 400 and body["error"]["param"] == param, (prompt, body)
    status, _, body = request(server, "POST", "/v1/completions",
                              {"prompt": [1, 2, vocab - 1], "max_tokens": 1, "temperature": 0})
    assert status == 200 and body["usage"]["prompt_tokens"] == 3
    assert f"0..{vocab - 1}" in request(server, "POST", "/v1/completions",
                                        {"prompt": [vocab]})[2]["error"]["message"]


def test_bodies_that_are_not_json_objects(start) -> None:
    """Deep nesting, bad UTF-8 and non-objects are 400, never 500."""
    server = start(FakeEngine())
    for raw in (b"[" * 100000, b'{"messages": "\xff"}', b"", b"null", b'"x"', b"1e999"):
        status, _, body = request(server, "POST", "/v1/chat/completions", raw=raw,
                                  headers={"Content-Type": JSON})
        assert status == 400 and body["error"]["message"], raw[:20]


# ---- many clients at once, clients that reset ----------------------------------------------


def test_twenty_simultaneous_clients_get_200_or_503_never_a_reset(start) -> None:
    """20 clients at once against a queue of 2: 3 are served (one generates, two wait), 17 get
    503 at once; no connection is reset or left without an answer."""
    engine = FakeEngine(hold=True)
    server = start(engine, max_queue=2)
    barrier = threading.Barrier(20)
    results: list[Any] = []

    def client() -> None:
        barrier.wait(10)
        try:
            results.append(request(server, "POST", "/v1/chat/completions",
                                   {"messages": HELLO})[0])
        except Exception as exc:  # noqa: BLE001  (a reset is what the test looks for)
            results.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while len(results) < 17 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.release.set()
    for thread in threads:
        thread.join(15)
    assert sorted(results, key=str) == [200] * 3 + [503] * 17


def test_clients_that_reset_leave_one_line_and_no_traceback(start, capfd) -> None:
    """A client that resets its connection (RST) mid-stream, mid-body or while queued costs
    the server nothing: no traceback anywhere, and the next request is served."""
    engine = FakeEngine(hold=True)
    lines: list[str] = []
    server = start(engine, log=lines.append)
    body = json.dumps({"messages": HELLO, "stream": True}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    for payload in (head + body, head + body[:10], b"GET /v1/mod"):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(payload)
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    engine.release.set()
    time.sleep(0.3)
    assert request(server, "POST", "/v1/chat/completions", {"messages": HELLO})[0] == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err + "\n".join(lines)
    assert any("/v1/chat/completions 200" in line for line in lines)


# ---- recorded request shapes (tests/data/cases) ---------------------------------------------


def test_case_c15_request_shapes(demo_engine, start) -> None:
    """Text parts (system and user), an assistant message with null content, stop as a string,
    max_completion_tokens: 200 with the reply the engine gives the same turns."""
    server = start(demo_engine)
    body = json.loads((CASES / "c15_shapes.json").read_text(encoding="utf-8"))
    status, _, answer = request(server, "POST", "/v1/chat/completions", body)
    assert status == 200 and answer["object"] == "chat.completion", answer
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "First question"},
             {"role": "assistant", "content": ""},
             {"role": "user", "content": "Second question"}]
    params = GenerationParams(max_tokens=3, seed=1)
    want = "".join(e.text for e in demo_engine.stream_ids(
        demo_engine.chat_prompt_ids(turns), params, None,
        ("<|separator|>", "<|eos|>", "\nHuman:", "zzqq")) if isinstance(e, Token))
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": want}
    assert answer["usage"]["completion_tokens"] <= 3


def test_case_c03_usage_chunk_only_when_asked(demo_engine, start) -> None:
    """stream_options.include_usage: the last chunk before [DONE] has `choices: []` and the
    usage; without it, every chunk has one choice and none carries usage."""
    server = start(demo_engine)
    body = json.loads((CASES / "c03_usage_stream.json").read_text(encoding="utf-8"))
    status, headers, text = request(server, "POST", "/v1/chat/completions", body)
    chunks = sse_objects(text)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"] == []
    usage = chunks[-2]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 5
    assert all(len(c["choices"]) == 1 and "usage" not in c for c in chunks[:-2])
    for options in ({"include_usage": False}, None):
        status, _, text = request(server, "POST", "/v1/chat/completions",
                                  {**body, "stream_options": options})
        chunks = sse_objects(text)
        assert status == 200 and chunks[-1] == "[DONE]"
        assert all(len(c["choices"]) == 1 and "usage" not in c for c in chunks[:-1])


def test_slow_clients_do_not_block_others(start) -> None:
    """A client that sends half its headers, one that sends half its body and one queued
    behind a held generation: the others are still answered at once."""
    engine = FakeEngine()
    server = start(engine)
    slow = []
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for payload in (head + b"Conte",
                    head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(payload)
        slow.append(sock)
    began = time.monotonic()
    assert request(server, "GET", "/v1/models")[0] == 200
    assert request(server, "POST", "/v1/chat/completions", {"messages": HELLO})[0] == 200
    assert time.monotonic() - began < 3
    for sock in slow:
        sock.close()


def test_stop_answers_the_waiting_and_cuts_the_running(start) -> None:
    """stop(): the queued request gets 503 "stopping", the running stream ends without
    [DONE], and both connections close; the port is free for a new server at once."""
    engine = FakeEngine(hold=True)
    server = start(engine, max_queue=4)
    results: dict[str, Any] = {}

    def post(name: str, stream: bool) -> None:
        try:
            results[name] = request(server, "POST", "/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": name}],
                                     "stream": stream})
        except Exception as exc:  # noqa: BLE001  (a cut stream reads as an error)
            results[name] = exc

    running = threading.Thread(target=post, args=("A", True), daemon=True)
    running.start()
    deadline = time.monotonic() + 5
    while engine.started != ["A"] and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = threading.Thread(target=post, args=("B", False), daemon=True)
    waiting.start()
    while server.line.waiting() != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop(5)
    running.join(5)
    waiting.join(5)
    assert results["B"][0] == 503 and "stopping" in results["B"][2]["error"]["message"]
    cut = results["A"]
    assert isinstance(cut, Exception) or "[DONE]" not in cut[2]
    assert engine.started == ["A"]
    again = start(FakeEngine(), port=server.port)
    assert request(again, "GET", "/v1/models")[0] == 200
