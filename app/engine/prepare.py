"""`prepare`: convert the official folder once into the runtime layout
(docs/architecture.md#prepare).

Output folder:
    config.json, tokenizer.tok.json   copied
    common.safetensors                embedding, output head, final norm
    layer-NNN.safetensors             attention, norms, router gate, shared MLP of layer NNN
    layer-NNN-experts.safetensors     the layer's routed experts, merged from their TP shards,
                                      each expert's matrices adjacent (contiguous per expert)
    prepared.json                     the manifest: quantization, and per file its size,
                                      sha256 and mtime; "complete" once every file is written
Tensor names are the quantized model's state-dict names (`...q_proj.qweight`, `.scales`, or
`.weight` where nothing is quantized), so loading is a name-for-name fill.

Each file is written atomically (app.atomic: a temporary name, fsynced, renamed), then
recorded in the manifest (itself replaced atomically): an interruption loses at most the file in progress, and a rerun
resumes after the last recorded file. Loading verifies every file's size, and the checksum of
any file whose mtime changed since it was recorded.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from app.atomic import atomic_file, atomic_write_text, remove_temps
from app.checkpoint_files import TOKENIZER_NAME, read_header, unit_names, unit_of
from app.engine.config import CONFIG_NAME, config_hash, load_config
from app.engine.plan import DISK_SLACK, Format, model_bytes
from app.engine.prepared_check import MANIFEST, remedy, unit_problems
from app.engine.prepared_check import intact as _intact
from app.engine.quantize import quantizable, quantize_int4, quantize_int8
from app.engine.weights import (
    CheckpointIndex,
    _Reader,
    build_meta_model,
    check_index,
    index_folder,
    read_tensor,
)
from app.errors import ModelFileError, StorageError, UserError

if TYPE_CHECKING:
    from typing_extensions import Buffer

FORMAT = "grok-desktop-prepared"
VERSION = 1
PREPARE_QUANTS = ("int4", "int8", "bf16")

ProgressFn = Callable[[str, int, int], None]
ALIGN = 4096
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
           "U8": torch.uint8, "I8": torch.int8}
_NAMES = {v: k for k, v in _DTYPES.items()}


def convert_tensor(name: str, w: torch.Tensor, fmt: Format | None) -> dict[str, torch.Tensor]:
    """One source weight -> its stored tensors (names of the quantized module tree); `fmt` is
    the plan's format for a quantized Linear, None for anything kept in bf16."""
    if fmt is None:
        return {name: w.to(torch.bfloat16).contiguous()}
    base = name.removesuffix(".weight")
    q, s = quantize_int8(w) if fmt.kind == "int8" else quantize_int4(w, fmt.group)
    return {f"{base}.qweight": q.contiguous(), f"{base}.scales": s.contiguous()}


