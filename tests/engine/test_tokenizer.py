"""Tests for app.engine.tokenizer and app.engine.detokenizer (docs/grok2.md#tokenizer)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tiktoken

from app import paths
from app.engine import tokenizer as tk
from app.engine.tok_train import build_tok_json
from app.engine.tokenizer import load_tokenizer, read_tok_file
from app.errors import ModelFileError

N_MERGES = 300
# docs/grok2.md#pre-tokenization-regex, copied here rather than imported so the reference does not
# share a typo with the code.
V1_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CASES = [
    "",
    "Hello, world!",
    "naïve café, Straße, ÆØÅ, İstanbul, ẞ",
    "你好，世界！日本語のテキスト。한국어 문장",
    "שלום עולם، مرحبا بالعالم؟",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇫🇷",
    "In 2024 there were 1234567 items; pi is 3.14159, 0x1F600 and -17.5e-3.",
    "a  b   c    \n\n\n   d \t\t e\t \n",
    "line1\r\nline2\r\n\r\n\tindented\r\n",
    'def f(x):\n    return {"k": [1, 2, 3]}  # comment\n',
    "I'M you'RE we'Ve they'LL it's HE'D don'T 'S 'ſ Ll",
    "before<|separator|>after<|eos|><|pad|> and <|reserved_9|>x<|unknown|> <|sep",
    "end   ",
    "e\u0301 a\u200bb ﬁ Ａ ｶﾀｶﾅ",
    "odd spaces:\u00a0\u3000x\u2028y\u0085z\x0b\x0c\u200b\ufeff end",
]


def _fuzz_cases(n: int) -> list[str]:
    pool = [*"aZé日🙂 \t\r\n'0123.,!?-_", "'s", "'LL", "\u200d", "\u0301", "<|eos|>", "<|pad|>"]
    rnd = random.Random(1234)
    return ["".join(rnd.choice(pool) for _ in range(rnd.randint(1, 30))) for _ in range(n)]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def corpus() -> str:
    return (paths.resources_dir() / "demo-corpus.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok_dicts(corpus: str) -> dict[bool, dict]:
    return {
        first: build_tok_json(corpus, N_MERGES, specials_first=first) for first in (True, False)
    }


def _write(folder: Path, data: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "tokenizer.tok.json"
    file.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return file


def _tiktoken(data: dict, pattern: str = V1_PATTERN) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        "test",
        pat_str=pattern,
        mergeable_ranks={bytes(t["bytes"]): t["token"] for t in data["regular_tokens"]},
        special_tokens={bytes(t["bytes"]).decode(): t["token"] for t in data["special_tokens"]},
        explicit_n_vocab=data["vocab_size"],
    )


@pytest.fixture(params=[True, False], ids=["specials_first", "specials_last"])
def layout(request: pytest.FixtureRequest, tok_dicts: dict[bool, dict], tmp_path: Path):
    data = tok_dicts[request.param]
    return data, load_tokenizer(_write(tmp_path / "model", data))


def test_encode_matches_tiktoken(layout, corpus: str) -> None:
    """Encoding equals tiktoken with the same ranks and all specials allowed, in both id layouts."""
    data, tok = layout
    ref = _tiktoken(data)
    for text in [*CASES, corpus, *_fuzz_cases(300)]:
        assert tok.encode(text) == ref.encode(text, allowed_special="all"), repr(text)


def test_custom_pat_str_is_used(tok_dicts: dict[bool, dict], tmp_path: Path) -> None:
    """A pat_str in the file replaces the V1 regex (and word_split is then not required)."""
    data = {**tok_dicts[True], "pat_str": r"\S+|\s+", "word_split": "V9"}
    tok = load_tokenizer(_write(tmp_path, data))
    ref = _tiktoken(data, r"\S+|\s+")
    for text in CASES:
        assert tok.encode(text) == ref.encode(text, allowed_special="all")


def test_round_trip(layout, corpus: str) -> None:
    """decode(encode(x)) gives back x exactly, specials included."""
    _, tok = layout
    for text in [*CASES, corpus, *_fuzz_cases(100)]:
        assert tok.decode(tok.encode(text)) == text


def test_each_digit_is_its_own_token(layout) -> None:
    """V1 splits numbers into single digits, even when a multi-digit token would exist."""
    _, tok = layout
    ids = tok.encode("2024 1234567890")
    digits = [tok.decode([i]) for i in ids if tok.decode([i]).strip()]
    assert digits == list("20241234567890")


def test_special_strings_become_special_ids(layout) -> None:
    """Special-token text typed in a prompt becomes that special token, never rejected."""
    data, tok = layout
    ids = {bytes(t["bytes"]).decode(): t["token"] for t in data["special_tokens"]}
    got = tok.encode("a<|separator|>b<|eos|><|reserved_9|>")
    assert ids["<|separator|>"] in got and ids["<|eos|>"] in got and ids["<|reserved_9|>"] in got
    assert len(got) == 5


def test_encode_literal_matches_tiktoken_ordinary(layout, corpus: str) -> None:
    """encode_literal reads special-token text as ordinary text, exactly as tiktoken's
    encode_ordinary does, and no special id ever appears in its output."""
    data, tok = layout
    ref = _tiktoken(data)
    specials = set(tok.specials.values())
    texts = [*CASES, corpus, *_fuzz_cases(300), "a<|separator|>b<|eos|><|reserved_9|>"]
    for text in texts:
        got = tok.encode_literal(text)
        assert got == ref.encode_ordinary(text), repr(text)
        assert not specials & set(got)
        assert tok.decode(got) == text
    # and the ordinary encode still makes specials of the same text (the switch is not shared)
    assert tok.separator_id in tok.encode("<|separator|>")


def test_ids_come_from_the_file(layout) -> None:
    """eos, separator, pad, special ids and vocab size are the file's, whatever the layout."""
    data, tok = layout
    ids = {bytes(t["bytes"]).decode(): t["token"] for t in data["special_tokens"]}
    assert (tok.eos_id, tok.separator_id, tok.pad_id) == (
        ids["<|eos|>"],
        ids["<|separator|>"],
        ids["<|pad|>"],
    )
    assert tok.special_ids == set(ids.values())
    assert tok.vocab_size == data["vocab_size"] == 256 + N_MERGES + 16


