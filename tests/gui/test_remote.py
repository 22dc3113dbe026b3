"""The remote backend and the API server switch through the GUI, over real HTTP on loopback:
our own `ApiServer` serves the tiny demo engine in this process, and the app talks to it as it
would to SGLang. Also the live placement preview of the Memory tab."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from PySide6.QtCore import Qt

from app.api.server import ApiServer
from app.gui.settings_dialog import SettingsDialog
from app.messages import GenerationParams, Token
from app.settings import Settings

from .conftest import load_demo, wait


class SlowEngine:
    """The demo engine, a little slower per token, so a test can act in mid-reply."""

    def __init__(self, engine, delay: float) -> None:
        self._engine, self.delay = engine, delay

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def stream_ids(self, *args, **kwargs):
        for event in self._engine.stream_ids(*args, **kwargs):
            if isinstance(event, Token):
                time.sleep(self.delay)
            yield event


@pytest.fixture
def serve(home):
    """serve(delay=0, port=0) -> a started ApiServer on 127.0.0.1 over the demo engine."""
    from app.engine.engine import Engine

    engine = Engine.demo()
    servers = []

    def start(delay: float = 0.0, port: int = 0) -> ApiServer:
        server = ApiServer(SlowEngine(engine, delay) if delay else engine, port=port)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote(url: str, max_tokens: int = 12, **more) -> Settings:
    return Settings(welcome_done=True, backend="remote", remote_url=url,
                    sampling=GenerationParams(max_tokens=max_tokens, seed=1), **more)


def send(qtbot, window, text: str) -> None:
    window.composer.set_text(text)
    qtbot.keyClick(window.composer.edit, Qt.Key.Key_Return)


def only_reply(window):
    conv = window.chat.store.get_conversation(window.chat.conversation_id)
    [reply] = [m for m in conv.messages if m.role == "assistant"]
    return reply


def start_remote(qtbot, window) -> None:
    window.start()
    wait(qtbot, lambda: window.worker.info is not None and not window.loader.loading)


def test_remote_reply_streams_and_is_stored(qtbot, make_window, serve):
    """With the remote backend, a message sent from the GUI streams over HTTP and is stored;
    the status bar names the remote model and says remote; the API switch explains it is off."""
    server = serve()
    window = make_window(remote(server.url, api_server_enabled=True))
    start_remote(qtbot, window)
    assert window.status.model.text() == "grok-2-demo (remote)"
    assert window.status.device.text().startswith("remote · 127.0.0.1:")
    assert "remote server" in window.status.api.text() and window.worker.api_server_url is None
    send(qtbot, window, "Hello over HTTP")
    wait(qtbot, lambda: window.chat.generating)
    wait(qtbot, lambda: not window.chat.generating)
    reply = only_reply(window)
    assert reply.status == "complete" and reply.finish_reason == "length"
    assert reply.content and reply.stats["completion_tokens"] == 12
    assert window.transcript.widget_for(reply.id).view.text == reply.content


def test_server_stopping_mid_reply_leaves_it_interrupted_and_continuable(qtbot, make_window,
                                                                          serve):
    """The server going away mid-stream keeps the text as `interrupted`, shows one error, and
    Continue finishes the reply once the server is back."""
    server = serve(delay=0.05)
    window = make_window(remote(server.url, max_tokens=200))
    start_remote(qtbot, window)
    send(qtbot, window, "Tell me a long story")
    wait(qtbot, lambda: window.transcript.repaints > 0)
    server.stop(0)
    wait(qtbot, lambda: not window.chat.generating)
    reply = only_reply(window)
    assert reply.status == "interrupted" and reply.content
    assert window.error_banner.shown_count == 1
    assert "can be continued" in window.error_banner.message
    assert window.transcript.widget_for(reply.id).view.status == "interrupted"

    serve(port=server.port)  # the server is back on the same address
    window.transcript.action.emit("continue", reply.id)
    wait(qtbot, lambda: window.chat.generating)
    wait(qtbot, lambda: not window.chat.generating)
    again = only_reply(window)
    assert again.status == "complete" and again.content.startswith(reply.content)
    assert len(again.content) > len(reply.content)


def test_test_connection_says_refused_then_ok(qtbot, loop, home, serve):
    """The button runs the check off the GUI thread and shows its exact one-line message."""
    dialog = SettingsDialog(remote(f"http://127.0.0.1:{free_port()}"))
    qtbot.addWidget(dialog)
    assert dialog.backend_pages.currentWidget() is dialog.remote
    qtbot.mouseClick(dialog.remote.test, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: dialog.remote.report is not None)
    assert dialog.remote.report.kind == "refused"
    assert dialog.remote.result.text() == dialog.remote.report.message
    assert "refused" in dialog.remote.result.text()

    dialog.remote.url.setText(serve().url)
    dialog.remote.report = None
    qtbot.mouseClick(dialog.remote.test, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: dialog.remote.report is not None)
    assert dialog.remote.report.ok
    assert dialog.remote.result.text().startswith("Connected to 127.0.0.1:")
    assert dialog.remote.test.isEnabled()


def get_models(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
        return json.loads(answer.read())


def test_api_switch_serves_the_loaded_model_and_stops(qtbot, make_window):
    """Switching the API server on in Settings serves GET /v1/models; off frees the port."""
    window = make_window(Settings(welcome_done=True))
    load_demo(qtbot, window)
    port = free_port()
    dialog = window.open_settings()
    dialog.api.enabled.setChecked(True)
    dialog.api.port.setValue(port)
    assert not dialog.api.allow_remote.isEnabled()  # no key: other machines are not an option
    dialog.accept()
    url = window.worker.api_server_url
    assert url == f"http://127.0.0.1:{port}/v1" and window.status.api.text() == f"API on {url}"
    assert get_models(url)["data"][0]["id"] == "grok-2-demo"

    dialog = window.open_settings()
    dialog.api.enabled.setChecked(False)
    dialog.accept()
    assert window.worker.api_server_url is None and window.status.api.text() == ""
    with pytest.raises(urllib.error.URLError):
        get_models(url)


def test_allow_remote_needs_a_key(qtbot, home):
    """The allow-remote box is usable only with a key, and the note says why."""
    dialog = SettingsDialog(Settings())
    qtbot.addWidget(dialog)
    api = dialog.api
    assert not api.allow_remote.isEnabled() and "only with a key" in api.why.text()
    api.key.setText("sk-1")
    api.allow_remote.setChecked(True)
    assert dialog.edited()[0].api_server_allow_remote
    api.key.setText("")
    assert not api.allow_remote.isChecked() and not dialog.edited()[0].api_server_allow_remote


def test_plan_text_follows_the_budgets(qtbot, home, make_window):
    """The Memory tab re-plans on every change: GB per tier and the speed bound, or the
    planner's explanation of the shortfall; the budgets reach the load request."""
    settings = Settings(quantization="int4", gpu_memory_gb=48, cpu_memory_gb=256)
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    first = dialog.placement.text()
    assert first.startswith("Fits: GPU") and "tokens/s" in first and "145.3 GB" in first
    assert "shared MLPs (64 of 64)" in dialog.plan_detail.toPlainText()
    dialog.gpu_budget.setValue(24)
    assert dialog.placement.text() != first and "of 24 GB" in dialog.placement.text()
    assert "shared MLPs (64 of 64)" not in dialog.plan_detail.toPlainText()
    dialog.gpu_budget.setValue(2)
    text = dialog.placement.text()
    assert text.startswith("Does not fit") and "the budget is 2.0 GB" in text
    assert dialog.plan_detail.isHidden()
    dialog.device.setCurrentText("cpu")
    assert "CPU only" in dialog.placement.text()
    edited = dialog.edited()[0]
    assert (edited.device, edited.gpu_memory_gb, edited.context_tokens) == ("cpu", 2, 8192)

    window = make_window(replace(edited, device="auto"))
    request = window._load_request("/grok")
    assert request.budgets == (2 * 10**9, 256 * 10**9) and request.context_length == 8192
