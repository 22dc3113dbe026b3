"""Before a download writes anything: the plan for this machine (quantization, budgets,
predicted decode speed), the order of the files, and the disk space it needs, with numbers.

Torch-free and Qt-free (the GUI calls it). What it reads from the hub before the disk check
(config.json, and for "keep only the prepared model" each safetensors header) is kept in
memory and handed to the download afterwards, so those bytes are not fetched twice either.

Disk for "keep only the prepared model": the preparation is written in pieces
(app.engine.piece_plan: what one source file adds to one prepared unit); a piece is written as
soon as the files it reads have arrived, and a source file is deleted once every piece reading
it is written. `schedule` orders the files greedily (the piece missing the fewest bytes first)
and simulates that, so the peak is exact for the files' sizes. In the official Grok-2 layout
(each file one kind of tensor for all 64 layers, expert files one TP rank each) every piece
reads one file at int4 and bf16, so the source files on disk at any time are at most the
largest one (34.4 GB, a dense MLP matrix for all layers); at int8 the routed experts' w2 needs
all 8 of its rank files at once (one scale per row spans the ranks), 137 GB.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.checkpoint_files import MAX_HEADER, unit_names
from app.download.hub import DownloadError, Snapshot, hub_error, open_range
from app.engine.config import Grok2Config
from app.engine.piece_plan import parse_job
from app.engine.plan import DISK_SLACK, GB, Bandwidths, PlanError, make_plan, model_bytes
from app.engine.prepared_check import MANIFEST
from app.errors import StorageError, UserError

PREFERENCE = ("bf16", "int8", "int4")  # best quality first: the first that fits is proposed


def size(n: float) -> str:
    """Bytes for people, in powers of 1000 (as disks and the hub count): 1.2 GB, 350 MB."""
    for unit, scale in (("TB", 10**12), ("GB", GB), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} bytes"


def machine_budgets() -> tuple[int, int]:
    """This machine's free GPU memory (0 without CUDA) and total RAM, in bytes: the engine's
    own probe, so the plan matches what loading will see. Imports torch: call it off the GUI
    thread (the download view does, on its worker thread)."""
    from app.engine.loader import detect_budgets

    return detect_budgets()


@dataclass(frozen=True)
class Proposal:
    """The quantization the plan proposes and why; `bound` in tokens/s (0 when nothing fits)."""

    quant: str
    fits: bool
    bound: float
    text: str


def propose(cfg: Grok2Config, gpu_budget: int, cpu_budget: int, bw: Bandwidths,
            quant: str | None = None, context: int = 8192) -> Proposal:
    """The best-quality quantization whose plan fits these budgets (bytes), or `quant` when
    given; with the memory per tier and the predicted decode speed (the plan's bound)."""
    where = (f"GPU budget {size(gpu_budget)}, RAM {size(cpu_budget)}"
             if gpu_budget > 0 else f"CPU only, RAM {size(cpu_budget)}")
    last: PlanError | None = None
    for q in [quant] if quant else PREFERENCE:
        try:
            plan = make_plan(cfg, q, gpu_budget, cpu_budget, context)
        except PlanError as exc:
            last = exc
            continue
        bound = plan.decode_bound(bw)
        gpu = f"GPU {size(plan.gpu_total)}, " if plan.has_gpu else ""
        return Proposal(q, True, bound,
                        f"Plan for this machine ({where}): {q}, {gpu}RAM "
                        f"{size(plan.cpu_total)}; decoding at most {bound:,.1f} tokens/s "
                        f"({size(model_bytes(cfg, q))} of weights).")
    q = quant or PREFERENCE[-1]
    return Proposal(q, False, 0.0, f"Does not fit this machine ({where}) at {q}: {last}")


@dataclass
class Prefetched:
    """Bytes read from the hub before the disk check, by file: whole small files, or the first
    bytes (the header) of a safetensors file. The download writes them instead of fetching
    them again."""

    data: dict[str, bytes] = field(default_factory=dict)


def _read(snapshot: Snapshot, name: str, start: int, end: int, token, part: Path | None) -> bytes:
    """Bytes [start, end) of `name`: from a partial file of an earlier run if it has them."""
    if part is not None and part.is_file() and part.stat().st_size >= end:
        with part.open("rb") as f:
            f.seek(start)
            return f.read(end - start)
    try:
        with open_range(snapshot, name, start, end, token) as response:
            data = response.read()
    except Exception as exc:  # one line for every failure
        raise hub_error(exc, name) from exc
    if response.status_code == 200:
        data = data[start:end]
    if len(data) != end - start:
        raise DownloadError(f"{name}: the hub sent {len(data)} of {end - start} bytes asked for")
    return data


def prefetch(snapshot: Snapshot, names: list[str], work: Path | None = None,
             token: str | bool | None = None, headers_only: bool = True) -> Prefetched:
    """Small files whole, and each safetensors file's header, into memory. `work` is the
    download's state folder, whose partial files are read instead when they hold the bytes."""
    out = Prefetched()
    for name in names:
        part = work / f"{name}.part" if work else None
        size = snapshot.file(name).size
        if not name.endswith(".safetensors"):
            out.data[name] = _read(snapshot, name, 0, size, token, part)
            continue
        if not headers_only:
            continue
        head = _read(snapshot, name, 0, 8, token, part)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise DownloadError(f"{name}: the hub's file has a corrupt safetensors header")
        out.data[name] = head + _read(snapshot, name, 8, 8 + n, token, part)
    return out


def schedule(needs: dict[str, set[str]], sizes: dict[str, int], done_units: set[str],
             present: Callable[[str], int], order_hint: list[str]) -> tuple[list[str], int]:
    """The order to fetch source files in, and the most bytes the not-yet-present parts of
    source files will add to the disk at any time (files are deleted once every unit needing
    them is written). `present(name)`: bytes of it already on disk."""
    rank = {u: i for i, u in enumerate(order_hint)}
    pending = {u for u in needs if u not in done_units}
    have = {f for u in pending for f in needs[u] if present(f) >= sizes[f]}
    order: list[str] = []
    extra = peak = 0
    while pending:
        unit = min(pending, key=lambda u: (sum(sizes[f] - present(f) for f in needs[u] - have),
                                           rank.get(u, len(rank))))
        for f in sorted(needs[unit] - have):
            order.append(f)
            have.add(f)
            extra += sizes[f] - present(f)
            peak = max(peak, extra)
        pending -= {u for u in pending if needs[u] <= have}
        for f in [f for f in have if not any(f in needs[u] for u in pending)]:
            have.discard(f)
            extra -= sizes[f]
    return order, max(peak, 0)


def prepared_done_bytes(out: Path, redo: set[str] | None = None) -> tuple[int, set[str]]:
    """Bytes and units an earlier run already wrote to the prepared folder (its manifest),
    less the units in `redo` (damaged: written again)."""
    try:
        files = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
        files = {u: f for u, f in files.items() if u not in (redo or set())}
        return sum(int(f["bytes"]) for f in files.values()), set(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, set()


@dataclass(frozen=True)
class DiskCheck:
    need: int  # bytes the download will still add at its peak
    free: int
    where: Path
    detail: str

    @property
    def ok(self) -> bool:
        return self.need <= self.free

    def line(self) -> str:
        return (f"Disk: needs {size(self.need)} at most ({self.detail}); "
                f"{size(self.free)} free on {self.where}.")

    def require(self) -> None:
        if not self.ok:
            raise StorageError(f"{self.where}: the download needs {size(self.need)} of "
                               f"free disk ({self.detail}), {size(self.free)} is free; "
                               "free some space or choose another --out folder")


def free_bytes(folder: Path) -> tuple[int, Path]:
    """Free bytes on the file system that will hold `folder` (its nearest existing parent)."""
    where = folder.resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free, where


def disk_check(snapshot: Snapshot, out: Path, present: Callable[[str], int], *,
               prepared_only: bool = False, cfg: Grok2Config | None = None,
               quant: str = "int4", needs: dict[str, set[str]] | None = None,
               done_jobs: set[str] | None = None, redo: set[str] | None = None) -> DiskCheck:
    """What the download (and, with `prepared_only`, the preparation alongside it) still
    needs on disk, against what is free. `needs`: piece -> the source files it reads
    (piece_plan.plan_jobs); `done_jobs`: pieces an earlier run wrote; `redo`: units of a
    finished folder to write again (damaged), counted as not written. `detail` names every
    part of `need`, so its figures add up to it."""
    free, where = free_bytes(out)
    if not prepared_only:
        need = sum(f.size - present(f.name) for f in snapshot.files)
        return DiskCheck(need, free, where, f"{size(snapshot.total_bytes)} in all, "
                                            f"{len(snapshot.files)} files")
    if cfg is None or needs is None:
        raise UserError("disk_check: prepared_only needs the config and the piece map")
    peak = source_peak(snapshot, out, present, needs, done_jobs or set(), cfg, redo)
    done_bytes, _ = prepared_done_bytes(out, redo)
    small_files = [f for f in snapshot.files if not f.name.endswith(".safetensors")]
    small = sum(f.size - present(f.name) for f in small_files)
    redo_bytes = prepared_done_bytes(out)[0] - done_bytes  # the damaged units, as recorded
    prepared = max(int(model_bytes(cfg, quant) * DISK_SLACK) - done_bytes, redo_bytes, 0)
    names = ", ".join(f.name for f in small_files)
    return DiskCheck(prepared + peak + small, free, where,
                     f"the {quant} model {size(prepared)} + at most {size(peak)} of source "
                     f"files at a time + {size(small)} of small files ({names})")


def source_peak(snapshot: Snapshot, out: Path, present: Callable[[str], int],
                needs: dict[str, set[str]], done_jobs: set[str], cfg: Grok2Config,
                redo: set[str] | None = None) -> int:
    """The most bytes of source files not yet on disk that the rest of the download holds at
    once (schedule), given the pieces and units already written (less `redo`)."""
    sizes = {f.name: f.size for f in snapshot.files}
    _, done_units = prepared_done_bytes(out, redo)
    pending = {j: fs for j, fs in needs.items()
               if (j not in done_jobs or parse_job(j)[0] in (redo or set()))
               and parse_job(j)[0] not in done_units}
    rank = {u: i for i, u in enumerate(unit_names(cfg.num_hidden_layers))}
    hint = sorted(pending, key=lambda j: (rank.get(parse_job(j)[0], len(rank)), j))
    return schedule(pending, sizes, set(), present, hint)[1]