def test_pad_is_optional(tok_dicts: dict[bool, dict], tmp_path: Path) -> None:
    """A file without <|pad|> loads and reports pad_id None."""
    data = dict(tok_dicts[True])
    data["special_tokens"] = [t for t in data["special_tokens"] if bytes(t["bytes"]) != b"<|pad|>"]
    assert load_tokenizer(_write(tmp_path, data)).pad_id is None


def test_id_to_bytes_and_decode_of_partial_bytes(layout) -> None:
    """Token bytes come from the file; unknown ids are empty; invalid UTF-8 decodes to U+FFFD."""
    data, tok = layout
    byte_ff = next(t["token"] for t in data["regular_tokens"] if t["bytes"] == [0xFF])
    assert tok.id_to_bytes(byte_ff) == b"\xff"
    assert tok.id_to_bytes(tok.separator_id) == b"<|separator|>"
    assert tok.id_to_bytes(tok.vocab_size + 5) == b""
    assert tok.decode([byte_ff]) == "\ufffd"


def test_loads_from_folder_or_file(tok_dicts: dict[bool, dict], tmp_path: Path) -> None:
    """The model folder and the tokenizer.tok.json path give the same tokenizer."""
    file = _write(tmp_path / "model", tok_dicts[True])
    text = CASES[5]
    assert load_tokenizer(file.parent).encode(text) == load_tokenizer(file).encode(text)


# --- streaming ---------------------------------------------------------------------------------


