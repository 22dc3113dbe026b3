"""settings.json as a user, an editor or a disk may leave it: every file either loads or gives
one UserError naming the file, the key and the fix; a valid file round-trips; a save never loses
a file that did not load. Property-based (hypothesis) plus the cases a tester found."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import paths
from app.errors import UserError
from app.messages import GenerationParams
from app.settings import Settings, load_settings, save_settings

KEYS = [f.name for f in fields(Settings) if f.name != "sampling"]
SAMPLING_KEYS = [f.name for f in fields(GenerationParams)]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path))
    return tmp_path


def _load_text(text: str | bytes) -> Settings | str:
    """Loaded settings, or the UserError's message. Any other exception fails the test."""
    file = paths.settings_path()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        return load_settings()
    except UserError as exc:
        message = str(exc)
        assert message.startswith(str(file)) and "\n" not in message
        return message


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=4),
       st.dictionaries(st.sampled_from(SAMPLING_KEYS), JSON_VALUES, max_size=3))
def test_any_values_load_or_name_the_key(top, sampling):
    """Arbitrary JSON values under real keys: loaded settings hold exactly the right types
    and finite numbers; a refusal names a key that was given."""
    doc = {**top, "sampling": sampling}
    got = _load_text(json.dumps(doc, allow_nan=True))
    if isinstance(got, Settings):
        for key, value in top.items():
            if value is None:  # an explicit null takes the default
                assert getattr(got, key) == getattr(Settings(), key)
            else:
                assert getattr(got, key) == value and type(getattr(got, key)) in (
                    type(value), float)
        for f in fields(got.sampling):
            value = getattr(got.sampling, f.name)
            assert value is None or not isinstance(value, float) or math.isfinite(value)
    else:
        assert any(f"'{k}" in got for k in [*top, *sampling, "sampling"]), got  # 'key' or 'key[i]'


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=60))
def test_any_bytes_load_or_fail_cleanly(raw):
    """Random bytes (broken UTF-8, truncated JSON, BOMs) never raise anything but UserError."""
    _load_text(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.builds(
    Settings,
    gpu_memory_gb=st.floats(0, 4096), cpu_memory_gb=st.floats(0, 4096),
    context_tokens=st.integers(256, 1 << 20), api_server_port=st.integers(0, 65535),
    system_prompt=st.text(), theme=st.sampled_from(["system", "light", "dark"]),
    sampling=st.builds(GenerationParams, temperature=st.floats(0, 5), top_p=st.floats(0.01, 1),
                       top_k=st.integers(0, 1000), max_tokens=st.integers(1, 1 << 16),
                       seed=st.none() | st.integers(0, 2**63))))
def test_valid_settings_round_trip(s):
    """Whatever the dialog can save loads back equal."""
    save_settings(s)
    assert load_settings() == s


@pytest.mark.parametrize(("content", "names"), [
    ('{"gpu_memory_gb": "8"}', "'gpu_memory_gb' must be a number"),
    ('{"api_server_port": true}', "'api_server_port' must be a whole number (got true)"),
    ('{"sampling": {"temperature": NaN}}', "'temperature' must be a finite number (got NaN)"),
    ('{"sampling": {"temperature": Infinity}}', "'temperature' must be a finite number"),
    ('{"sampling": {"top_k": -5}}', "top_k must be >= 0"),
    ('{"context_tokens": 100}', "'context_tokens' must be >= 256"),
    ('{"cpu_memory_gb": -1}', "'cpu_memory_gb' must be >= 0"),
    (b"\xff\xfe{\x00}\x00", "not UTF-8 text"),
])
def test_tester_cases_name_the_key_and_the_fix(content, names):
    """The faults found at this boundary: each names the key (or the encoding) and the fix."""
    got = _load_text(content)
    assert isinstance(got, str) and names in got
    assert "delete" in got


def test_bom_is_accepted():
    """A UTF-8 BOM (Windows editors add one) is not an error."""
    assert _load_text(b'\xef\xbb\xbf{"theme": "dark"}') == Settings(theme="dark")


def test_saving_over_an_unreadable_file_keeps_a_copy():
    """The app starts from the defaults when the file is bad; the first save keeps the user's
    file as settings.json.unreadable instead of destroying it."""
    bad = b'{"theme": "dark", "gpu_memory_gb": "8"}'
    paths.settings_path().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_path().write_bytes(bad)
    save_settings(Settings(theme="light"))
    assert load_settings().theme == "light"
    copy = paths.settings_path().with_name("settings.json.unreadable")
    assert copy.read_bytes() == bad
    save_settings(Settings(theme="dark"))  # a readable file is replaced without a copy
    assert copy.read_bytes() == bad
