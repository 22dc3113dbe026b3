"""Generated and mutated request bodies and headers against the local API server: each ends in
2xx or a clean 4xx with OpenAI's error JSON; never a 500, never a dropped connection.

One server for the module, over the demo model's tokenizer, chat template and prompt checks
with a two-token decode through the real sampler (`QuickDemo`): the whole tiny model would take
seconds a case. Counts per endpoint are printed at the end (pytest -s shows them).
"""

from __future__ import annotations

import http.client
import json
import string
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.api.server import ROUTES, ApiServer
from app.messages import Finished, GenerationParams, GenerationStats, Token

EXAMPLES = 150  # per test below; chat and completions each get two tests (valid, mutated)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
COUNTS: Counter[tuple[str, str]] = Counter()


class QuickDemo:
    """The demo engine with a short decode: real prompt checks (Engine.stream_ids), the ids
    through the real embedding (an id outside the vocabulary would raise), then two tokens
    sampled by app.engine.sampling from random logits with the request's settings."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.info, self.tokenizer = engine, engine.info, engine.tokenizer
        self.context_length = engine.context_length

    def chat_prompt_ids(self, messages: list[dict], continue_text: str | None = None,
                        ) -> list[int]:
        return self.engine.chat_prompt_ids(messages, continue_text)

    def stream_ids(self, ids: list[int], params: GenerationParams,
                   cancel: threading.Event | None = None,
                   stop_strings: tuple[str, ...] = ()) -> Iterator[Token | Finished]:
        import torch

        from app.engine.sampling import make_generator, sample_next

        self.engine.stream_ids(ids, params, cancel, stop_strings).close()  # length checks

        def run() -> Iterator[Token | Finished]:
            prompt = torch.tensor(ids)
            self.engine.model.model.embed_tokens(prompt)
            generator, _ = make_generator(params.seed)
            logits = torch.randn(self.engine.model.config.vocab_size, generator=generator) * 5
            for _ in range(min(2, params.max_tokens)):
                token = sample_next(logits, prompt, params, generator)
                yield Token(self.tokenizer.decode([token]))
            yield Finished("length", GenerationStats(len(ids), min(2, params.max_tokens)))

        return run()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    from app.engine.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROK_DESKTOP_HOME", str(tmp_path_factory.mktemp("home")))
        api = ApiServer(QuickDemo(Engine.demo()), port=0, max_queue=64)
        api.start()
        yield api
        api.stop()
    for endpoint in sorted({e for e, _ in COUNTS}):
        row = {k: COUNTS[endpoint, k] for k in ("cases", "2xx", "4xx", "500", "dropped")}
        print(f"\nfuzz {endpoint}: {row}")


def post(server: ApiServer, path: str, data: bytes, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, str, str]:
    """Send and read the whole answer; a reset or cut answer is counted and re-raised."""
    path_only = path.partition("?")[0].rstrip("/")
    endpoint = path_only if path_only in ROUTES else "other paths"
    COUNTS[endpoint, "cases"] += 1
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=data if method == "POST" else None,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode("utf-8")
    except (OSError, http.client.HTTPException):
        COUNTS[endpoint, "dropped"] += 1
        raise
    finally:
        conn.close()
    status = response.status
    COUNTS[endpoint, "2xx" if status < 300 else "4xx" if status < 500 else "500"] += 1
    return status, response.getheader("Content-Type", ""), text


def assert_clean(status: int, kind: str, text: str, stream: bool) -> None:
    """2xx with a whole answer, or 4xx with OpenAI's error JSON."""
    assert status < 500, text
    if status >= 400:
        assert kind.startswith("application/json"), (status, kind, text)
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] and error["param"] is None or isinstance(error["param"], str)
        return
    if stream:
        assert kind.startswith("text/event-stream") and text.endswith("data: [DONE]\n\n"), text
    else:
        assert json.loads(text)["choices"][0]["finish_reason"] == "length"


# ---- strategies ----------------------------------------------------------------------------

nullable = st.none()
text = st.text(max_size=20)
unicode_text = st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates too
floats = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | floats | unicode_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6)
part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
content = st.one_of(text, st.lists(part, max_size=3), nullable)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": content},
    optional={"name": st.one_of(text, nullable)})