def test_stream_decoder_holds_back_partial_characters(layout) -> None:
    """Streamed pieces join to the full decode and never contain U+FFFD for split characters."""
    _, tok = layout
    text = "Emoji 👨‍👩‍👧‍👦 and 日本語 and é, then ascii. 🇫🇷🙂"
    ids = tok.encode(text)
    assert any(_is_partial(tok.id_to_bytes(i)) for i in ids), "test needs split characters"
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def _is_partial(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_stream_decoder_matches_full_decode_on_random_bytes(layout) -> None:
    """On arbitrary (also invalid) byte streams the pieces join to decode(errors='replace')."""
    data, tok = layout
    single = {t["bytes"][0]: t["token"] for t in data["regular_tokens"] if len(t["bytes"]) == 1}
    rnd = random.Random(7)
    for _ in range(200):
        ids = [
            single[rnd.choice([0x41, 0xC3, 0xA9, 0xE6, 0x97, 0xA5, 0xF0, 0x9F, 0xFF, 0x80])]
            for _ in range(rnd.randint(1, 12))
        ]
        stream = tok.stream_decoder()
        streamed = "".join(stream.push(i) for i in ids) + stream.flush()
        assert streamed == tok.decode(ids)


def test_stream_decoder_flush_replaces_unfinished_character(layout) -> None:
    """flush() emits an unfinished character as U+FFFD and resets the decoder."""
    data, tok = layout
    single = {t["bytes"][0]: t["token"] for t in data["regular_tokens"] if len(t["bytes"]) == 1}
    stream = tok.stream_decoder()
    assert stream.push(single[0xE6]) == "" and stream.push(single[0x97]) == ""
    assert stream.flush() == "\ufffd"
    assert stream.push(single[0x41]) == "A"


# --- cache -------------------------------------------------------------------------------------


def test_second_load_reads_the_cache(layout, tmp_path, monkeypatch, corpus: str) -> None:
    """The conversion is cached by file hash; a second load skips merge recovery, same results."""
    _, first = layout
    cached = paths.cache_dir() / "tokenizers" / f"{read_tok_file(first.path).sha256}.json"
    assert cached.is_file()

    def fail(_ranks: object) -> None:
        raise AssertionError("merges recovered again instead of reading the cache")

    monkeypatch.setattr(tk, "recover_merges", fail)
    second = load_tokenizer(first.path)
    for text in [*CASES, corpus]:
        assert second.encode(text) == first.encode(text)


def test_corrupt_cache_is_rebuilt(tok_dicts, tmp_path: Path) -> None:
    """An unreadable cache file is replaced by a fresh conversion instead of failing."""
    file = _write(tmp_path / "model", tok_dicts[True])
    expected = load_tokenizer(file).encode(CASES[3])
    cached = paths.cache_dir() / "tokenizers" / f"{read_tok_file(file).sha256}.json"
    cached.write_text("{not json", encoding="utf-8")
    assert load_tokenizer(file).encode(CASES[3]) == expected
    json.loads(cached.read_text(encoding="utf-8"))


def test_unwritable_cache_still_loads(tok_dicts, tmp_path, monkeypatch) -> None:
    """When the cache folder cannot be created the tokenizer is built in memory instead."""
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(blocker))
    tok = load_tokenizer(_write(tmp_path / "model", tok_dicts[True]))
    assert tok.decode(tok.encode(CASES[4])) == CASES[4]


# --- bad input ---------------------------------------------------------------------------------


def _drop_single_byte(data: dict) -> dict:
    return {**data, "regular_tokens": [t for t in data["regular_tokens"] if t["bytes"] != [65]]}


def _dup_id(data: dict) -> dict:
    regular = [dict(t) for t in data["regular_tokens"]]
    regular[-1]["token"] = data["special_tokens"][0]["token"]
    return {**data, "regular_tokens": regular}


def _dup_bytes(data: dict) -> dict:
    extra = {"bytes": data["regular_tokens"][-1]["bytes"], "token": 10_000}
    return {**data, "regular_tokens": [*data["regular_tokens"], extra], "vocab_size": 10_001}


