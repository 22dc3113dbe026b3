"""Reading safetensors headers without torch: what the engine's loader and the Settings
folder check both need (the GUI side may not import torch or the engine). Also which prepared
file (unit) each tensor goes to, which `prepare` and the downloader's schedule both need.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from app.errors import ModelFileError

TOKENIZER_NAME = "tokenizer.tok.json"
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int = 0  # where the tensor's bytes start in the file


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one safetensors header, checking it against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise ModelFileError(f"{path}: file is truncated (no header); download it again")
            (n,) = struct.unpack("<Q", raw_len)
            if n > MAX_HEADER or 8 + n > size:
                raise ModelFileError(f"{path}: corrupt or truncated safetensors header; "
                                     "download the file again")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors header ({exc}); "
                             "download the file again") from exc
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header; download the file again")
    infos, data_end = {}, 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = meta["data_offsets"]
            infos[name] = TensorInfo(path, meta["dtype"], tuple(meta["shape"]), end - begin,
                                     8 + n + begin)
            data_end = max(data_end, end)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: corrupt entry for tensor {name!r}; "
                                 "download the file again") from exc
    if 8 + n + data_end > size:
        raise ModelFileError(f"{path}: truncated ({size:,} of {8 + n + data_end:,} bytes); "
                             "download this file again")
    return infos


def unit_names(num_layers: int) -> list[str]:
    """The prepared folder's files (without `.safetensors`), in the order prepare writes them."""
    names = ["common"]
    for i in range(num_layers):
        names += [f"layer-{i:03d}", f"layer-{i:03d}-experts"]
    return names


def unit_of(name: str) -> str:
    """Which prepared file holds a (source) tensor name."""
    if not name.startswith("model.layers."):
        return "common"
    layer = int(name.split(".")[2])
    return f"layer-{layer:03d}" + ("-experts" if ".block_sparse_moe.experts." in name else "")
