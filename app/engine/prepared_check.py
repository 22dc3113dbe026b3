"""Checking a prepared folder against its manifest (prepared.json), and the command that
finishes or repairs it. No torch: loading (app.engine.prepare.verify) and the download's rerun
(app.download.pipeline, which the GUI imports) share it.

A unit file is intact when its size is the recorded one and either its mtime is the recorded
one or its sha256 still matches (only a file whose mtime changed is hashed). The manifest
records who made the folder: `"made_by": {"command": "download", "repo", "revision"}` for a
folder written by `grok-desktop download --keep-prepared-only` (app.download.pipeline); an
older download-made manifest is recognised by its "source", the `OUT.download` folder.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path

MANIFEST = "prepared.json"  # the manifest's name in a prepared folder
OFFICIAL_REPO = "xai-org/grok-2"  # app.download.hub.REPO: --repo is named only when another
DOWNLOAD_SUFFIX = ".download"  # app.download.pipeline.SOURCE_SUFFIX


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()  # hashlib.file_digest is Python 3.11+; we support 3.10
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def intact(out: Path, unit: str, entry: dict) -> bool:
    """Size matches and either the mtime is the recorded one or the checksum still matches."""
    path = out / f"{unit}.safetensors"
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != entry["bytes"]:
        return False
    return stat.st_mtime_ns == entry["mtime_ns"] or sha256_file(path) == entry["sha256"]


def unit_problems(folder: Path, manifest: dict, units: list[str], full: bool = False,
                  first_only: bool = False) -> list[tuple[str, str]]:
    """(unit, "missing" or "damaged") for each of `units` that is not recorded in the manifest
    or not on disk (missing), or whose size or checksum differs from the record (damaged).
    `full` hashes every file, not only those whose mtime changed."""
    out: list[tuple[str, str]] = []
    files = manifest.get("files")
    files = files if isinstance(files, dict) else {}
    for unit in units:
        entry, path = files.get(unit), folder / f"{unit}.safetensors"
        if not isinstance(entry, dict) or not path.is_file():
            out.append((unit, "missing"))
        else:
            try:
                ok = (path.stat().st_size == entry["bytes"]
                      and sha256_file(path) == entry["sha256"]) if full \
                    else intact(folder, unit, entry)
            except (KeyError, TypeError, OSError):
                ok = False
            if not ok:
                out.append((unit, "damaged"))
        if out and first_only:
            break
    return out


def made_by_download(manifest: dict) -> dict | None:
    """The download that wrote this prepared folder ({"repo", "revision"}, either None when
    not recorded), or None for a folder written by `grok-desktop prepare`."""
    made = manifest.get("made_by")
    if isinstance(made, dict) and made.get("command") == "download":
        return {"repo": made.get("repo"), "revision": made.get("revision")}
    if str(manifest.get("source", "")).endswith(DOWNLOAD_SUFFIX):  # before "made_by"
        return {"repo": None, "revision": None}
    return None


def _quote(arg: str) -> str:
    """One argument as the user's shell reads it (POSIX quoting; cmd.exe's on Windows)."""
    return subprocess.list2cmdline([arg]) if os.name == "nt" else shlex.quote(arg)


def download_command(folder: Path, manifest: dict) -> str | None:
    """The command that resumes (and repairs) a download-made folder, or None when `prepare`
    made it: `grok-desktop download --keep-prepared-only --quant Q --out DIR` with the
    recorded --repo and --revision."""
    made = made_by_download(manifest)
    if made is None:
        return None
    cmd = f"grok-desktop download --keep-prepared-only --quant {manifest.get('quant')} " \
          f"--out {_quote(str(folder))}"  # pasteable: a folder may hold spaces
    if made["repo"] and made["repo"] != OFFICIAL_REPO:
        cmd += f" --repo {_quote(made['repo'])}"
    if made["revision"]:
        cmd += f" --revision {_quote(made['revision'])}"
    return cmd


def remedy(folder: Path, manifest: dict, what: str) -> str:
    """How to fix a folder whose preparation is unfinished (`what` "finish") or whose unit file
    is missing or damaged (`what` "repair"): rerun the download that made it, else prepare."""
    cmd = download_command(folder, manifest)
    if cmd is None:
        return ("run `grok-desktop prepare` again with the same --out to finish it"
                if what == "finish" else "run prepare again to rewrite it")
    if what == "finish":
        return f"run `{cmd}` again (the same --out) to finish it"
    return (f"run `{cmd}` again (the same --out): it fetches again the source files this file "
            "is made from and rewrites it")


def again_as(manifest: dict, quant: str) -> str:
    """How to get the model as `quant` when this folder holds another quantization: prepare it
    again, or for a download-made folder (no source folder left) download it again."""
    if made_by_download(manifest) is None:
        return f"prepare it again with --quant {quant} into another folder"
    return (f"download it again as {quant} into another folder (`grok-desktop download "
            f"--keep-prepared-only --quant {quant} --out NEW_DIR`)")
