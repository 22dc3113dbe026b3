"""config.json and the model folder as a download or an editor may leave them: every case
ends in a loaded config or one ModelFileError naming the file (or folder), the key and the fix.
Property-based (hypothesis) plus the cases a tester found (num_key_value_heads 0, a missing
hidden_size, an unreadable folder, an unknown tensor)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from app.engine.config import REQUIRED, Grok2Config, load_config
from app.engine.weights import load_model
from app.errors import ModelFileError
from app.placement import preview
from app.settings import Settings
from tests.engine.conftest import SMALL, write_weights_only

VALUES = st.none() | st.booleans() | st.integers(-3, 2**40) | st.text(max_size=6) | st.floats(
    allow_nan=True, allow_infinity=True) | st.lists(st.integers(), max_size=2) | st.just({})


def _write(folder: Path, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data, allow_nan=True))
    return folder


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(SMALL)), VALUES, max_size=3),
       st.lists(st.sampled_from(sorted(SMALL)), max_size=2))
def test_mutated_config_loads_or_names_the_key(tmp_path, changes, dropped):
    """Values replaced by anything and keys dropped: load_config returns a config whose
    fields hold exactly the file's values, or raises ModelFileError naming config.json and a
    key that was changed or dropped. Never another exception."""
    data = {k: v for k, v in {**SMALL, **changes}.items() if k not in dropped}
    folder = _write(tmp_path / "m", data)
    try:
        cfg = load_config(folder)
    except ModelFileError as exc:
        message = str(exc)
        assert message.startswith(str(folder / "config.json")) and "\n" not in message
        assert any(key in message for key in [*changes, *dropped]), message
        return
    for key, value in data.items():
        if value is not None:
            assert getattr(cfg, key) == value


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=80))
def test_any_bytes_in_config_fail_cleanly(tmp_path, raw):
    """Random bytes never raise anything but ModelFileError."""
    folder = tmp_path / "b"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(raw)
    with pytest.raises(ModelFileError, match="config.json"):
        load_config(folder)


def test_zero_kv_heads_is_a_clear_error_not_a_division(tmp_path):
    """num_key_value_heads 0 used to raise ZeroDivisionError in generate and plan."""
    folder = _write(tmp_path / "m", {**SMALL, "num_key_value_heads": 0})
    with pytest.raises(ModelFileError, match="num_key_value_heads must be positive"):
        load_config(folder)
    result = preview(Settings(model_folder=str(folder), gpu_memory_gb=8.0, cpu_memory_gb=64.0))
    assert not result.fits and "num_key_value_heads" in result.headline


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_shape_field_names_itself(tmp_path, key):
    """A config.json without hidden_size (or any shape field) is called incomplete, in the
    loader and in the plan preview, instead of taking Grok-2's value or blaming a shard."""
    folder = _write(tmp_path / "m", {k: v for k, v in SMALL.items() if k != key})
    with pytest.raises(ModelFileError, match=f"{key} missing; the file is incomplete"):
        load_config(folder)
    result = preview(Settings(model_folder=str(folder), gpu_memory_gb=8.0, cpu_memory_gb=64.0))
    assert not result.fits and key in result.headline


def test_no_such_folder_and_a_file_instead_of_a_folder(tmp_path):
    """`plan --model nope` says there is no such folder, not that config.json is missing."""
    with pytest.raises(ModelFileError, match="no such folder"):
        load_config(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFileError, match="not a folder"):
        load_config(tmp_path / "file")


def test_a_folder_without_config_json_names_the_folder_once(tmp_path):
    """A folder with no config.json: one line naming the folder (not "config.json:
    config.json is missing") and what a model folder holds."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError) as err:
        load_config(tmp_path / "empty")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'empty'}: has no config.json;")
    assert "*.safetensors" in message and "\n" not in message


def test_unreadable_folder_is_one_line(tmp_path, monkeypatch):
    """A folder the user may not read gives the permission fix, not a PermissionError
    traceback. (Tests run as root here, so the denial is simulated.)"""
    folder = write_weights_only(tmp_path / "m")
    real = Path.iterdir

    def denied(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(ModelFileError, match="permission denied"):
        load_model(folder)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_really_unreadable_config(tmp_path):
    folder = write_weights_only(tmp_path / "m")
    (folder / "config.json").chmod(0)
    with pytest.raises(ModelFileError, match="permission denied"):
        load_config(folder)


def test_unknown_tensor_is_refused_by_name(tmp_path):
    """An extra tensor (here a bias Grok-2 does not have) is named with its file, instead of
    being ignored without a word."""
    folder = write_weights_only(tmp_path / "m")
    extra = folder / "pytorch_model-00099-TP-common.safetensors"
    save_file({"model.layers.0.attn.o_proj.bias": torch.zeros(4)}, str(extra))
    with pytest.raises(ModelFileError) as info:
        load_model(folder)
    assert extra.name in str(info.value) and "o_proj.bias" in str(info.value)


def test_grok2_defaults_are_valid():
    """The published config (what plan uses without a folder) passes every check."""
    assert Grok2Config().kv_groups == 8
