"""The download through an HTTP proxy named the standard way (HTTPS_PROXY / HTTP_PROXY, read by
huggingface_hub's HTTP client): every request goes through it, the files arrive intact, and a
proxy that is down is one line."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from app.download.hub import DownloadError
from app.download.pipeline import Request, look, run
from tests.download.hub import QuietHandler, StandInHub

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "transfer-encoding", "te", "trailer", "upgrade"}


class ForwardProxy:
    """A plain HTTP forward proxy on 127.0.0.1 (absolute-URI requests, as clients send them to
    a proxy for http:// URLs), recording each URL it forwards."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._forward()

            def do_HEAD(self) -> None:
                self._forward()

            def _forward(self) -> None:
                proxy.seen.append(self.path)
                url = urlsplit(self.path)
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""),
                             headers=headers)
                reply = conn.getresponse()
                body = reply.read()
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fresh_hf_client() -> Iterator[None]:
    """huggingface_hub reads the proxy variables when it makes its HTTP client: a new one
    before and after the test."""
    from huggingface_hub.utils._http import close_session

    close_session()
    yield
    close_session()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    yield server
    server.stop()


def _use_proxy(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("HTTPS_PROXY", url)


def test_download_goes_through_the_proxy(hub: StandInHub, repo_folder, proxy: ForwardProxy,
                                         tmp_path, monkeypatch, fresh_hf_client):
    """With HTTP(S)_PROXY set, the listing and every file's bytes go through the proxy and
    arrive byte-identical; nothing reaches the hub any other way."""
    _use_proxy(monkeypatch, proxy.url)
    folder = run(look(Request(tmp_path / "grok-2", endpoint=hub.endpoint)))
    for name, data in hub.files.items():
        if name != ".gitattributes":
            assert (folder / name).read_bytes() == data, name
            assert any(url.startswith(hub.endpoint) and url.endswith("/" + name)
                       for url in proxy.seen), name
    assert any("/api/models/" in url for url in proxy.seen)
    assert all(url.startswith(hub.endpoint) for url in proxy.seen)


def test_a_proxy_that_is_down_is_one_line(hub: StandInHub, tmp_path, monkeypatch,
                                          fresh_hf_client):
    """A proxy variable pointing at nothing: one line that names the network or proxy."""
    dead = ForwardProxy()
    url = dead.url
    dead.stop()
    _use_proxy(monkeypatch, url)
    with pytest.raises(DownloadError, match="cannot connect through the proxy") as exc:
        look(Request(tmp_path / "grok-2", endpoint=hub.endpoint))
    assert url in str(exc.value) and "HTTPS_PROXY" in str(exc.value)
    assert "\n" not in str(exc.value)
