"""Settings: typed defaults, JSON round trip, atomic saves, clear errors, the folder check."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from app import paths
from app.errors import UserError
from app.settings import Settings, check_model_folder, load_settings, save_settings, with_sampling


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path))
    return tmp_path


def test_missing_file_gives_defaults():
    """A fresh install has no settings file and starts from the defaults."""
    assert load_settings() == Settings()


def test_round_trip_keeps_every_field():
    """What is saved is what is loaded, sampling included."""
    s = with_sampling(replace(Settings(), model_folder="/m", theme="dark", system_prompt="Be brief",
                              gpu_memory_gb=24.0, welcome_done=True), temperature=0.2, seed=7)
    path = save_settings(s)
    assert path == paths.settings_path()
    assert load_settings() == s
    assert json.loads(path.read_text())["sampling"]["seed"] == 7


def test_save_is_atomic_and_leaves_no_temp_files(home):
    """A save replaces the file in one step and cleans up its temp file."""
    save_settings(Settings(theme="light"))
    save_settings(Settings(theme="dark"))
    folder = paths.settings_path().parent
    assert [p.name for p in folder.iterdir()] == ["settings.json"]
    assert load_settings().theme == "dark"


def test_failed_save_is_one_clear_error_and_keeps_the_old_file(monkeypatch):
    """A disk that refuses the rename: one UserError naming the file, the old settings intact,
    no temp file left (app.atomic does the write)."""
    import app.atomic

    save_settings(Settings(theme="light"))

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app.atomic.os, "replace", full)
    with pytest.raises(UserError) as err:
        save_settings(Settings(theme="dark"))
    assert str(err.value) == (f"{paths.settings_path()}: cannot be written (No space left on "
                              "device); check the disk and the folder's permissions")
    assert [p.name for p in paths.settings_path().parent.iterdir()] == ["settings.json"]
    assert load_settings().theme == "light"


def test_unknown_keys_ignored_missing_keys_default():
    """Older or newer files load: unknown keys are dropped, absent ones take defaults."""
    paths.settings_path().write_text(json.dumps({"theme": "light", "from_the_future": 1}))
    assert load_settings() == Settings(theme="light")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"theme": "pink"}',
                                     '{"sampling": {"top_p": 5}}', '{"sampling": 3}'])
def test_bad_file_is_one_clear_error(content):
    """A corrupt or invalid file names itself and the fix."""
    paths.settings_path().write_text(content)
    with pytest.raises(UserError) as err:
        load_settings()
    message = str(err.value)
    assert str(paths.settings_path()) in message and "delete the file" in message


def write_safetensors(path: Path, tensors: dict[str, int], truncate: int = 0) -> None:
    """A header-only-correct safetensors file: `tensors` maps name -> byte size."""
    header, offset = {}, 0
    for name, size in tensors.items():
        header[name] = {"dtype": "BF16", "shape": [size // 2], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (offset - truncate))


def make_folder(root: Path, ranks: int = 2) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 2, "num_local_experts": 8, "max_position_embeddings": 4096}))
    (root / "tokenizer.tok.json").write_text("{}")
    write_safetensors(root / "pytorch_model-00000-TP-common.safetensors", {"a": 1000})
    for rank in range(ranks):
        write_safetensors(root / f"pytorch_model-00006-TP-{rank:03d}.safetensors", {"w1": 500})
        write_safetensors(root / f"pytorch_model-00007-TP-{rank:03d}.safetensors", {"w2": 500})
    return root


def test_folder_check_reports_what_was_found(tmp_path):
    """A complete folder is ok, with file count, size and the config's shape."""
    check = check_model_folder(make_folder(tmp_path / "grok"))
    assert check.ok and len(check.found) == 5 and check.total_bytes == 3000
    assert check.layers == 2 and check.experts == 8 and check.context_length == 4096
    assert "Found 5 weight files" in check.summary()


def test_folder_check_names_the_missing_shard(tmp_path):
    """A missing TP shard is reported by its exact file name."""
    root = make_folder(tmp_path / "grok")
    (root / "pytorch_model-00007-TP-001.safetensors").unlink()
    check = check_model_folder(root)
    assert not check.ok
    assert check.problems == ((f"{root / 'pytorch_model-00007-TP-001.safetensors'}: missing; "
                              "download this file"),)


def test_folder_check_finds_truncated_and_missing_files(tmp_path):
    """Truncation, a missing config and a missing tokenizer are each one line."""
    root = make_folder(tmp_path / "grok")
    write_safetensors(root / "pytorch_model-00000-TP-common.safetensors", {"a": 1000}, truncate=10)
    (root / "config.json").unlink()
    (root / "tokenizer.tok.json").unlink()
    text = check_model_folder(root).summary()
    assert "00000-TP-common.safetensors: truncated" in text
    assert "config.json: missing" in text and "tokenizer.tok.json: missing" in text


def test_folder_check_missing_folder(tmp_path):
    """A folder that does not exist says so."""
    check = check_model_folder(tmp_path / "nope")
    assert not check.ok and "folder not found" in check.summary()


def test_backend_and_api_fields_round_trip_in_a_private_file():
    """Remote and API-server fields survive a save; the file is owner-only (it holds keys)."""
    import os
    import stat

    s = replace(Settings(), backend="remote", remote_url="http://gpu:30000", remote_model="grok-2",
                remote_api_key="sk-remote", remote_connect_timeout_s=3.0,
                remote_read_timeout_s=60.0, api_server_enabled=True, api_server_port=4321,
                api_server_key="sk-local", api_server_allow_remote=True, context_tokens=4096,
                gpu_memory_gb=24.0, cpu_memory_gb=128.0)
    path = save_settings(s)
    assert load_settings() == s
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_old_file_without_backend_fields_loads_with_defaults():
    """A settings file from before the remote backend loads: local backend, API server off."""
    paths.settings_path().write_text(json.dumps({"model_folder": "/m", "gpu_memory_gb": 24}))
    s = load_settings()
    assert s.model_folder == "/m" and s.backend == "local" and not s.api_server_enabled
    assert (s.api_server_port, s.remote_connect_timeout_s, s.remote_read_timeout_s) == (1234, 10, 300)


@pytest.mark.parametrize("content", ['{"backend": "cloud"}', '{"api_server_allow_remote": true}',
                                     '{"remote_read_timeout_s": 0}'])
def test_bad_backend_values_are_clear_errors(content):
    """An unknown backend, remote listening without a key, a zero timeout: one clear error."""
    paths.settings_path().write_text(content)
    with pytest.raises(UserError, match="invalid settings"):
        load_settings()
