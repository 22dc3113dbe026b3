"""Writing a prepared folder piece by piece while its source files arrive (the download's
"keep only the prepared model", app.download.pipeline): each source file is converted into
its parts of the prepared units as soon as it has arrived and been verified, so it can be
deleted before the next one is fetched. Which pieces exist, and why each converts to exactly
the bytes `prepare` writes, is app.engine.piece_plan's docstring.

Where things are, in the download's state folder WORK (`OUT.download/.grok-download/prepare`):
    UNIT.safetensors   a unit being written: created (atomically) with its final header and
                       size, zero-filled (sparse where the file system allows), then each
                       piece written in place into its own byte ranges, and fsynced
    pieces.json        the journal (replaced atomically): the pieces written and fsynced, and
                       the units finished (size and sha256) before being moved into OUT
A piece is recorded only after its bytes are on disk, and a source file is deleted only after
every piece reading it is recorded, so an interruption anywhere rewrites at most the pieces
not yet recorded, from files still on disk (pieces cover disjoint bytes, so rewriting one
leaves the others alone). A finished unit is hashed, recorded in the journal, moved into OUT
and then recorded in OUT's manifest exactly as `prepare` records it: the folder that comes out
is byte for byte the one `prepare` writes from the complete download.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
from pathlib import Path

import torch

from app.atomic import atomic_file, atomic_write_text, fsync_folder
from app.checkpoint_files import unit_of
from app.engine.piece_plan import PACK_ROWS, file_rank, parse_job, shard_dim, splits
from app.engine.plan import Format
from app.engine.prepare import (
    UnitWriter,
    _save_manifest,
    aligned_layout,
    convert_tensor,
)
from app.engine.prepared_check import sha256_file as _sha256
from app.engine.quantize import quantize_int4, quantize_int8
from app.engine.weights import CheckpointIndex, _Reader
from app.errors import ModelFileError, StorageError, UserError

JOURNAL = "pieces.json"
Spec = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def stored_specs(name: str, shape: tuple[int, ...], fmt: Format | None) -> Spec:
    """The tensors `convert_tensor` makes of a source weight of `shape`: name -> (dtype,
    shape), without computing them."""
    if fmt is None:
        return {name: (torch.bfloat16, shape)}
    base = name.removesuffix(".weight")
    n, k = shape
    if fmt.kind == "int8":
        return {f"{base}.qweight": (torch.int8, (n, k)), f"{base}.scales": (torch.float32, (n,))}
    return {f"{base}.qweight": (torch.uint8, (n, k // 2)),
            f"{base}.scales": (torch.bfloat16, (k // fmt.group, n, 2))}


def put_shard(views: dict[str, torch.Tensor], name: str, shard: torch.Tensor, fmt: Format | None,
              dim: int, start: int) -> None:
    """Convert one TP shard (rows or columns [start, start + width) of the merged weight `name`
    along `dim`) and write it into `views`, the merged tensor's stored tensors (writable),
    where `convert_tensor` of the merged weight puts those values. The caller has checked
    `piece_plan.splits` for it."""
    width = shard.shape[dim]
    if fmt is None:
        views[name].narrow(dim, start, width).copy_(shard.to(torch.bfloat16))
        return
    base = name.removesuffix(".weight")
    qv, sv = views[f"{base}.qweight"], views[f"{base}.scales"]
    if fmt.kind == "int8":  # dim 0 only: one scale per output row
        q, s = quantize_int8(shard)
        qv[start:start + width].copy_(q)
        sv[start:start + width].copy_(s)
        return
    q, s = quantize_int4(shard, fmt.group)  # q (rows, cols/2) packed; s (cols/g, rows, 2)
    if dim == 0:  # whole packing blocks of rows: their bytes are one contiguous run
        qv[start:start + width].copy_(q)
        sv[:, start:start + width].copy_(s)
        return
    n, k = qv.shape[0], qv.shape[1] * 2  # columns: in each block of 64 rows, 32 bytes a column
    g = fmt.group
    sv[start // g:(start + width) // g].copy_(s)
    qv.view(n // PACK_ROWS, k, PACK_ROWS // 2)[:, start:start + width].copy_(
        q.view(n // PACK_ROWS, width, PACK_ROWS // 2))


def check_int4_packing() -> None:
    """The int4 packing puts each block of PACK_ROWS rows in one run, column by column (what
    put_shard relies on): pack a probe whole and in row and column pieces, compare. Raises
    UserError if this PyTorch packs otherwise (then prepare after the download instead)."""
    from app.engine.quantize import pack_int4_cpu

    gen = torch.Generator().manual_seed(0)
    n, k = 2 * PACK_ROWS, 256
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    whole = pack_int4_cpu(codes)
    rows, cols = torch.zeros_like(whole), torch.zeros_like(whole)
    for i in range(2):
        rows[i * PACK_ROWS:(i + 1) * PACK_ROWS] = pack_int4_cpu(
            codes[i * PACK_ROWS:(i + 1) * PACK_ROWS])
        piece = pack_int4_cpu(codes[:, i * 128:(i + 1) * 128].contiguous())
        cols.view(n // PACK_ROWS, k, PACK_ROWS // 2)[:, i * 128:(i + 1) * 128] = piece.view(
            n // PACK_ROWS, 128, PACK_ROWS // 2)
    if not (torch.equal(rows, whole) and torch.equal(cols, whole)):
        raise UserError("this PyTorch packs int4 weights in another layout, so they cannot be "
                        "prepared while downloading; download without --keep-prepared-only, "
                        "then run `grok-desktop prepare`")


class PieceWriter:
    """Pieces of the units of `writer` (its manifest, formats and config), staged in `work`."""

    def __init__(self, writer: UnitWriter, work: Path, source_id: str = "",
                 redo: set[str] | frozenset[str] = frozenset()) -> None:
        """`source_id` names the source files' version (the hub commit): a journal from
        another version, quantization or config is discarded with its staged files. `redo`:
        units to write again from scratch (a repair; the caller dropped them from the
        manifest): their pieces, finished entry and staged file are forgotten first."""
        self.writer, self.work = writer, Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.shapes = {n: tuple(p.shape) for n, p in
                       writer.meta.state_dict(keep_vars=True).items()}
        key = {"quant": writer.manifest["quant"], "group": writer.manifest["group"],
               "config_hash": writer.manifest["config_hash"], "source": source_id}
        self.journal = self._load(key)
        self.done: set[str] = {j for j in self.journal["done"] if parse_job(j)[0] not in redo}
        if redo:
            for unit in redo:
                self.journal["finished"].pop(unit, None)
                (self.work / f"{unit}.safetensors").unlink(missing_ok=True)
            self.save()
        if writer.manifest["quant"] == "int4":
            check_int4_packing()
        self._recover()

    def check_sources(self, shapes: dict[str, dict[str, tuple[int, ...]]]) -> None:
        """Every tensor of the model is in the source files (`shapes`: file -> tensor ->
        shape, from their headers), whole or as TP shards that merge to its shape, and no
        file holds a tensor the model lacks: checked before any piece is written, since a
        unit is complete once its pieces are (what check_index does for `prepare`). Raises
        ModelFileError naming the file and tensor."""
        full: dict[str, tuple[str, tuple[int, ...]]] = {}
        parts: dict[str, dict[int, tuple[str, tuple[int, ...]]]] = {}
        for file, tensors in shapes.items():
            rank = file_rank(file)
            for name, shape in tensors.items():
                if name not in self.shapes:
                    raise ModelFileError(f"{file}: holds tensor {name}, which a Grok-2 of this "
                                         "config.json does not have; check that config.json "
                                         "belongs to these weights")
                if rank is None:
                    full[name] = (file, tuple(shape))
                else:
                    parts.setdefault(name, {})[rank] = (file, tuple(shape))
        for name, want in self.shapes.items():
            if name in full:
                file, got = full[name]
            elif name in parts:
                dim, ranks = shard_dim(name), parts[name]
                file = ranks[min(ranks)][0]
                got = tuple(ranks[min(ranks)][1])
                if sorted(ranks) != list(range(len(ranks))) or any(
                        len(s) != len(want) for _, s in ranks.values()):
                    raise ModelFileError(f"{file}: the TP shards of {name} are incomplete; "
                                         "the checkpoint does not match config.json")
                merged = list(got)
                merged[dim] = sum(s[dim] for _, s in ranks.values())
                got = tuple(merged)
            else:
                raise ModelFileError(f"tensor {name} is in none of the repo's .safetensors "
                                     "files; the repo does not match its config.json")
            if got != want:
                raise ModelFileError(f"{file}: {name} has shape {got}, expected {want}; the "
                                     "checkpoint does not match config.json")

    # journal -----------------------------------------------------------------------------
    def _load(self, key: dict) -> dict:
        path = self.work / JOURNAL
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or any(data.get(k) != v for k, v in key.items()):
                raise ValueError("another preparation")
            data["done"], data["finished"] = list(data["done"]), dict(data["finished"])
            return data
        except (OSError, ValueError, KeyError, TypeError):
            for stale in self.work.glob("*.safetensors"):  # nothing recorded for them
                stale.unlink()
            return {**key, "done": [], "finished": {}}

    def save(self) -> None:
        """Record the pieces written so far (their bytes are already fsynced)."""
        self.journal["done"] = sorted(self.done)
        try:
            atomic_write_text(self.work / JOURNAL, json.dumps(self.journal, indent=0))
        except OSError as exc:
            raise StorageError(f"{self.work / JOURNAL}: cannot be written ({exc.strerror}); "
                               "check free space, then run the download again to resume") from exc

    def _recover(self) -> None:
        """After an interruption: finish moving units that were finished, and forget the
        pieces of a unit whose staged file is gone (they are written again)."""
        for unit, entry in list(self.journal["finished"].items()):
            if not self.writer.is_done(unit):
                self._move(unit, entry)
            (self.work / f"{unit}.safetensors").unlink(missing_ok=True)
        lost = {u for u in {parse_job(j)[0] for j in self.done}
                if u not in self.journal["finished"] and not self.writer.is_done(u)
                and not self._staged_ok(u)}
        if lost:
            self.done = {j for j in self.done if parse_job(j)[0] not in lost}
            self.save()

    def _staged_ok(self, unit: str) -> bool:
        path = self.work / f"{unit}.safetensors"
        _, _, size = aligned_layout(self.specs(unit))
        return path.is_file() and path.stat().st_size == size

    # units -------------------------------------------------------------------------------
    def specs(self, unit: str) -> Spec:
        """The unit's stored tensors, as `UnitWriter.write` makes them."""
        out: Spec = {}
        for name in sorted(n for n in self.shapes if unit_of(n) == unit):
            fmt = self.writer.formats.get(name.removesuffix(".weight"))
            out.update(stored_specs(name, self.shapes[name], fmt))
        return out

    def _open(self, unit: str) -> tuple[mmap.mmap, dict[str, torch.Tensor]]:
        path = self.work / f"{unit}.safetensors"
        specs = self.specs(unit)
        head, starts, size = aligned_layout(specs)
        if not (path.is_file() and path.stat().st_size == size):
            with atomic_file(path) as f:
                f.write(head)
                f.truncate(size)  # zeros: the pads, and the tensors until written
        with path.open("r+b") as f:
            mapped = mmap.mmap(f.fileno(), 0)
        whole = torch.frombuffer(mapped, dtype=torch.uint8)
        views = {}
        for name, (dtype, shape) in specs.items():
            count = dtype.itemsize
            for d in shape:
                count *= d
            views[name] = whole[starts[name]:starts[name] + count].view(dtype).view(shape)
        return mapped, views

    def write(self, job: str, index: CheckpointIndex, reader: _Reader) -> None:
        """Write piece `job` (piece_plan.job_id) from the source files in `index`, and fsync
        it. Call save() to record it. Raises ModelFileError if a file does not hold what the
        config says, StorageError on a full disk."""
        unit, files = parse_job(job)
        todo = self._entries(unit, files, index)
        try:
            mapped, views = self._open(unit)
        except OSError as exc:
            raise StorageError(f"{self.work / unit}.safetensors: cannot be written "
                               f"({exc.strerror}); check free space, then run the download "
                               "again to resume") from exc
        try:
            for name, rank in todo:
                fmt = self.writer.formats.get(name.removesuffix(".weight"))
                if rank is None:
                    tensor = _whole(index, reader, name)
                    for key, value in convert_tensor(name, tensor, fmt).items():
                        views[key].copy_(value)
                else:
                    info = index.shards[name][rank]
                    dim = shard_dim(name)
                    put_shard(views, name, reader.get(info, name), fmt, dim,
                              rank * info.shape[dim])
            mapped.flush()  # msync: the piece is on disk before it is recorded
        finally:
            views.clear()  # no view of the map may outlive it
            mapped.close()
        self.done.add(job)

    def _entries(self, unit: str, files: tuple[str, ...], index: CheckpointIndex
                 ) -> list[tuple[str, int | None]]:
        """(tensor, rank) to write for the piece: rank None for a whole tensor (a full one, or
        one merged from all its shards)."""
        out: list[tuple[str, int | None]] = []
        wanted = set(files)
        for name, info in index.full.items():
            if unit_of(name) == unit and info.file.name in wanted:
                self._check(name, info.shape, self.shapes.get(name))
                out.append((name, None))
        for name, parts in index.shards.items():
            if unit_of(name) != unit:
                continue
            full = self.shapes.get(name)
            mine = {r: i for r, i in parts.items() if i.file.name in wanted}
            if not mine or full is None:
                continue
            dim = shard_dim(name)
            first = next(iter(mine.values()))
            width = first.shape[dim] if len(first.shape) == len(full) else 0
            fmt = self.writer.formats.get(name.removesuffix(".weight"))
            kind, group = (fmt.kind, fmt.group) if fmt else ("bf16", 0)
            if len(files) == 1 and splits(kind, group, dim, full, width):
                for rank, info in mine.items():
                    want = list(full)
                    want[dim] = width
                    self._check(name, info.shape, tuple(want))
                    if (rank + 1) * width > full[dim]:
                        raise ModelFileError(f"{info.file}: shard rank {rank} of {name} lies "
                                             f"outside its shape {full}; the checkpoint does "
                                             "not match config.json")
                    out.append((name, rank))
            elif not splits(kind, group, dim, full, width) and \
                    {i.file.name for i in parts.values()} == wanted:
                ranks = full[dim] // width if width and full[dim] % width == 0 else 0
                if sorted(parts) != list(range(ranks)):
                    raise ModelFileError(f"{first.file}: the TP shards of {name} do not merge "
                                         f"to {full}; the checkpoint does not match "
                                         "config.json")
                out.append((name, None))
        if not out:
            raise ModelFileError(f"{', '.join(files)}: holds no tensor of {unit}; the files "
                                 "changed since the download started; run it again")
        return out

    @staticmethod
    def _check(name: str, got: tuple[int, ...], want: tuple[int, ...] | None) -> None:
        if want is None:
            raise ModelFileError(f"{name}: a Grok-2 of this config.json has no such tensor; "
                                 "check that config.json belongs to these weights")
        if tuple(got) != tuple(want):
            raise ModelFileError(f"{name} has shape {tuple(got)}, expected {tuple(want)}; the "
                                 "checkpoint does not match config.json")

    def finish_unit(self, unit: str) -> None:
        """Every piece of `unit` is written: hash it, record it, move it into the prepared
        folder and record it in the manifest (as `prepare` does)."""
        path = self.work / f"{unit}.safetensors"
        entry = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        self.journal["finished"][unit] = entry
        self.save()
        self._move(unit, entry)

    def _move(self, unit: str, entry: dict) -> None:
        staged, final = self.work / f"{unit}.safetensors", self.writer.out / f"{unit}.safetensors"
        try:
            if staged.is_file():
                try:
                    os.replace(staged, final)
                except OSError:  # another file system: copy, then drop the staged file
                    shutil.copyfile(staged, final)
                    staged.unlink()
                fsync_folder(final.parent)
            stat = final.stat()
        except OSError as exc:
            raise StorageError(f"{final}: cannot be written ({exc.strerror}); check free space "
                               "and permissions, then run the download again to resume") from exc
        if stat.st_size != entry["bytes"] or _sha256(final) != entry["sha256"]:
            raise ModelFileError(f"{final}: does not match the file prepared for it; delete "
                                 f"{self.writer.out} and its .download folder and start again")
        self.writer.manifest["files"][unit] = {"bytes": stat.st_size, "sha256": entry["sha256"],
                                               "mtime_ns": stat.st_mtime_ns}
        _save_manifest(self.writer.out, self.writer.manifest)

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _whole(index: CheckpointIndex, reader: _Reader, name: str) -> torch.Tensor:
    if name in index.full:
        return reader.get(index.full[name], name)
    parts = index.shards[name]
    return torch.cat([reader.get(parts[r], name) for r in sorted(parts)], dim=shard_dim(name))
