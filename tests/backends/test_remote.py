"""The remote backend: a recorded SGLang stream, scripted failures, and our own `serve`
(also driven by the official `openai` client, a test-only dependency).

Everything listens on 127.0.0.1 (port 0: the OS picks a free port); every wait is bounded.
`serve` runs the tiny demo model in a subprocess with GROK_DESKTOP_HOME in tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.backends import (
    RemoteBackend,
    RemoteConfig,
    RemoteDisconnected,
    RemoteError,
    check_connection,
    connect,
)
from app.backends.remote import GROK2_STOPS, sse_data
from app.engine.chat_format import render_chat
from app.messages import CancelEvent, Finished, GenerationParams, Token

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "sglang_stream.txt"
FIXTURE_TEXT = " My name is Grok, an AI built by xAI. ¿Qué tal? 🚀 Ça va"
KEY = "test-key-123"
GREEDY = GenerationParams(temperature=0, max_tokens=12)
HELLO = [{"role": "user", "content": "What is your name?"}]


# ---- a scripted OpenAI-like server ---------------------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ScriptedServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, None))
        self.server.script(self)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        self.server.script(self)

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream(self, events: list[bytes], end: bool = True, hold: threading.Event | None = None,
               ) -> None:
        """Send events as HTTP chunks; `end=False` drops the connection without the last chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if hold is not None:
            hold.wait(10)
        if end:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class _ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    script: Callable[[_Scripted], None]
    requests: list[tuple[str, dict | None]]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a script writing to a client that has left (the cancel tests) is expected


@pytest.fixture
def scripted() -> Iterator[_ScriptedServer]:
    httpd = _ScriptedServer(("127.0.0.1", 0), _Scripted)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _config(httpd: _ScriptedServer, **kw: object) -> RemoteConfig:
    kw.setdefault("model", "/local/grok-2")
    return RemoteConfig(f"http://127.0.0.1:{httpd.server_address[1]}", **kw)


def _events() -> list[bytes]:
    return [e + b"\n\n" for e in FIXTURE.read_bytes().split(b"\n\n") if e]


def _collect(events: Iterator[Token | Finished]) -> tuple[str, Finished]:
    parts = []
    for event in events:
        if isinstance(event, Finished):
            return "".join(parts), event
        parts.append(event.text)
    raise AssertionError("no Finished event")


