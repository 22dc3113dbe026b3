"""Which pieces a prepared folder is written in when it is prepared while downloading: pure
arithmetic on tensor names and shapes (no torch import), so the download's disk check and
schedule (app.download.budget, which the GUI imports) can use it.

A *piece* (a "job") is what one source file, or a set of source files read together, adds to
one prepared unit (app.checkpoint_files.unit_of). In the official Grok-2 layout every file
holds one kind of tensor for all 64 layers, and each routed-expert file one tensor-parallel
rank of w1, w2 or w3 (docs/grok2.md#tp-shards). Most tensors convert shard by shard to the
very bytes `prepare` writes for the merged tensor, so each file becomes one piece per unit
and can be deleted as soon as its pieces are written:

- bf16: a shard is a block of rows (w1, w3: dim 0) or columns (w2: dim 1), copied.
- int8 (app.engine.quantize.quantize_int8, one scale per output row): w1/w3 shards hold
  whole rows, so their codes and scales are final. w2 shards split every row across the TP
  ranks, and the row's scale is the absmax over all of them: no shard's codes are known
  before every shard has been seen. Keeping a per-row running max does not help (the codes
  are round(w / scale) with the final scale) and storing the shard in any exact form takes
  its bf16 size, so int8 w2 is one piece over all its rank files, written once all have
  arrived.
- int4 (quantize_int4: groups of `g` along K, scales (K/g, N, 2), codes packed in blocks of
  PACK_ROWS rows): a w1/w3 shard is whole when its rows start on a packing block (2048 rows
  per rank in Grok-2); a w2 shard is whole when its columns are whole groups (2048 = 16
  groups of 128) and N is a multiple of the packing block (8192).

Anything else (a toy checkpoint whose shards are narrower than a group, say) falls back to
one piece over all rank files, which is exact by construction (the merged tensor).
"""

from __future__ import annotations

import json
import re
import struct

from app.checkpoint_files import unit_of
from app.engine.plan import weight_format

PACK_ROWS = 64  # rows per block of PyTorch's CPU int4 packing (quantize.unpack_int4_cpu)
_RANK_RE = re.compile(r"-TP-(\d{3})\.safetensors$")
_EXPERT_RE = re.compile(r"\.experts\.\d+\.(w[123])\.weight$")
SEP = "@"  # job id: UNIT@FILE[+FILE...]


def file_rank(file: str) -> int | None:
    """The TP rank of an expert shard file (`...-TP-003.safetensors` -> 3), None otherwise."""
    m = _RANK_RE.search(file)
    return int(m.group(1)) if m else None


def shard_dim(name: str) -> int:
    """The dimension a routed expert's tensor is split along: w2 along K (1), w1/w3 along the
    output rows (0), as in app.engine.weights."""
    m = _EXPERT_RE.search(name)
    return 1 if m and m.group(1) == "w2" else 0


def splits(kind: str, group: int, dim: int, full: tuple[int, ...], width: int) -> bool:
    """Whether one TP shard of `width` along `dim` of a tensor of shape `full`, stored as
    `kind` (bf16, int8, int4 with `group`), converts on its own to exactly its part of the
    merged tensor's stored bytes (see the module docstring). Ranks are equal slices."""
    if width <= 0 or full[dim] % width:
        return False
    if kind in ("bf16", "float32"):
        return True
    if kind == "int8":
        return dim == 0
    if kind == "int4" and len(full) == 2:
        n, _ = full
        if dim == 0:
            return width % PACK_ROWS == 0
        return group > 0 and width % group == 0 and n % PACK_ROWS == 0
    return False


def job_id(unit: str, files: tuple[str, ...] | list[str]) -> str:
    return unit + SEP + "+".join(sorted(files))


def parse_job(job: str) -> tuple[str, tuple[str, ...]]:
    unit, _, files = job.partition(SEP)
    return unit, tuple(files.split("+"))


def tensor_kind(name: str, full: tuple[int, ...], quant: str, group: int) -> tuple[str, int]:
    """(kind, group) `prepare` stores a routed expert's weight in (plan.weight_format)."""
    fmt = weight_format(name.removesuffix(".weight"), full[0], full[1], quant, group)
    return fmt.kind, fmt.group


def shard_files(name: str, full_shape: tuple[int, ...], shard_shape: tuple[int, ...],
                file: str, rank_files: list[str], quant: str, group: int) -> tuple[str, ...]:
    """The files of the piece that one shard of `name` (in `file`, rank files `rank_files`)
    belongs to: its own file when it converts alone, else all the tensor's rank files."""
    dim = shard_dim(name)
    kind, g = tensor_kind(name, full_shape, quant, group)
    if len(shard_shape) == len(full_shape) and splits(kind, g, dim, full_shape,
                                                      shard_shape[dim]):
        return (file,)
    return tuple(sorted(rank_files))


def header_shapes(header: bytes) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the first bytes of a safetensors file (length + header)."""
    (n,) = struct.unpack("<Q", header[:8])
    meta = json.loads(header[8:8 + n])
    return {k: tuple(v["shape"]) for k, v in meta.items() if k != "__metadata__"}


def plan_jobs(shapes: dict[str, dict[str, tuple[int, ...]]], quant: str, group: int = 128
              ) -> dict[str, set[str]]:
    """Job id -> the source files it reads, for source files `shapes` (file -> tensor ->
    shape). Raises ValueError when TP shards of one tensor have different widths."""
    ranks: dict[str, dict[str, tuple[int, ...]]] = {}  # sharded tensor -> file -> shape
    jobs: dict[str, set[str]] = {}
    for file, tensors in shapes.items():
        for name, shape in tensors.items():
            if file_rank(file) is None:
                jobs.setdefault(job_id(unit_of(name), (file,)), set()).add(file)
            else:
                ranks.setdefault(name, {})[file] = shape
    for name, parts in ranks.items():
        dim = shard_dim(name)
        widths = {s[dim] if len(s) > dim else -1 for s in parts.values()}
        if len(widths) != 1:
            raise ValueError(f"{name}: its TP shards have different widths {sorted(widths)}")
        first = next(iter(parts.values()))
        full = list(first)
        full[dim] = sum(s[dim] for s in parts.values())
        for file, shape in parts.items():
            files = shard_files(name, tuple(full), shape, file, list(parts), quant, group)
            jobs.setdefault(job_id(unit_of(name), files), set()).update(files)
    return jobs
