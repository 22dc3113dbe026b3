"""A stand-in for the Hugging Face Hub on 127.0.0.1: the two paths huggingface_hub and
app.download use, answered the way huggingface.co answers them.

- `GET /api/models/{repo}[/revision/{rev}]` (`HfApi.model_info(files_metadata=True)`, query
  `blobs=True`): `id`, `sha` (the commit) and `siblings`, each with `rfilename`, `size`,
  `blobId` (git blob sha1) and, for LFS files, `lfs: {size, sha256, pointerSize}`.
- `HEAD`/`GET /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag` (the blob id, quoted),
  for LFS files `X-Linked-Etag` (the sha256) and `X-Linked-Size`, `Content-Length`,
  `Accept-Ranges: bytes`; a `Range: bytes=A-` or `bytes=A-B` request gets 206 and
  `Content-Range`.

Knobs the tests turn: `status` (answer every request with that code, e.g. 401 or 429),
`token` (a gated repo: 401 unless that token is sent),
`corrupt` (file -> how many times to serve it with one byte flipped), `cut_after` (stop the
whole server after this many body bytes: the network going away mid-file), `stall` ((file, n):
send the first n bytes of that file, then nothing until the client hangs up, so a test can stop
the client at a byte it knows arrived). `served` records
every body byte range sent, per file, so a test can check that no byte went out twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".tok.json")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 request handler that logs nothing (the test servers' base)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass


class StandInHub:
    """Serves every file of `folder` as the repo `repo` at commit COMMIT."""

    def __init__(self, folder: Path, repo: str = "xai-org/grok-2") -> None:
        self.repo = repo
        self.files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.status: int | None = None
        self.token: str | None = None  # when set, answer 401 unless `Bearer <token>` is sent
        self.corrupt: dict[str, int] = {}
        self.cut_after: int | None = None
        self.stall: tuple[str, int] | None = None
        self.release = threading.Event()
        self.served: dict[str, list[tuple[int, int]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.body_bytes = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.stopped = threading.Event()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandInHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if not self.stopped.is_set():
            self.stopped.set()
            threading.Thread(target=self._server.shutdown, daemon=True).start()
            self._server.server_close()

    def bytes_served(self, name: str) -> int:
        return sum(b - a for a, b in self.served.get(name, []))

    def overlaps(self) -> dict[str, int]:
        """Per file, how many of its bytes were sent more than once (empty: none twice)."""
        out = {}
        for name, ranges in self.served.items():
            count = bytearray(len(self.files[name]))
            for a, b in ranges:
                for i in range(a, b):
                    count[i] = min(count[i] + 1, 255)
            twice = sum(1 for c in count if c > 1)
            if twice:
                out[name] = twice
        return out

    def model_info(self) -> dict:
        siblings = []
        for name, data in self.files.items():
            entry = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "pointerSize": 134}
            siblings.append(entry)
        return {"id": self.repo, "modelId": self.repo, "sha": COMMIT, "private": False,
                "gated": "manual", "siblings": siblings}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def _plain(self, code: int, payload: dict, error_code: str = "") -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("Retry-After", "30")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _answer(self, body: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append((self.command, path))
                if hub.status:
                    self._plain(hub.status, {"error": f"status {hub.status} (stand-in)"})
                    return
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._plain(401, {"error": "Invalid credentials in Authorization header"})
                    return
                api = f"/api/models/{hub.repo}"
                resolve = f"/{hub.repo}/resolve/"
                if path == api or path.startswith(api + "/revision/"):
                    self._plain(200, hub.model_info())
                elif path.startswith(resolve):
                    rev, _, name = path[len(resolve):].partition("/")
                    if rev not in (COMMIT, "main") or name not in hub.files:
                        self._plain(404, {"error": "Entry not found"}, "EntryNotFound")
                        return
                    self._file(name, body)
                else:
                    self._plain(404, {"error": "Repository not found"}, "RepoNotFound")

            def _file(self, name: str, body: bool) -> None:
                data = hub.files[name]
                if body and hub.corrupt.get(name):
                    hub.corrupt[name] -= 1
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                start, end = 0, len(data)
                m = _RANGE.match(self.headers.get("Range", ""))
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if m else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
                if name.endswith(LFS_SUFFIXES):
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                pos = start
                while pos < end:
                    n = min(4096, end - pos)
                    if hub.stall and hub.stall[0] == name:
                        n = min(n, hub.stall[1] - pos)
                        if n <= 0:
                            hub.stall = None
                            hub.served.setdefault(name, []).append((start, pos))
                            hub.release.wait(10)
                            self.close_connection = True
                            return
                    with hub._lock:
                        if hub.cut_after is not None:
                            n = min(n, hub.cut_after - hub.body_bytes)
                        hub.body_bytes += max(n, 0)
                    if n <= 0:
                        hub.served.setdefault(name, []).append((start, pos))
                        self.close_connection = True
                        hub.stop()
                        return
                    self.wfile.write(data[pos:pos + n])
                    pos += n
                self.wfile.flush()
                hub.served.setdefault(name, []).append((start, end))

        return Handler