class UnitWriter:
    """Writes a prepared folder one unit (output file) at a time: what `prepare` loops over,
    and what the downloader calls as soon as a unit's source files have arrived and been
    verified (app.download.pipeline). Opening it starts or resumes the manifest in `out`."""

    def __init__(self, src: str | Path, out: str | Path, quant: str = "int4",
                 group: int = 128, made_by: dict | None = None) -> None:
        """`made_by`: recorded in the manifest as "made_by" (the download records
        {"command": "download", "repo", "revision"}, app.engine.prepared_check)."""
        if quant not in PREPARE_QUANTS:
            raise UserError(f"prepare: unknown quantization {quant!r}; use int4, int8 or bf16")
        self.src, self.out = Path(src), Path(out)
        self.cfg = load_config(self.src)
        self.meta = build_meta_model(self.cfg)
        self.formats = quantizable(self.meta, quant, group)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = _start_manifest(self.src, self.out, quant, group, made_by)
        remove_temps(self.out)  # what an interrupted run was writing (rewritten when needed)
        _save_manifest(self.out, self.manifest)
        for extra in (CONFIG_NAME, TOKENIZER_NAME):
            if (self.src / extra).is_file():
                shutil.copyfile(self.src / extra, self.out / extra)
        self.units = unit_names(self.cfg.num_hidden_layers)
        self.estimate = int(model_bytes(self.cfg, quant, group) * DISK_SLACK)

    def is_done(self, unit: str) -> bool:
        entry = self.manifest["files"].get(unit)
        return entry is not None and _intact(self.out, unit, entry)

    @property
    def done_bytes(self) -> int:
        return sum(f["bytes"] for u, f in self.manifest["files"].items() if self.is_done(u))

    def write(self, unit: str, index: CheckpointIndex, reader: _Reader) -> int:
        """Convert the unit's tensors from `index` (which may cover only some source files:
        the unit's own tensors are checked against the config first) and record the file in
        the manifest. Returns the bytes written."""
        names = sorted(n for n in [*index.full, *index.shards] if unit_of(n) == unit)
        check_index(index, self.meta, {n for n in self.meta.state_dict() if unit_of(n) == unit})
        tensors = {}
        for name in names:
            fmt = self.formats.get(name.removesuffix(".weight"))
            tensors.update(convert_tensor(name, read_tensor(index, reader, name), fmt))
        self.manifest["files"][unit] = _write_unit(self.out, unit, tensors)
        _save_manifest(self.out, self.manifest)
        return self.manifest["files"][unit]["bytes"]

    def finish(self) -> Path:
        """Mark the folder complete (every unit must be written and intact)."""
        missing = [u for u in self.units if not self.is_done(u)]
        if missing:
            raise ModelFileError(f"{self.out}: {len(missing)} prepared files are missing "
                                 f"({missing[0]}, ...); "
                                 f"{remedy(self.out, self.manifest, 'finish')}")
        self.manifest["complete"] = True
        _save_manifest(self.out, self.manifest)
        return self.out


def prepare(src: str | Path, out: str | Path, quant: str = "int4", group: int = 128,
            progress: ProgressFn | None = None,
            on_file: Callable[[str], None] | None = None) -> Path:
    """Convert `src` (official layout) into `out`; resume if `out` holds a partial run."""
    src, out = Path(src), Path(out)
    if quant not in PREPARE_QUANTS:
        raise UserError(f"prepare: unknown quantization {quant!r}; use int4, int8 or bf16")
    index = index_folder(src)
    check_index(index, build_meta_model(load_config(src)))
    writer = UnitWriter(src, out, quant, group)
    done, estimate = writer.done_bytes, writer.estimate
    _check_disk(out, estimate - done)
    reader = _Reader()
    for unit in writer.units:
        if not writer.is_done(unit):
            done += writer.write(unit, index, reader)
            if on_file:
                on_file(unit)
        if progress:
            progress("preparing", min(done, estimate), estimate)
    return writer.finish()


def _start_manifest(src: Path, out: Path, quant: str, group: int,
                    made_by: dict | None = None) -> dict:
    fresh = {"format": FORMAT, "version": VERSION, "quant": quant, "group": group,
             "config_hash": config_hash(src), "source": str(src.resolve()), "files": {},
             "complete": False}
    if made_by is not None:
        fresh["made_by"] = made_by
    path = out / MANIFEST
    if not path.is_file():
        if any(out.iterdir()):
            raise UserError(f"{out}: folder is not empty and holds no {MANIFEST}; choose an "
                            "empty or new --out folder")
        return fresh
    old = read_manifest(out)
    same = all(old.get(k) == fresh[k] for k in ("format", "version", "quant", "group",
                                                "config_hash"))
    if not same:
        raise UserError(f"{out}: holds a different preparation ({old.get('quant')}, config "
                        f"{old.get('config_hash')}); choose another --out or delete that folder")
    old["complete"] = False
    if made_by is not None:
        old["made_by"] = made_by
    return old


def _check_disk(out: Path, need: int) -> None:
    free = shutil.disk_usage(out).free
    if need > free:
        raise StorageError(f"{out}: needs {need / 1e9:.1f} GB of free disk space, "
                           f"{free / 1e9:.1f} GB is free; free some space or choose another --out")


