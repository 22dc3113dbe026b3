"""One download, start to end: look (no writes), check, then fetch and, with "keep only the
prepared model", prepare each unit as soon as its source files have arrived and been verified.

`look` reads the hub's file list, config.json and (for prepare-while-downloading) every
safetensors header into memory, and returns the plan and the disk check: nothing is written
before the caller has shown them and the license is accepted. `run` then downloads. With
`prepared_only`, the bf16 files go to `OUT.download/` beside the prepared folder OUT, each unit
is written by app.engine.prepare's UnitWriter (the same code as `grok-desktop prepare`, so the
result is byte-identical), source files are deleted as soon as no unit needs them, and the
prepared folder's manifest (replaced atomically after each unit) makes an interrupted run
resume where it stopped. The engine is imported inside `run` only: the GUI may import this
module and call `run` on a worker thread.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.atomic import atomic_write_text
from app.checkpoint_files import unit_names
from app.download.budget import (
    DiskCheck,
    Prefetched,
    Proposal,
    disk_check,
    prefetch,
    schedule,
    unit_needs,
)
from app.download.fetch import STATE, STATE_DIR, Control, Downloader, ProgressFn
from app.download.hub import REPO, DownloadError, Snapshot, hub_error, snapshot_info
from app.engine.config import CONFIG_NAME, Grok2Config
from app.errors import UserError

SOURCE_SUFFIX = ".download"
RECENT = "download.json"  # in the config folder: the last download, to offer resuming it


@dataclass
class Request:
    out: Path
    repo: str = REPO
    revision: str | None = None
    endpoint: str | None = None
    token: str | bool | None = None
    prepared_only: bool = False
    quant: str = "int4"  # for prepared_only: int4, int8 or bf16


@dataclass
class Look:
    """What the user sees before anything is written."""

    request: Request
    snapshot: Snapshot
    cfg: Grok2Config
    prefetched: Prefetched
    present: Callable[[str], int]  # bytes of a file already on disk from an earlier run
    needs: dict[str, set[str]] = field(default_factory=dict)
    proposal: Proposal | None = None

    def disk(self) -> DiskCheck:
        """The disk check for the request as it is now (set `request.quant` first)."""
        req = self.request
        return disk_check(self.snapshot, req.out if req.prepared_only else self.source,
                          self.present, prepared_only=req.prepared_only, cfg=self.cfg,
                          quant=req.quant, needs=self.needs)

    @property
    def source(self) -> Path:
        """Where the official files go: OUT itself, or OUT.download beside the prepared OUT."""
        out = self.request.out
        return out.with_name(out.name + SOURCE_SUFFIX) if self.request.prepared_only else out


def _cfg(data: bytes) -> Grok2Config:
    try:
        cfg = json.loads(data)
        if not isinstance(cfg, dict):
            raise TypeError("not an object")
        return Grok2Config.from_dict(cfg)
    except (ValueError, TypeError) as exc:
        raise DownloadError(f"config.json from the hub is not a Grok-2 config ({exc})") from exc


def look(request: Request) -> Look:
    """The snapshot, config and unit map for `request`; reads, writes nothing."""
    if request.prepared_only and request.quant not in ("int4", "int8", "bf16"):
        raise UserError(f"--quant {request.quant}: prepare writes int4, int8 or bf16")
    out = request.out.expanduser()
    request.out = out
    snapshot = snapshot_info(request.repo, request.revision, request.endpoint, request.token)
    names = {f.name for f in snapshot.files}
    if CONFIG_NAME not in names:
        raise DownloadError(f"{request.repo}: the repo has no config.json; is it Grok-2?")
    source = out.with_name(out.name + SOURCE_SUFFIX) if request.prepared_only else out
    dl = Downloader(snapshot, source, token=request.token)
    work = dl.work if dl.work.is_dir() else None
    known = dl.state.get("needs") or {}
    small = [f.name for f in snapshot.files if not f.name.endswith(".safetensors")]
    finished = request.prepared_only and _complete(out, request.quant)
    heads = [] if not request.prepared_only or finished else [
        f.name for f in snapshot.files if f.name.endswith(".safetensors") and f.name not in known]
    wanted = [] if finished else [n for n in small if not dl.is_verified(n)] + heads
    pre = prefetch(snapshot, wanted, work, request.token)
    config_bytes = pre.data.get(CONFIG_NAME) or (
        (out if finished else source) / CONFIG_NAME).read_bytes()
    cfg = _cfg(config_bytes)
    needs: dict[str, set[str]] = {}
    if request.prepared_only:
        needs = {u: set(fs) for u, fs in _needs_by_unit(known).items()}
        for unit, files in unit_needs({n: pre.data[n] for n in heads}).items():
            needs.setdefault(unit, set()).update(files)
    return Look(request, snapshot, cfg, pre, dl.on_disk, needs)


def _needs_by_unit(file_units: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f, units in file_units.items():
        for u in units:
            out.setdefault(u, []).append(f)
    return out


def run(lk: Look, control: Control | None = None, on_progress: ProgressFn | None = None
        ) -> Path:
    """Download (and prepare) as `look` planned; returns the folder to load. Raises
    DownloadError / StorageError (one line, partial work kept) or fetch.Stopped."""
    if lk.request.prepared_only and lk.request.quant not in ("int4", "int8", "bf16"):
        raise UserError(f"--quant {lk.request.quant}: prepare writes int4, int8 or bf16")
    lk.disk().require()
    remember(lk.request)
    dl = Downloader(lk.snapshot, lk.source, token=lk.request.token, control=control,
                    on_progress=on_progress)
    try:
        for name, data in lk.prefetched.data.items():
            dl.seed(name, data)
        if not lk.request.prepared_only:
            dl.fetch_all()
            dl.state["complete"] = True
            dl.save_state()
            _done(dl)
            return lk.source
        return _run_prepared(lk, dl)
    except OSError as exc:  # writing the state or a partial file: a full disk, permissions
        raise hub_error(exc, str(lk.source)) from exc


def remember(request: Request) -> None:
    """Record the download in the app's config folder, so the download view offers to resume
    it after the app restarts (the token is never written)."""
    from app import paths

    data = {"out": str(request.out), "repo": request.repo, "revision": request.revision,
            "prepared_only": request.prepared_only, "quant": request.quant}
    try:
        atomic_write_text(paths.config_dir() / RECENT, json.dumps(data, indent=1))
    except OSError:
        pass  # only a convenience: the download itself does not depend on it


def recent() -> Request | None:
    """The last download started here, if its folder still holds unfinished work."""
    from app import paths

    try:
        data = json.loads((paths.config_dir() / RECENT).read_text(encoding="utf-8"))
        req = Request(Path(data["out"]), str(data["repo"]), data.get("revision"),
                      prepared_only=bool(data["prepared_only"]), quant=str(data["quant"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    source = req.out.with_name(req.out.name + SOURCE_SUFFIX) if req.prepared_only else req.out
    if req.prepared_only:
        return req if source.is_dir() else None
    try:
        state = json.loads((source / STATE_DIR / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return None if state.get("complete") else req


def _done(dl: Downloader, name: str = "") -> None:
    dl.stage = "done"
    dl.report(name, 0, force=True)


def _run_prepared(lk: Look, dl: Downloader) -> Path:
    from app.engine.prepare import UnitWriter
    from app.engine.weights import _Reader, index_folder

    if _complete(lk.request.out, lk.request.quant):
        return lk.request.out
    by_file: dict[str, list[str]] = {}
    for unit, files in lk.needs.items():
        for f in files:
            by_file.setdefault(f, []).append(unit)
    dl.state["needs"] = {f: sorted(us) for f, us in by_file.items()}
    dl.save_state()
    small = [f.name for f in lk.snapshot.files if not f.name.endswith(".safetensors")]
    dl.fetch_all(small)
    writer = UnitWriter(lk.source, lk.request.out, lk.request.quant)
    done = {u for u in writer.units if writer.is_done(u)}
    sizes = {f.name: f.size for f in lk.snapshot.files}
    order, _ = schedule(lk.needs, sizes, done, dl.on_disk, unit_names(lk.cfg.num_hidden_layers))
    missing = [u for u in writer.units if u not in lk.needs and u not in done]
    if missing:
        raise DownloadError(f"{lk.snapshot.repo}: no file holds the tensors of {missing[0]}; "
                            "the repo does not match its config.json")
    for name in order:
        dl.stage = "downloading"
        dl.fetch(name)
        ready = [u for u in writer.units if u in lk.needs and u not in done
                 and all(dl.is_verified(f) for f in lk.needs[u])]
        if ready:
            index, reader = index_folder(lk.source), _Reader()
            for unit in ready:
                dl.control.check()
                dl.stage = f"preparing {unit}"
                dl.report(name, sizes[name], force=True)
                writer.write(unit, index, reader)
                done.add(unit)
            del index, reader  # close the memory maps before deleting the files
        for f in [f for f in by_file if dl.is_verified(f)]:
            if all(u in done for u in by_file[f]):
                dl.consume(f)
    out = writer.finish()
    for f in small:  # LICENSE, README: config and tokenizer were copied by UnitWriter
        if not (out / f).exists():
            shutil.copyfile(lk.source / f, out / f)
    shutil.rmtree(lk.source)
    _done(dl)
    return out


def _complete(out: Path, quant: str) -> bool:
    """`out` already holds a finished preparation (at `quant`: another one is an error)."""
    try:
        manifest = json.loads((out / "prepared.json").read_text(encoding="utf-8"))
        done, stored = manifest["complete"] is True, manifest["quant"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if done and stored != quant:
        raise UserError(f"{out}: already holds Grok-2 prepared as {stored}; load it, or choose "
                        "another folder to prepare it as " + quant)
    return done
