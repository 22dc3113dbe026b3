"""The Hugging Face Hub, through huggingface_hub: the repo's file list with sizes and checksums,
and byte ranges of one file, with the errors turned into one line each.

huggingface_hub supplies the endpoint (`HF_ENDPOINT`), the token (`HF_TOKEN` or `hf auth
login`), the user agent, proxies (its shared HTTP client reads `HTTPS_PROXY` etc. from the
environment, or `huggingface_hub.set_client_factory`) and the error classes. The bytes are
fetched here, not by `hf_hub_download`, because huggingface_hub 2.x downloads each file to a
process-unique temporary file that it deletes on any failure: a download interrupted by a
restart would start that file over. Here the partial file stays and the next run asks for the
rest with `Range`, so no byte is fetched twice.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from app.errors import UserError

REPO = "xai-org/grok-2"
LICENSE_URL = "https://huggingface.co/xai-org/grok-2/blob/main/LICENSE"
SKIP = (".gitattributes",)
KEEP = "the partial download is kept; run the download again to resume"


class DownloadError(UserError):
    """The download stopped; the message says why and that the partial download is kept."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo at one commit. `sha256` for LFS files (the hub's checksum of the
    content), else None and `blob_id` (the git blob sha1) identifies the content."""

    name: str
    size: int
    sha256: str | None
    blob_id: str | None


@dataclass(frozen=True)
class Snapshot:
    repo: str
    commit: str
    files: tuple[RemoteFile, ...]
    endpoint: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.name == name)


def endpoint_or_default(endpoint: str | None) -> str:
    """The endpoint given, else huggingface_hub's (HF_ENDPOINT, default huggingface.co)."""
    return (endpoint or constants.ENDPOINT).rstrip("/")


def snapshot_info(repo: str = REPO, revision: str | None = None, endpoint: str | None = None,
                  token: str | bool | None = None) -> Snapshot:
    """The files of `repo` at `revision` (branch, tag or commit; default main), each with its
    size and checksum, and the commit they belong to. Raises DownloadError (one line)."""
    endpoint = endpoint_or_default(endpoint)
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo, revision=revision, files_metadata=True)
    except Exception as exc:  # every failure becomes one line
        raise hub_error(exc, f"{repo} on {endpoint}") from exc
    files = []
    for s in info.siblings or []:
        if s.rfilename in SKIP or s.rfilename.startswith(".") or "/" in s.rfilename:
            continue
        size = s.lfs.size if s.lfs else s.size
        if size is None:
            raise DownloadError(f"{endpoint}: the hub did not send the size of {s.rfilename}; "
                                "is HF_ENDPOINT a Hugging Face Hub?")
        files.append(RemoteFile(s.rfilename, int(size), s.lfs.sha256 if s.lfs else None,
                                s.blob_id))
    if not info.sha:
        raise DownloadError(f"{endpoint}: the hub did not send the commit of {repo}")
    return Snapshot(repo, info.sha, tuple(files), endpoint)


@contextmanager
def open_range(snapshot: Snapshot, name: str, start: int, end: int | None = None,
               token: str | bool | None = None) -> Iterator:
    """A streamed response for bytes [start, end) of `name` at the snapshot's commit (the
    whole rest when end is None). The caller checks `status_code` (206: the range, 200: the
    whole file from byte 0). Raises huggingface_hub's and its HTTP client's errors: the caller
    turns them into one line with `hub_error`."""
    url = hf_hub_url(snapshot.repo, name, revision=snapshot.commit, endpoint=snapshot.endpoint)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if start or end is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    with get_session().stream("GET", url, headers=headers, timeout=30.0) as response:
        hf_raise_for_status(response)
        yield response


def _proxy_setting() -> tuple[str, str] | None:
    """(variable, value) of the proxy variable the HTTP client uses, if one is set."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        if os.environ.get(name):
            return name, os.environ[name]
    return None


def hub_error(exc: BaseException, where: str) -> UserError:
    """One line for a failed hub request: what happened and what to do."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError(f"{where}: the disk is full; free some space ({KEEP})")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError) or status == 403:
        return DownloadError(f"{where}: access refused (403); accept the Grok 2 Community "
                             f"License at https://huggingface.co/{REPO} with your account, and "
                             "log in (hf auth login or HF_TOKEN)")
    if status == 401:
        return DownloadError(f"{where}: not authorized (401); log in with `hf auth login` or "
                             "set HF_TOKEN to a token of an account that accepted the license")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(f"{where}: repository not found ({status}); check --repo, or log "
                             "in if it is private")
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{where}: no such revision; check --revision")
    if status == 429:
        wait = exc.response.headers.get("Retry-After")  # type: ignore[attr-defined]
        return DownloadError(f"{where}: the hub is rate-limiting this connection (429); wait "
                             f"{wait + ' s' if wait else 'a few minutes'} ({KEEP})")
    if isinstance(exc, HfHubHTTPError) and status:
        return DownloadError(f"{where}: the hub answered {status}; {KEEP}")
    kinds = {k.__name__ for k in type(exc).__mro__}  # httpx (hub 1.x) or httpx2 (2.x) errors
    if "ConnectError" in kinds or "ProxyError" in kinds:
        proxy = _proxy_setting()
        if proxy:
            return DownloadError(f"{where}: cannot connect through the proxy {proxy[1]} (set by "
                                 f"{proxy[0]}); check that it is running, or unset it; {KEEP}")
        return DownloadError(f"{where}: cannot connect (no network, or a proxy is needed: set "
                             f"HTTPS_PROXY); {KEEP}")
    if "TimeoutException" in kinds:
        return DownloadError(f"{where}: the connection timed out; {KEEP}")
    if kinds & {"RemoteProtocolError", "ReadError", "NetworkError"}:
        return DownloadError(f"{where}: the connection was lost; {KEEP}")
    if isinstance(exc, OSError):
        return DownloadError(f"{where}: {exc.strerror or exc}; {KEEP}")
    return DownloadError(f"{where}: {type(exc).__name__}: {exc}; {KEEP}")