def _write_unit(out: Path, unit: str, tensors: dict[str, torch.Tensor]) -> dict:
    final = out / f"{unit}.safetensors"
    try:
        digest = write_aligned(final, tensors)
    except OSError as exc:
        raise StorageError(f"{final}: cannot be written ({exc.strerror}); check free space "
                           "and permissions, then run prepare again to resume") from exc
    stat = final.stat()
    return {"bytes": stat.st_size, "sha256": digest, "mtime_ns": stat.st_mtime_ns}


def aligned_layout(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]
                   ) -> tuple[bytes, dict[str, int], int]:
    """The layout `write_aligned` gives tensors of these (dtype, shape): the file's first bytes
    (length and JSON header, padded to a page), each tensor's byte offset in the file, and
    the file's size. Tensors in name order, each on a page boundary (U8 `__pad` tensors fill
    the gaps, zero bytes)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset, pads = 0, 0
    starts: dict[str, int] = {}
    for name in sorted(specs):
        gap = -offset % ALIGN
        if gap:
            header[f"__pad{pads}"] = {"dtype": "U8", "shape": [gap],
                                      "data_offsets": [offset, offset + gap]}
            offset, pads = offset + gap, pads + 1
        dtype, shape = specs[name]
        size = dtype.itemsize
        for d in shape:
            size *= d
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        starts[name] = offset
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    head = struct.pack("<Q", len(raw)) + raw
    return head, {k: len(head) + v for k, v in starts.items()}, len(head) + offset


def write_aligned(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """A standard safetensors file, tensors in name order, each starting on a page boundary
    (U8 `__pad` tensors fill the gaps): the CPU kernels need aligned data, and page-aligned
    tensors can be page-locked one by one. Written atomically (app.atomic). Returns the
    sha256 of the bytes written; raises OSError (disk full, ...) with `path` untouched."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    head, starts, _ = aligned_layout({k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()})
    digest = hashlib.sha256()
    with atomic_file(path) as f:
        digest.update(head)
        f.write(head)
        at = len(head)
        for name in sorted(tensors):
            gap = starts[name] - at
            chunks: list[bytes | torch.Tensor] = [bytes(gap)] if gap else []
            t = tensors[name]
            for chunk in (*chunks, t):
                # numpy's stubs declare ndarray a buffer only for Python 3.12+
                data = chunk if isinstance(chunk, bytes) else cast(
                    "Buffer", chunk.view(torch.uint8).numpy())
                digest.update(data)
                f.write(data)
            at = starts[name] + t.numel() * t.element_size()
    return digest.hexdigest()


def _save_manifest(out: Path, manifest: dict) -> None:
    try:
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    except OSError as exc:
        raise StorageError(f"{out / MANIFEST}: cannot be written ({exc.strerror}); check free "
                           "space and permissions, then run prepare again to resume") from exc


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable manifest ({exc}); run prepare again (for a "
                             "folder made by `grok-desktop download --keep-prepared-only`: "
                             "delete it and download again)") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a grok-desktop prepared folder manifest")
    return data


def is_prepared(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def verify(folder: str | Path, full: bool = False) -> dict:
    """Check a prepared folder before loading; return its manifest. `full` rehashes all."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        raise ModelFileError(f"{folder}: preparation is incomplete; "
                             f"{remedy(folder, manifest, 'finish')}")
    cfg = load_config(folder)
    for unit, what in unit_problems(folder, manifest, unit_names(cfg.num_hidden_layers), full,
                                    first_only=True):
        path = folder / f"{unit}.safetensors"
        fix = remedy(folder, manifest, "repair")
        if what == "missing":
            raise ModelFileError(f"{path}: missing from the prepared folder; {fix}")
        raise ModelFileError(f"{path}: checksum or size does not match the manifest (the "
                             f"file is damaged); {fix}")
    return manifest


def mmap_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of a private memory map: nothing is read
    until touched, pages are shared with the page cache until written (never, here)."""
    infos = read_header(path)
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, info in infos.items():
        if name.startswith("__pad"):
            continue
        dtype = _DTYPES[info.dtype]
        count = info.nbytes // dtype.itemsize
        t = torch.frombuffer(mapped, dtype=dtype, count=count, offset=info.offset) if count \
            else torch.empty(0, dtype=dtype)
        out[name] = t.view(info.shape)
    return out