sampling = {
    "model": st.one_of(nullable, st.just("grok-2-demo"), text),
    "temperature": st.one_of(nullable, st.floats(0, 2), st.floats(0, 1e-30), st.just(0)),
    "top_p": st.one_of(nullable, st.floats(0, 1, exclude_min=True), st.just(5e-324)),
    "top_k": st.one_of(nullable, st.integers(-1, 2000)),
    "min_p": st.one_of(nullable, st.floats(0, 1, exclude_max=True)),
    "repetition_penalty": st.one_of(nullable, st.floats(0.01, 2)),
    "frequency_penalty": st.one_of(nullable, st.floats(-2, 2)),
    "presence_penalty": st.one_of(nullable, st.floats(-2, 2)),
    "max_tokens": st.one_of(nullable, st.integers(1, 10**6)),
    "seed": st.one_of(nullable, st.integers(0, 2**63 - 1)),
    "stop": st.one_of(nullable, st.text(min_size=1, max_size=5),
                      st.lists(st.text(min_size=1, max_size=5), max_size=16)),
    "stream": st.one_of(nullable, st.booleans()),
    "stream_options": st.one_of(nullable, st.fixed_dictionaries(
        {}, optional={"include_usage": st.one_of(nullable, st.booleans())})),
    "n": st.one_of(nullable, st.just(1)),
    "user": st.one_of(nullable, text),
    "logprobs": st.one_of(nullable, st.just(False)),
}
chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(message, min_size=1, max_size=4)},
    optional={**sampling, "continue_final_message": st.one_of(nullable, st.booleans())})
prompts = st.one_of(st.text(min_size=1, max_size=30),
                    st.lists(st.integers(0, 1271), min_size=1, max_size=30),
                    st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=1))
completion_bodies = st.fixed_dictionaries(
    {"prompt": prompts},
    optional={**sampling, "echo": st.one_of(nullable, st.just(False)),
              "best_of": st.one_of(nullable, st.just(1))})


def paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every JSON path in a value (keys and list indexes)."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*path, i))


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy) -> bytes:
    """A valid body with one or two changes: a value replaced by any JSON value, a key
    removed or added, or the encoded bytes cut, spliced or re-encoded."""
    body = draw(bodies)
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(list(paths(body))))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not where:
            body = draw(json_values) if action == "replace" else body
            continue
        parent = body
        for step in where[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[where[-1]] = draw(json_values)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from([*sampling, "messages", "prompt", "zz"]))] = draw(
                json_values)
    data = json.dumps(body, allow_nan=True).encode()
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "splice", "utf16"]))
    if damage == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at:]
    elif damage == "utf16":
        data = data.decode().encode("utf-16")
    return data


# ---- the properties ------------------------------------------------------------------------


@FUZZ
@given(body=chat_bodies)
def test_valid_chat_bodies_are_served(server: ApiServer, body: dict) -> None:
    """Any well-formed chat body (nulls, parts, stops, tiny temperatures) gets a whole 200."""
    status, kind, text = post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 200, text
    assert_clean(status, kind, text, body.get("stream") is True)