def _without(key: str):
    return lambda data: {k: v for k, v in data.items() if k != key}


BAD_FILES = {
    "invalid_json": lambda data: '{"regular_tokens": [',
    "not_an_object": lambda data: "[1, 2]",
    "missing_regular_tokens": _without("regular_tokens"),
    "missing_special_tokens": _without("special_tokens"),
    "missing_word_split": _without("word_split"),
    "unknown_word_split": lambda data: {**data, "word_split": "V2"},
    "bad_entry": lambda data: {**data, "regular_tokens": [{"bytes": [300], "token": 1}]},
    "bytes_not_a_list": lambda data: {**data, "regular_tokens": [{"bytes": 5, "token": 1}]},
    "negative_id": lambda data: {**data, "special_tokens": [{"bytes": [60], "token": -1}]},
    "duplicate_ids": _dup_id,
    "duplicate_bytes": _dup_bytes,
    "missing_eos": lambda data: {**data, "special_tokens": data["special_tokens"][:2]},
    "missing_byte_token": _drop_single_byte,
    "vocab_size_too_small": lambda data: {**data, "vocab_size": 10},
    "special_is_also_regular": lambda data: {
        **data,
        "regular_tokens": [*data["regular_tokens"], {"bytes": list(b"<|eos|>"), "token": 9999}],
        "vocab_size": 10_000,
    },
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_names_the_file(case: str, tok_dicts, tmp_path: Path) -> None:
    """Each malformed tokenizer.tok.json raises ModelFileError naming the file and a fix."""
    file = _write(tmp_path / "model", BAD_FILES[case](tok_dicts[True]))
    with pytest.raises(ModelFileError) as err:
        load_tokenizer(file.parent)
    message = str(err.value)
    assert message.startswith(f"{file}: ") and "; " in message  # the file, what is wrong; the fix


@pytest.mark.parametrize("make", ["missing", "empty_folder"])
def test_missing_file(make: str, tmp_path: Path) -> None:
    """A missing path or a folder without tokenizer.tok.json raises a clear ModelFileError."""
    target = tmp_path / "nowhere"
    if make == "empty_folder":
        target.mkdir()
    with pytest.raises(ModelFileError, match="tokenizer.tok.json"):
        load_tokenizer(target)


# --- the training helper -----------------------------------------------------------------------


def test_build_tok_json_layout_and_determinism(corpus: str, tok_dicts) -> None:
    """256 byte tokens + n merges, ranks = ids, specials at 0.. (or after), same output each run."""
    assert build_tok_json(corpus, N_MERGES) == tok_dicts[True]
    first, last = tok_dicts[True], tok_dicts[False]
    n_regular = 256 + N_MERGES
    assert [t["token"] for t in first["special_tokens"]] == list(range(16))
    assert [t["token"] for t in first["regular_tokens"]] == list(range(16, 16 + n_regular))
    assert [t["token"] for t in last["regular_tokens"]] == list(range(n_regular))
    assert [t["token"] for t in last["special_tokens"]] == list(range(n_regular, n_regular + 16))
    names = [bytes(t["bytes"]).decode() for t in first["special_tokens"]]
    assert names[:4] == ["<|pad|>", "<|separator|>", "<|eos|>", "<|reserved_3|>"]
    assert names[-1] == "<|reserved_15|>" and first["word_split"] == "V1"
    assert [t["bytes"] for t in first["regular_tokens"][:256]] == [[b] for b in range(256)]
    assert len({bytes(t["bytes"]) for t in first["regular_tokens"]}) == n_regular


def test_recovered_merges_rebuild_each_token() -> None:
    """Each recovered merge joins two lower-ranked tokens into the token of that rank."""
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"bc": 257, b"abc": 258, b"ca": 259}
    merges = tk.recover_merges(ranks)
    assert merges == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"c", b"a")]
    assert tk.bpe_parts(ranks, b"abcab") == [b"abc", b"ab"]
