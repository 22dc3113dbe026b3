"""Loading the official folder: shard merging, unsharded experts, and every bad-input case."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from app.engine import load_model
from app.engine.config import load_config
from app.engine.tiny import shard_name
from app.engine.weights import index_folder
from app.errors import ModelFileError
from tests.engine.conftest import write_weights_only


def test_sharded_and_unsharded_experts_load_identically(tmp_path):
    """TP-8 shards merge (w1/w3 on dim 0, w2 on dim 1) to the same model as unsharded files."""
    a = load_model(write_weights_only(tmp_path / "a", sharded=True), dtype=torch.float32)
    b = load_model(write_weights_only(tmp_path / "b", sharded=False), dtype=torch.float32)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    w2 = a.state_dict()["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    assert w2.shape == (a.config.hidden_size, a.config.moe_intermediate_size)


def test_shard_order_matters(tmp_path):
    """Merging follows rank order: swapping two rank files changes the merged expert."""
    folder = write_weights_only(tmp_path / "m")
    ref = load_model(folder, dtype=torch.float32).state_dict()
    f0, f1 = folder / shard_name(6, 0), folder / shard_name(6, 1)
    tmp = folder / "swap"
    f0.rename(tmp), f1.rename(f0), tmp.rename(f1)
    got = load_model(folder, dtype=torch.float32).state_dict()
    name = "model.layers.0.block_sparse_moe.experts.0.w1.weight"
    assert not torch.equal(ref[name], got[name])
    rows = ref[name].shape[0] // 8
    assert torch.equal(ref[name][:rows], got[name][rows : 2 * rows])


def test_loads_in_bfloat16(ckpt):
    """dtype is honoured for every parameter."""
    model = load_model(ckpt, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def _error(folder) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(folder)
    return str(info.value)


def test_missing_folder(tmp_path):
    """A folder that does not exist is named."""
    assert "not found" in _error(tmp_path / "nope") or "config.json" in _error(tmp_path / "nope")


def test_missing_config(ckpt):
    """Missing config.json names the file."""
    (ckpt / "config.json").unlink()
    msg = _error(ckpt)
    assert "config.json" in msg and "missing" in msg


def test_missing_shard_rank(ckpt):
    """A missing TP rank file is named exactly."""
    (ckpt / shard_name(7, 7)).unlink()
    msg = _error(ckpt)
    assert shard_name(7, 7) in msg and "rank 7" in msg


def test_truncated_file(ckpt):
    """A truncated safetensors file is reported as truncated, naming it."""
    path = ckpt / "pytorch_model-00003-TP-common.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    msg = _error(ckpt)
    assert path.name in msg and "truncated" in msg


def test_corrupt_header(ckpt):
    """Garbage in a header is a corrupt-header error naming the file."""
    path = ckpt / "pytorch_model-00011-TP-common.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"\xff" * 12
    path.write_bytes(bytes(data))
    msg = _error(ckpt)
    assert path.name in msg and "corrupt" in msg


def test_shape_mismatch(tmp_path):
    """Weights that do not match config.json are refused before loading."""
    folder = write_weights_only(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    msg = _error(folder)
    assert "mlp" in msg and "expected" in msg and "config.json" in msg


def test_unknown_config_value(ckpt):
    """A config value we cannot honour is refused with its name."""
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_type"] = "yarn"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="rope_type"):
        load_config(ckpt)
    cfg["rope_type"], cfg["hidden_size"] = "original", "big"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="hidden_size"):
        load_config(ckpt)


def test_missing_tensor(ckpt):
    """A whole missing file is reported as a missing tensor."""
    (ckpt / "pytorch_model-00002-TP-common.safetensors").unlink()
    assert "model.norm.weight" in _error(ckpt)


def test_index_counts_every_file(ckpt):
    """The index reads every header: 15 common files and 3 x 8 shards."""
    index = index_folder(ckpt)
    assert index.ranks == set(range(8))
    assert len({i.file for i in index.full.values()}) == 15


def test_cli_bad_folder_exits_nonzero_with_one_line(tmp_path):
    """The CLI prints one clear line (no traceback) and exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", "app", "generate", "--model", str(tmp_path / "nothing"),
         "--prompt", "hi"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing" in lines[0] and "Traceback" not in proc.stderr