def test_importing_the_backends_loads_no_torch_qt_or_engine() -> None:
    """The GUI may import app.backends (RemoteConfig, check_connection): no torch, Qt, engine."""
    code = ("import sys, app.backends; print(sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('PySide6', 'app.engine', 'app.gui'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


# ---- the recorded SGLang stream ------------------------------------------------------------


def test_sglang_fixture_gives_text_finish_and_usage(scripted: _ScriptedServer) -> None:
    """The recorded SGLang stream becomes its text, reason stop and the server's token counts."""
    scripted.script = lambda h: h.stream(_events())
    backend = RemoteBackend(_config(scripted))
    text, done = _collect(backend.stream_chat(HELLO, GenerationParams(seed=7, top_k=20)))
    assert text == FIXTURE_TEXT
    assert done.reason == "stop" and done.seed == 7
    assert (done.stats.prompt_tokens, done.stats.completion_tokens) == (13, 18)
    path, body = scripted.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "/local/grok-2" and body["messages"] == HELLO
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["stop"] == list(GROK2_STOPS) and body["top_k"] == 20 and body["seed"] == 7
    assert "min_p" not in body and "repetition_penalty" not in body  # defaults are not sent


def test_sse_parser_handles_comments_crlf_and_multiline_data() -> None:
    """Comments, CRLF line ends, other fields and multi-line data follow the SSE rules."""
    raw = [b": ping\r\n", b"event: message\r\n", b"data: {\"a\":\r\n", b"data: 1}\r\n",
           b"\r\n", b"data:[DONE]\n", b"\n", b"data: cut off"]
    assert list(sse_data(raw)) == ['{"a":\n1}', "[DONE]"]


def test_stream_cut_mid_reply_raises_disconnected_after_the_text(
        scripted: _ScriptedServer) -> None:
    """A stream that stops before finish_reason yields its text, then RemoteDisconnected."""
    scripted.script = lambda h: h.stream(_events()[:6], end=False)
    backend = RemoteBackend(_config(scripted))
    tokens = []
    with pytest.raises(RemoteDisconnected) as caught:
        tokens.extend(backend.stream_chat(HELLO, GREEDY))
    assert "".join(t.text for t in tokens) == " My name is Grok,"
    assert caught.value.continuable and caught.value.stats.completion_tokens == 5


def test_error_event_mid_stream_is_a_disconnect_with_the_server_message(
        scripted: _ScriptedServer) -> None:
    """An error chunk (SGLang aborting a request) keeps the text and names the reason."""
    error = b'data: {"object":"error","message":"KV cache out of memory","code":503}\n\n'
    scripted.script = lambda h: h.stream([*_events()[:3], error, b"data: [DONE]\n\n"])
    tokens = []
    with pytest.raises(RemoteDisconnected, match="KV cache out of memory"):
        tokens.extend(RemoteBackend(_config(scripted)).stream_chat(HELLO, GREEDY))
    assert "".join(t.text for t in tokens) == " My name"


def test_http_errors_before_the_stream_are_remote_errors(scripted: _ScriptedServer) -> None:
    """401 says the key is wrong; 400 carries the server's own message."""
    scripted.script = lambda h: h.reply(401, b'{"error": {"message": "bad key"}}')
    with pytest.raises(RemoteError, match="rejected the API key") as caught:
        list(RemoteBackend(_config(scripted, api_key="nope")).stream_chat(HELLO, GREEDY))
    assert caught.value.kind == "auth" and not caught.value.continuable
    scripted.script = lambda h: h.reply(400, b'{"object": "error", "message": "prompt too long"}')
    with pytest.raises(RemoteError, match="HTTP 400: prompt too long"):
        list(RemoteBackend(_config(scripted)).stream_chat(HELLO, GREEDY))


def test_cancel_stops_at_once_while_the_server_is_silent(scripted: _ScriptedServer) -> None:
    """Stop during a long silence (prefill) ends the reply as cancelled, not after a timeout."""
    hold = threading.Event()
    scripted.script = lambda h: h.stream(_events()[:2], hold=hold)
    cancel = CancelEvent()  # what the worker passes: Stop shuts the socket down
    events = RemoteBackend(_config(scripted, read_timeout_s=30)).stream_chat(HELLO, GREEDY,
                                                                             cancel)
    start = time.monotonic()
    threading.Timer(0.2, cancel.set).start()
    text, done = _collect(events)
    hold.set()
    assert done.reason == "cancelled" and text == " My"
    assert time.monotonic() - start < 5


def test_cancel_stops_at_once_before_the_server_answers(scripted: _ScriptedServer) -> None:
    """Stop while the server has not even sent its headers (SGLang during prefill)."""
    hold = threading.Event()
    scripted.script = lambda h: (hold.wait(10), h.stream(_events()))
    cancel = CancelEvent()  # what the worker passes: Stop shuts the socket down
    events = RemoteBackend(_config(scripted, read_timeout_s=30)).stream_chat(HELLO, GREEDY,
                                                                             cancel)
    start = time.monotonic()
    threading.Timer(0.2, cancel.set).start()
    text, done = _collect(events)
    hold.set()
    assert done.reason == "cancelled" and text == ""
    assert time.monotonic() - start < 5


def test_silence_longer_than_the_read_timeout_is_a_disconnect(scripted: _ScriptedServer) -> None:
    """A server that stalls mid-reply for longer than read_timeout_s ends it, continuable."""
    hold = threading.Event()
    scripted.script = lambda h: h.stream(_events()[:2], hold=hold)
    backend = RemoteBackend(_config(scripted, read_timeout_s=0.3))
    with pytest.raises(RemoteDisconnected, match=r"sent nothing for 0\.3 s"):
        list(backend.stream_chat(HELLO, GREEDY))
    hold.set()


def test_continue_sends_the_partial_reply_both_ways(scripted: _ScriptedServer) -> None:
    """continue_final_message by default; the completions fallback sends the rendered prompt."""
    scripted.script = lambda h: h.stream(_events())
    _collect(RemoteBackend(_config(scripted)).stream_chat(HELLO, GREEDY, continue_text=" My"))
    path, body = scripted.requests[-1]
    assert path == "/v1/chat/completions" and body["continue_final_message"] is True
    assert body["messages"] == [*HELLO, {"role": "assistant", "content": " My"}]
    backend = RemoteBackend(_config(scripted, continue_via="completions"))
    _collect(backend.stream_chat(HELLO, GREEDY, continue_text=" My"))
    path, body = scripted.requests[-1]
    assert path == "/v1/completions"
    assert body["prompt"] == render_chat(HELLO, continue_text=" My")
    assert body["prompt"].endswith("Assistant: My")


def test_plain_event_cancels_at_the_next_event(scripted: _ScriptedServer) -> None:
    """A plain threading.Event cannot call back: it is checked after each event."""
    scripted.script = lambda h: h.stream(_events())
    cancel = threading.Event()
    events = RemoteBackend(_config(scripted)).stream_chat(HELLO, GREEDY, cancel)
    first = next(events)
    cancel.set()
    text, done = _collect(events)
    assert isinstance(first, Token) and first.text == " My"
    assert done.reason == "cancelled" and text == ""


def test_cancel_event_calls_back_once_in_the_setting_thread() -> None:
    """CancelEvent runs each callback once, at set() or at once if already set; a callback
    that was unregistered does not run."""
    cancel, calls = CancelEvent(), []
    cancel.on_set(lambda: calls.append(("a", threading.current_thread().name)))
    forget = cancel.on_set(lambda: calls.append(("b", "")))
    forget()
    setter = threading.Thread(target=cancel.set, name="setter")
    setter.start()
    setter.join(5)
    cancel.set()
    cancel.on_set(lambda: calls.append(("late", threading.current_thread().name)))
    assert calls == [("a", "setter"), ("late", threading.current_thread().name)]
    assert cancel.is_set() and cancel.wait(0)


# ---- proxies and certificates (httpx with trust_env) ---------------------------------------


def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_http_proxy_from_the_environment_and_no_proxy(scripted: _ScriptedServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY sends the requests through the proxy (absolute URLs); NO_PROXY bypasses it;
    a proxy that is down is named as the problem, not the server."""
    _no_proxy_env(monkeypatch)

    def proxy(h: _Scripted) -> None:
        if h.path.endswith("/v1/models"):
            h.reply(200, b'{"object":"list","data":[{"id":"grok-2"}]}')
        else:
            h.reply(400, b'{"detail": "empty conversation"}')

    scripted.script = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{scripted.server_address[1]}")
    report = check_connection(RemoteConfig("http://gpu-server.invalid:30000"))
    assert report.ok and report.model == "grok-2"
    assert [p for p, _ in scripted.requests] == ["http://gpu-server.invalid:30000/v1/models",
                                                 "http://gpu-server.invalid:30000/v1/chat/completions"]
    monkeypatch.setenv("NO_PROXY", "gpu-server.invalid")
    dialled = []

    def no_dns(address: tuple[str, int], *args: object, **kw: object) -> None:
        dialled.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.MonkeyPatch.context() as dns:  # (monkeypatch.undo() would also undo the
        dns.setattr(socket, "create_connection", no_dns)  # fixtures' patches)
        report = check_connection(RemoteConfig("http://gpu-server.invalid:30000"))
    assert report.kind == "unreachable" and "'gpu-server.invalid'" in report.message
    assert dialled == [("gpu-server.invalid", 30000)]
    _no_proxy_env(monkeypatch)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    report = check_connection(RemoteConfig("http://gpu-server.invalid:30000"))
    assert report.kind == "unreachable"
    assert report.message.startswith(f"Cannot reach the proxy 127.0.0.1:{closed_port} on the "
                                     "way to gpu-server.invalid:30000 (Connection refused)")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_ScriptedServer, Path]]:
    """The scripted server over TLS with a certificate from a test CA; yields it and the CA's
    PEM file."""
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    httpd = _ScriptedServer(("127.0.0.1", 0), _Scripted)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd, ca_file
    httpd.shutdown()
    httpd.server_close()


def test_tls_checks_certificates_as_httpx_does(tls_server: tuple[_ScriptedServer, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown CA fails the handshake with one line (certifi's bundle does not know it);
    SSL_CERT_FILE naming the CA makes the same server work, and Stop over TLS is at once."""
    httpd, ca_file = tls_server
    _no_proxy_env(monkeypatch)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    httpd.script = _models_then(400)
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    report = check_connection(RemoteConfig(url, model="/local/grok-2"))
    assert report.kind == "unreachable"
    assert report.message.startswith(f"The TLS handshake with 127.0.0.1:{httpd.server_address[1]}"
                                      " failed (CERTIFICATE_VERIFY_FAILED)")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert check_connection(RemoteConfig(url, model="/local/grok-2")).ok
    hold = threading.Event()
    httpd.script = lambda h: h.stream(_events()[:2], hold=hold)
    cancel = CancelEvent()
    events = RemoteBackend(RemoteConfig(url, model="/local/grok-2", read_timeout_s=30)
                           ).stream_chat(HELLO, GREEDY, cancel)
    start = time.monotonic()
    threading.Timer(0.2, cancel.set).start()
    text, done = _collect(events)
    hold.set()
    assert done.reason == "cancelled" and text == " My"
    assert time.monotonic() - start < 5


# ---- the connection test -------------------------------------------------------------------


def _models_then(chat_status: int) -> Callable[[_Scripted], None]:
    def script(h: _Scripted) -> None:
        if h.path == "/v1/models":
            h.reply(200, b'{"object":"list","data":[{"id":"/local/grok-2","max_model_len":131072}]}')
        else:
            h.reply(chat_status, b'{"detail": "Not Found"}')
    return script


def test_connection_check_ok_and_wrong_model(scripted: _ScriptedServer) -> None:
    """A chat server that lists the model is ok; another name is refused with the real one."""
    scripted.script = _models_then(400)
    report = check_connection(_config(scripted))
    assert report.ok and report.context_length == 131072
    assert report.message.endswith("model '/local/grok-2' is ready, context 131072 tokens.")
    wrong = check_connection(_config(scripted, model="grok-2"))
    assert wrong.kind == "wrong_model" and "'/local/grok-2'" in wrong.message
    assert connect(RemoteConfig(_config(scripted).base_url + "/v1")).info.context_length == 131072


def test_connection_check_names_each_problem(scripted: _ScriptedServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused, no answer, bad key, not OpenAI, no chat endpoint, bad URL, unknown host."""
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    assert check_connection(RemoteConfig(f"127.0.0.1:{closed_port}")).kind == "refused"
    with socket.socket() as mute:  # listens, never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        report = check_connection(RemoteConfig(f"http://127.0.0.1:{mute.getsockname()[1]}",
                                               connect_timeout_s=0.3))
        assert report.kind == "timeout" and "no answer within 0.3 s" in report.message
    scripted.script = lambda h: h.reply(401, b"{}")
    assert "requires an API key" in check_connection(_config(scripted)).message
    scripted.script = lambda h: h.reply(200, b"<html>hello</html>", "text/html")
    assert check_connection(_config(scripted)).kind == "not_openai"
    scripted.script = _models_then(404)
    report = check_connection(_config(scripted))
    assert report.kind == "not_openai" and "no /v1/chat/completions" in report.message
    assert check_connection(RemoteConfig("ftp://x")).kind == "bad_url"

    def no_dns(*args: object, **kw: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    report = check_connection(RemoteConfig("http://grok.invalid:30000"))
    assert report.kind == "unreachable" and "'grok.invalid'" in report.message


# ---- against our own `serve` ---------------------------------------------------------------

# Slows the engine to 20 ms a token and disables its stop tokens, so a reply is long enough to
# kill the server in the middle of it. Everything else is the real command.
_SLOW_SERVE = """
import sys, time
from app.engine.engine import Engine
original = Engine.stream_ids
def slow(self, ids, params, cancel=None, stop_strings=()):
    self.stop_ids = set()
    for event in original(self, ids, params, cancel, ()):
        time.sleep(0.02)
        yield event
Engine.stream_ids = slow
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_serve(home: Path, *args: str, code: str | None = None,
                ) -> tuple[subprocess.Popen, str]:
    """`grok-desktop serve --demo --port 0` in a subprocess; returns it and its base URL."""
    command = ["-c", code] if code else ["-m", "app"]
    env = {**os.environ, "GROK_DESKTOP_HOME": str(home)}
    log = open(home.parent / "serve.log", "ab")  # noqa: SIM115  (the child writes to it)
    proc = subprocess.Popen([sys.executable, *command, "serve", "--demo", "--port", "0", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline().decode()
            found = re.search(r"http://\S+/v1", line)
            if found:
                return proc, found.group()
    proc.kill()
    raise AssertionError(f"serve did not start; see {home.parent / 'serve.log'}")


def stop_serve(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GROK_DESKTOP_HOME for the module: the demo checkpoint is written once."""
    return tmp_path_factory.mktemp("serve") / "home"


@pytest.fixture(scope="module")
def served(home: Path) -> Iterator[str]:
    proc, url = start_serve(home, "--api-key", KEY)
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def local_engine(served: str, home: Path):
    from app.engine.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROK_DESKTOP_HOME", str(home))
        yield Engine.demo()


def test_remote_reply_equals_the_local_engine(served: str, local_engine) -> None:
    """Greedy chat through HTTP and SSE gives exactly the text the engine gives in-process."""
    backend = connect(RemoteConfig(served, api_key=KEY))
    assert backend.config.model == "grok-2-demo"
    for continue_text in (None, " Hello"):
        text, done = _collect(backend.stream_chat(HELLO, GREEDY, continue_text=continue_text))
        want, want_done = _collect(local_engine.stream_chat(HELLO, GREEDY,
                                                            continue_text=continue_text))
        assert text == want and done.reason == want_done.reason
        assert done.stats.completion_tokens == want_done.stats.completion_tokens


def test_connection_check_against_serve(served: str) -> None:
    """Our server passes the check with its key and reports a wrong key as such."""
    assert check_connection(RemoteConfig(served, api_key=KEY)).ok
    report = check_connection(RemoteConfig(served, api_key="wrong"))
    assert report.kind == "auth" and "rejected the API key" in report.message


def test_server_killed_mid_stream_is_reported_as_a_disconnect(home: Path) -> None:
    """kill -9 of `serve` while it streams: the text so far, then RemoteDisconnected."""
    proc, url = start_serve(home, code=_SLOW_SERVE)
    try:
        backend = connect(RemoteConfig(url, read_timeout_s=10))
        tokens: list[Token] = []
        events = backend.stream_chat(HELLO, GenerationParams(temperature=0, max_tokens=500))
        with pytest.raises(RemoteDisconnected) as caught:
            for event in events:
                assert isinstance(event, Token), "the reply finished before the kill"
                tokens.append(event)
                if len(tokens) == 3:
                    proc.kill()
                    proc.wait(10)
        assert 3 <= len(tokens) < 500
        message = str(caught.value)
        assert caught.value.continuable and ("dropped" in message or "closed" in message)
        assert caught.value.stats.completion_tokens == len(tokens)
    finally:
        if proc.poll() is None:
            stop_serve(proc)


def test_openai_client_lists_models_and_chats_with_serve(served: str) -> None:
    """The official openai client lists the model and chats with and without streaming."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served, api_key=KEY, max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == ["grok-2-demo"]
    whole = client.chat.completions.create(model="grok-2-demo", messages=HELLO, max_tokens=8,
                                           temperature=0, seed=1)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 8
    stream = client.chat.completions.create(model="grok-2-demo", messages=HELLO, max_tokens=8,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served, api_key="wrong", max_retries=0).models.list()
