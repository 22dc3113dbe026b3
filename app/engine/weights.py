"""Reading the official xai-org/grok-2 folder: discover, check, then load.

Every `*.safetensors` header in the folder is read (no reliance on which file number holds
what). Routed experts come TP-sharded (`*-TP-000` ... `*-TP-007`) and are merged on the fly:
w1/w3 along dim 0, w2 along dim 1, in rank order (docs/grok2.md#tp-shards); unsharded experts are
accepted too.
Everything is checked against the config before a byte of weights is allocated. The model is
built on the meta device and each tensor goes from the memory-mapped file straight to its
target device and dtype, one at a time: the weights are never held twice.

All checkpoint-name handling lives here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from app.checkpoint_files import TensorInfo, read_header
from app.engine.config import Grok2Config, check_folder, load_config
from app.engine.model import Grok2
from app.errors import ModelFileError

_RANK_RE = re.compile(r"-TP-(\d{3})\.safetensors$")
_EXPERT_RE = re.compile(r"\.experts\.\d+\.(w[123])\.weight$")
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}

ProgressFn = Callable[[str, int, int], None]  # (stage, bytes done, bytes total)


@dataclass
class CheckpointIndex:
    """Where each tensor lives: full tensors by name, and TP shards by name then rank."""

    folder: Path
    full: dict[str, TensorInfo] = field(default_factory=dict)
    shards: dict[str, dict[int, TensorInfo]] = field(default_factory=dict)
    ranks: set[int] = field(default_factory=set)
    total_bytes: int = 0


def index_folder(folder: str | Path) -> CheckpointIndex:
    folder = check_folder(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{folder}: no .safetensors files; download the Grok-2 weights "
                             "(hf download xai-org/grok-2) into this folder")
    index = CheckpointIndex(folder)
    for path in files:
        m = _RANK_RE.search(path.name)
        for name, info in read_header(path).items():
            index.total_bytes += info.nbytes
            if m:
                rank = int(m.group(1))
                index.ranks.add(rank)
                index.shards.setdefault(name, {})[rank] = info
            else:
                index.full[name] = info
    return index


def _shard_dim(name: str) -> int:
    m = _EXPERT_RE.search(name)
    if not m:
        raise ModelFileError(f"{name}: only routed-expert tensors may be TP-sharded")
    return 1 if m.group(1) == "w2" else 0


def _missing_rank_file(index: CheckpointIndex, parts: dict[int, TensorInfo], rank: int) -> str:
    sample = next(iter(parts.values())).file.name
    return _RANK_RE.sub(f"-TP-{rank:03d}.safetensors", sample)


def _check_sharded(index: CheckpointIndex, name: str, want: tuple[int, ...]) -> TensorInfo:
    parts = index.shards[name]
    dim = _shard_dim(name)
    first = parts[min(parts)]
    width = first.shape[dim] if len(first.shape) == len(want) else 0
    # how many ranks the config implies (the whole TP-00R file may be absent from the folder)
    n_ranks = want[dim] // width if width and want[dim] % width == 0 else max(parts) + 1
    for rank in range(max(n_ranks, max(parts) + 1)):
        if rank not in parts:
            missing = _missing_rank_file(index, parts, rank)
            raise ModelFileError(f"{index.folder / missing}: shard rank {rank} of {name} is "
                                 "missing; download this file again")
    shapes = [parts[r].shape for r in sorted(parts)]
    merged = list(shapes[0])
    merged[dim] = sum(s[dim] for s in shapes)
    if tuple(merged) != want or any(len(s) != len(want) for s in shapes):
        raise ModelFileError(f"{first.file}: {name} shards merge to {tuple(merged)}, "
                             f"expected {want}; the checkpoint does not match config.json")
    return first


def check_index(index: CheckpointIndex, model: Grok2, names: Collection[str] | None = None
                ) -> None:
    """Every expected tensor (or only those in `names`: one prepared unit's) exists, with the
    expected shape and a float dtype, and no tensor is left over: an unknown one (a bias, a
    65th layer) means the files and config.json describe different models, and loading
    without it would compute another model silently."""
    expected = model.state_dict(keep_vars=True)
    extra = sorted((set(index.full) | set(index.shards)) - set(expected))
    if extra:
        info = index.full.get(extra[0]) or next(iter(index.shards[extra[0]].values()))
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ModelFileError(f"{info.file}: holds tensor {extra[0]}{more}, which a Grok-2 of "
                             "this config.json does not have; check that config.json belongs "
                             "to these weights (e.g. num_hidden_layers)")
    for name, param in expected.items():
        if names is not None and name not in names:
            continue
        want = tuple(param.shape)
        if name in index.full:
            info = index.full[name]
            if info.shape != want:
                raise ModelFileError(f"{info.file}: {name} has shape {info.shape}, expected "
                                     f"{want}; the checkpoint does not match config.json")
        elif name in index.shards:
            info = _check_sharded(index, name, want)
        else:
            raise ModelFileError(f"{index.folder}: tensor {name} is missing from every "
                                 ".safetensors file; the download is incomplete")
        if info.dtype not in _DTYPES:
            raise ModelFileError(f"{info.file}: {name} has dtype {info.dtype}; expected bf16, "
                                 "f16 or f32 (quantized folders come from `grok-desktop prepare`)")


class _Reader:
    """Keeps each file open (memory-mapped) while loading."""

    def __init__(self) -> None:
        self._open: dict[Path, safe_open] = {}

    def get(self, info: TensorInfo, name: str) -> torch.Tensor:
        if info.file not in self._open:
            try:
                self._open[info.file] = safe_open(str(info.file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise ModelFileError(f"{info.file}: cannot be opened ({exc}); "
                                     "download it again") from exc
        return self._open[info.file].get_tensor(name)


def read_tensor(index: CheckpointIndex, reader: _Reader, name: str) -> torch.Tensor:
    if name in index.full:
        return reader.get(index.full[name], name)
    parts = index.shards[name]
    return torch.cat([reader.get(parts[r], name) for r in sorted(parts)], dim=_shard_dim(name))


def build_meta_model(cfg: Grok2Config) -> Grok2:
    with torch.device("meta"):
        return Grok2(cfg)


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    setattr(module, attr, torch.nn.Parameter(value, requires_grad=False))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, *, device: str | torch.device | None = "cpu",
               dtype: torch.dtype | None = None, progress: ProgressFn | None = None) -> Grok2:
    """Build Grok-2 from an official folder with every weight on `device` in `dtype`."""
    folder = Path(path)
    cfg = load_config(folder)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = build_meta_model(cfg)
    index = index_folder(folder)
    check_index(index, model)
    reader, done, names = _Reader(), 0, list(model.state_dict(keep_vars=True))
    for name in names:
        tensor = read_tensor(index, reader, name)
        done += tensor.numel() * tensor.element_size()
        _set_tensor(model, name, tensor.to(device=device, dtype=dtype))
        del tensor
        if progress:
            progress("loading weights", done, index.total_bytes)
    return model.eval()