def asks_to_stream(data: bytes) -> bool:
    """Whether the body, read as the server reads it (JSON in UTF-8, -16 or -32), asks for a
    stream; a byte search misses a UTF-16 body."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("stream") is True


@FUZZ
@given(data=mutated(chat_bodies))
def test_mutated_chat_bodies_end_cleanly(server: ApiServer, data: bytes) -> None:
    """Broken chat bodies end in 2xx or a clean 4xx, never 500 or a dropped connection."""
    status, kind, text = post(server, "/v1/chat/completions", data)
    assert_clean(status, kind, text, asks_to_stream(data))


@FUZZ
@given(body=completion_bodies)
def test_valid_completion_bodies_are_served(server: ApiServer, body: dict) -> None:
    """Any well-formed completions body (text or token ids in the vocabulary) gets 200."""
    status, kind, text = post(server, "/v1/completions", json.dumps(body).encode())
    assert status == 200, text
    assert_clean(status, kind, text, body.get("stream") is True)


@FUZZ
@given(data=mutated(completion_bodies))
def test_mutated_completion_bodies_end_cleanly(server: ApiServer, data: bytes) -> None:
    """Broken completions bodies (ids out of the vocabulary too) end in 2xx or a clean 4xx."""
    status, kind, text = post(server, "/v1/completions", data)
    assert_clean(status, kind, text, asks_to_stream(data))


HOSTS = ["127.0.0.1", "localhost", "[::1]", "127.0.0.1:{port}", "localhost:{port}",
         "evil.example", "evil.example:{port}", "127.0.0.1:9", "", "[::1", "a:b:c"]
ORIGINS = [None, "http://evil.example", "null", "http://127.0.0.1:{port}", "http://localhost"]
TYPES = [None, "application/json", "application/json; charset=utf-8", "text/plain",
         "application/x-www-form-urlencoded", "", "json"]


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.sampled_from(HOSTS), origin=st.sampled_from(ORIGINS),
       content_type=st.sampled_from(TYPES),
       route=st.sampled_from([("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                              ("GET", "/v1/chat/completions"), ("POST", "/v1/nope")]))
def test_headers_decide_as_the_rules_say(server: ApiServer, host: str, origin: str | None,
                                         content_type: str | None, route: tuple) -> None:
    """Host, Origin, Content-Type, path and method in any combination: the first rule that
    applies decides (403 Host, 403 Origin, 404/405, 415), else 200. (An HTTP/1.1 request with
    no Host is h11's 400; sent with a body, uvicorn closes with the body unread, which the
    kernel may turn into a reset: no client sends one, so only GETs go without a Host.)"""
    assume(host or route[0] == "GET")
    port = server.port
    host, origin = host.format(port=port), origin and origin.format(port=port)
    method, path = route
    headers = {"Host": host} if host else {}
    if origin:
        headers["Origin"] = origin
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    if method == "POST":
        if content_type is not None:
            conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body.encode() if method == "POST" else None)
    response = conn.getresponse()
    response.read()
    conn.close()
    COUNTS["headers", "cases"] += 1
    COUNTS["headers", "2xx" if response.status < 300 else "4xx"] += 1
    host_ok = host in ("127.0.0.1", "localhost", "[::1]", f"127.0.0.1:{port}",
                       f"localhost:{port}")
    if not host:
        want = 400  # HTTP/1.1 requires Host (h11 refuses before the app)
    elif not host_ok or origin not in (None, f"http://127.0.0.1:{port}"):
        want = 403
    elif path == "/v1/nope":
        want = 404
    elif (method == "GET") != (path == "/v1/models"):
        want = 405
    elif method == "POST" and content_type not in (None, "application/json",
                                                   "application/json; charset=utf-8"):
        want = 415
    else:
        want = 200
    assert response.status == want, (headers, content_type, route)


URL_CHARS = string.ascii_letters + string.digits + "/._-~%?=&+:@!$'()*,;"


@FUZZ
@given(method=st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.one_of(st.just("/v1/models"), st.sampled_from(list(ROUTES)),
                      st.text(URL_CHARS, max_size=30).map(lambda p: "/" + p)),
       query=st.one_of(st.just(""), st.text(URL_CHARS, max_size=20).map(lambda q: "?" + q)),
       auth=st.one_of(st.none(), st.text(string.printable.strip(), max_size=20)))
def test_any_method_and_path_ends_cleanly(server: ApiServer, method: str, path: str,
                                          query: str, auth: str | None) -> None:
    """/v1/models with any query, and any method on any path (with any Authorization, which
    this server ignores without a key): 2xx or a clean 4xx JSON error, never 500."""
    headers = {"Authorization": auth} if auth is not None else {}
    status, kind, text = post(server, path + query, b"{}", headers, method=method)
    if method == "GET" and path.rstrip("/") == "/v1/models":
        assert status == 200 and json.loads(text)["data"][0]["id"] == "grok-2-demo"
    else:
        assert_clean(status, kind, text, stream=False)


@settings(FUZZ, max_examples=200)
@given(query=st.text(URL_CHARS, max_size=30),
       extra=st.dictionaries(st.sampled_from(["Accept", "Authorization", "User-Agent",
                                              "X-Stainless-Os", "Accept-Encoding", "Cookie"]),
                             st.text(string.printable.strip(), max_size=30), max_size=4))
def test_models_answers_any_query_and_headers(server: ApiServer, query: str,
                                              extra: dict[str, str]) -> None:
    """GET /v1/models with any query string and the headers SDKs send: always the model."""
    status, kind, text = post(server, "/v1/models?" + query, b"", extra, method="GET")
    assert status == 200 and kind.startswith("application/json"), text
    assert json.loads(text)["data"][0]["max_model_len"] == server.engine.context_length
