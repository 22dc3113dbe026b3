"""One download, start to end: look (no writes), check, then fetch and, with "keep only the
prepared model", prepare each source file's part of the model as soon as it has arrived.

`look` reads the hub's file list, config.json and (for prepare-while-downloading) every
safetensors header into memory, and returns the plan and the disk check: nothing is written
before the caller has shown them and the license is accepted. `run` then downloads. With
`prepared_only`, the bf16 files go to `OUT.download/` beside the prepared folder OUT, one at a
time: each verified file is converted at once into its pieces of the prepared units
(app.engine.pieces: the bytes `grok-desktop prepare` writes, so the result is byte-identical)
and deleted as soon as those pieces are recorded, so the disk holds the prepared model plus
about one source file (app.engine.piece_plan says where a format needs more). A journal of the
pieces written and the prepared folder's manifest make an interrupted run resume where it
stopped. A rerun on a finished folder checks it as loading does
(app.engine.prepared_check) and rewrites a damaged or missing unit: dropped from the manifest
(first, atomically) and the journal, it is written again from its source files, fetched again.
The engine is imported inside `run` only: the GUI may import this module and call
`run` on a worker thread.
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
    free_bytes,
    prefetch,
    schedule,
    size,
)
from app.download.fetch import STATE, STATE_DIR, Control, Downloader, ProgressFn
from app.download.hub import REPO, DownloadError, Snapshot, hub_error, snapshot_info
from app.engine.config import CONFIG_NAME, Grok2Config, load_config
from app.engine.piece_plan import header_shapes, parse_job, plan_jobs
from app.engine.prepared_check import MANIFEST, unit_problems
from app.errors import ModelFileError, UserError

SOURCE_SUFFIX = ".download"
RECENT = "download.json"  # in the config folder: the last download, to offer resuming it
SHAPES = "shapes.json"  # in the download's state folder: every source file's tensor shapes
PIECES_DIR = "prepare"  # in the download's state folder: app.engine.pieces' staging
GROUP = 128  # the int4 group `prepare` writes (UnitWriter's default)
Shapes = dict[str, dict[str, tuple[int, ...]]]


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
    shapes: Shapes = field(default_factory=dict)  # source file -> tensor -> shape
    proposal: Proposal | None = None
    finished: bool = False  # the prepared folder is complete and intact: nothing to do
    repair: list[tuple[str, str]] = field(default_factory=list)  # (unit, missing/damaged)

    def repair_files(self) -> set[str]:
        """The source files fetched again to rewrite the units in `repair`."""
        units = {u for u, _ in self.repair}
        return {f for j, fs in self.needs.items() if parse_job(j)[0] in units for f in fs}

    def repair_note(self) -> str:
        """One line on what the rerun repairs, or "" when nothing is damaged."""
        if not self.repair:
            return ""
        unit, what = self.repair[0]
        more = f" (and {len(self.repair) - 1} more)" if len(self.repair) > 1 else ""
        files = self.repair_files()
        sizes = {f.name: f.size for f in self.snapshot.files}
        return (f"{self.request.out / unit}.safetensors{more}: {what}; the download fetches "
                f"again the {len(files)} source files it is made from "
                f"({size(sum(sizes[f] for f in files))}) and rewrites it.")

    @property
    def needs(self) -> dict[str, set[str]]:
        """Piece (piece_plan.job_id) -> the source files it reads, at `request.quant`."""
        if not self.request.prepared_only or not self.shapes:
            return {}
        try:
            return plan_jobs(self.shapes, self.request.quant, GROUP)
        except ValueError as exc:
            raise DownloadError(f"{self.snapshot.repo}: {exc}; not the official layout") from exc

    def disk(self) -> DiskCheck:
        """The disk check for the request as it is now (set `request.quant` first)."""
        req = self.request
        if self.finished:
            free, where = free_bytes(req.out)
            return DiskCheck(0, free, where, "already prepared and intact: nothing to fetch")
        return disk_check(self.snapshot, req.out if req.prepared_only else self.source,
                          self.present, prepared_only=req.prepared_only, cfg=self.cfg,
                          quant=req.quant, needs=self.needs,
                          done_jobs=_journal_done(self.source, req.quant,
                                                  self.snapshot.commit),
                          redo={u for u, _ in self.repair})

    @property
    def source(self) -> Path:
        """Where the official files go: OUT itself, or OUT.download beside the prepared OUT."""
        out = self.request.out
        return out.with_name(out.name + SOURCE_SUFFIX) if self.request.prepared_only else out


def _journal_done(source: Path, quant: str, commit: str) -> set[str]:
    """Pieces an earlier run recorded as written (app.engine.pieces' journal), if at `quant`
    from this commit's files (else the run discards them)."""
    try:
        data = json.loads((source / STATE_DIR / PIECES_DIR / "pieces.json").read_text("utf-8"))
        same = data["quant"] == quant and data["source"] == commit
        return set(data["done"]) if same else set()
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _read_shapes(path: Path, commit: str) -> Shapes:
    """The tensor shapes an earlier run of this download recorded (at this commit)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["commit"] != commit:
            return {}
        return {f: {n: tuple(s) for n, s in ts.items()} for f, ts in data["files"].items()}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return {}


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
    known = _read_shapes(dl.work / SHAPES, snapshot.commit) if request.prepared_only else {}
    small = [f.name for f in snapshot.files if not f.name.endswith(".safetensors")]
    finished = request.prepared_only and _complete(out, request.quant)
    repair = _problems(out) if finished else []
    finished = finished and not repair
    heads = [] if not request.prepared_only or finished else [
        f.name for f in snapshot.files if f.name.endswith(".safetensors") and f.name not in known]
    wanted = [] if finished else [n for n in small if not dl.is_verified(n)] + heads
    pre = prefetch(snapshot, wanted, work, request.token)
    config_bytes = pre.data.get(CONFIG_NAME) or (
        (out if finished else source) / CONFIG_NAME).read_bytes()
    cfg = _cfg(config_bytes)
    shapes: Shapes = {}
    if request.prepared_only and not finished:
        shapes = dict(known)
        try:
            shapes.update({n: header_shapes(pre.data[n]) for n in heads})
        except (ValueError, KeyError, TypeError) as exc:
            raise DownloadError(f"{request.repo}: a safetensors header from the hub is "
                                f"corrupt ({exc})") from exc
    lk = Look(request, snapshot, cfg, pre, dl.on_disk, shapes, finished=finished,
              repair=repair)
    _ = lk.needs  # a layout the pieces cannot cover raises DownloadError now
    return lk


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
    from app.engine.pieces import PieceWriter
    from app.engine.prepare import UnitWriter, _save_manifest
    from app.engine.weights import _Reader, index_folder

    out = lk.request.out
    damaged: set[str] = set()
    if _complete(out, lk.request.quant):
        damaged = {u for u, _ in _problems(out)}
        if not damaged:
            return out
    jobs = lk.needs
    dl.work.mkdir(parents=True, exist_ok=True)
    if _read_shapes(dl.work / SHAPES, lk.snapshot.commit) != lk.shapes:
        atomic_write_text(dl.work / SHAPES, json.dumps({"commit": lk.snapshot.commit,
                                                        "files": lk.shapes}))
    small = [f.name for f in lk.snapshot.files if not f.name.endswith(".safetensors")]
    dl.fetch_all(small)
    made_by = {"command": "download", "repo": lk.snapshot.repo, "revision": lk.request.revision}
    writer = UnitWriter(lk.source, out, lk.request.quant, GROUP, made_by)  # saves complete=false
    if damaged:  # a repair: those units are written again (the manifest first, atomically)
        for unit in damaged:
            writer.manifest["files"].pop(unit, None)
        _save_manifest(out, writer.manifest)
    pieces = PieceWriter(writer, dl.work / PIECES_DIR, lk.snapshot.commit, redo=damaged)
    pieces.check_sources(lk.shapes)
    units = pieces.writer.units
    rank = {u: i for i, u in enumerate(units)}
    of_unit: dict[str, set[str]] = {}
    for job in jobs:
        of_unit.setdefault(parse_job(job)[0], set()).add(job)
    missing = [u for u in units if u not in of_unit and not pieces.writer.is_done(u)]
    if missing:
        raise DownloadError(f"{lk.snapshot.repo}: no file holds the tensors of {missing[0]}; "
                            "the repo does not match its config.json")
    pending = {j for j in jobs if j not in pieces.done
               and not pieces.writer.is_done(parse_job(j)[0])}

    def finish_ready_units() -> None:
        for unit in units:
            if not pieces.writer.is_done(unit) and not (of_unit.get(unit, set()) & pending):
                dl.stage = f"preparing {unit}"
                pieces.finish_unit(unit)

    def drop_unneeded() -> None:
        """Delete every source file no pending piece reads (after its pieces are recorded)."""
        wanted = {f for j in pending for f in jobs[j]}
        for f in sorted({f for fs in jobs.values() for f in fs} - wanted):
            if dl.is_verified(f):
                dl.consume(f)

    finish_ready_units()
    drop_unneeded()
    wanted = {f for j in pending for f in jobs[j]}
    consumed = dl.state.setdefault("consumed", [])
    if wanted & set(consumed):  # pieces lost with their staged unit: fetch those files again
        dl.state["consumed"] = [f for f in consumed if f not in wanted]
        dl.save_state()
    sizes = {f.name: f.size for f in lk.snapshot.files}
    hint = sorted(pending, key=lambda j: (rank.get(parse_job(j)[0], len(rank)), j))
    order, _ = schedule({j: jobs[j] for j in pending}, sizes, set(), dl.on_disk, hint)
    for name in order:
        dl.stage = "downloading"
        dl.fetch(name)
        ready = sorted((j for j in pending if all(dl.is_verified(f) for f in jobs[j])),
                       key=lambda j: (rank.get(parse_job(j)[0], len(rank)), j))
        if ready:
            index, reader = index_folder(lk.source), _Reader()
            try:
                for job in ready:
                    dl.control.check()
                    dl.stage = f"preparing {parse_job(job)[0]}"
                    dl.report(name, sizes[name], force=True)
                    pieces.write(job, index, reader)
                    pending.discard(job)
            finally:
                pieces.save()  # what was written and fsynced, even when paused mid-way
                del index, reader  # close the memory maps before deleting the files
            finish_ready_units()
            dl.stage = "prepared"  # the file is in the report: the moment before it goes
            dl.report(name, sizes[name], force=True)
        drop_unneeded()
    finish_ready_units()
    result = pieces.writer.finish()
    for f in small:  # LICENSE, README: config and tokenizer were copied by UnitWriter
        if not (result / f).exists():
            shutil.copyfile(lk.source / f, result / f)
    shutil.rmtree(lk.source)
    _done(dl)
    return result


def _problems(out: Path) -> list[tuple[str, str]]:
    """(unit, "missing"/"damaged") for each unit of the finished prepared folder `out` that
    loading would refuse (app.engine.prepared_check, what prepare.verify checks)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        units = unit_names(load_config(out).num_hidden_layers)
    except (OSError, ValueError, TypeError, ModelFileError) as exc:
        raise DownloadError(f"{out}: the finished prepared folder cannot be checked ({exc}); "
                            f"delete {out} and download again") from exc
    return unit_problems(out, manifest, units)


def _complete(out: Path, quant: str) -> bool:
    """`out` already holds a finished preparation (at `quant`: another one is an error)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        done, stored = manifest["complete"] is True, manifest["quant"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if done and stored != quant:
        raise UserError(f"{out}: already holds Grok-2 prepared as {stored}; load it, or choose "
                        "another folder to prepare it as " + quant)
    return done
