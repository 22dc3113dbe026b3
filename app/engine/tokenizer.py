"""The Grok-2 tokenizer: reads `tokenizer.tok.json`, encodes and decodes (docs/grok2.md#tokenizer).

The file holds tiktoken-style ranks (a token's id is its BPE merge rank). `load_tokenizer`
converts it once into a Hugging Face `tokenizers` BPE (merges recovered from the ranks,
docs/grok2.md#conversion-to-hugging-face-tokenizers) and caches that JSON under
`paths.cache_dir()/tokenizers/<sha256 of the file>.json`, so a later start skips the conversion.
Decoding concatenates token bytes (no HF decoder involved).
`build_tok_json` trains a small vocabulary in the same file format for the demo and the tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import paths
from app.atomic import atomic_write_text
from app.engine.detokenizer import StreamDecoder
from app.errors import ModelFileError

log = logging.getLogger(__name__)

TOK_FILE = "tokenizer.tok.json"
PAD, SEPARATOR, EOS = "<|pad|>", "<|separator|>", "<|eos|>"
# word_split "V1": the cl100k pattern with one digit per piece
# (docs/grok2.md#pre-tokenization-regex).
V1_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_FIX = f"re-download {TOK_FILE} from the xai-org/grok-2 repository"


# --- reading and checking the file ------------------------------------------------------------


@dataclass(frozen=True)
class TokFile:
    """The checked contents of a tokenizer.tok.json."""

    path: Path
    sha256: str
    ranks: dict[bytes, int]  # regular token bytes -> id (= merge rank)
    specials: dict[str, int]  # special token text -> id
    pattern: str
    vocab_size: int


def _bad(path: Path, what: str, fix: str = _FIX) -> ModelFileError:
    return ModelFileError(f"{path}: {what}; {fix}")


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    file = path / TOK_FILE if path.is_dir() else path
    if not file.is_file():
        where = "folder has no " + TOK_FILE if path.is_dir() else "file not found"
        raise _bad(file, where, f"point at the grok-2 model folder or its {TOK_FILE}")
    return file


def _entries(file: Path, data: dict[str, Any], key: str) -> list[tuple[bytes, int]]:
    items = data.get(key)
    if not isinstance(items, list):
        raise _bad(file, f"missing the list {key!r}")
    out: list[tuple[bytes, int]] = []
    try:
        for item in items:
            raw, token = item["bytes"], item["token"]
            if not isinstance(raw, list) or type(token) is not int or token < 0:
                raise ValueError
            out.append((bytes(raw), token))
    except (KeyError, TypeError, ValueError):
        shape = '{"bytes": [0-255, ...], "token": id >= 0}'
        raise _bad(file, f"{key}[{len(out)}] is not {shape}") from None
    return out


def _pattern(file: Path, data: dict[str, Any]) -> str:
    if isinstance(data.get("pat_str"), str):
        return data["pat_str"]
    if data.get("word_split") != "V1":
        raise _bad(file, f"unknown word_split {data.get('word_split')!r} (only 'V1' is known)")
    return V1_PATTERN


def _specials(file: Path, entries: list[tuple[bytes, int]]) -> dict[str, int]:
    try:
        specials = {raw.decode("utf-8"): token for raw, token in entries}
    except UnicodeDecodeError:
        raise _bad(file, "a special token is not valid UTF-8") from None
    if len(specials) != len(entries):
        raise _bad(file, "two special tokens have the same text")
    missing = [name for name in (EOS, SEPARATOR) if name not in specials]
    if missing:
        raise _bad(file, f"special token(s) {', '.join(missing)} missing")
    return specials


def _check_ids(file: Path, regular: list[tuple[bytes, int]], specials: dict[str, int]) -> None:
    ids = [token for _, token in regular] + list(specials.values())
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise _bad(file, f"token id {dup} is used twice")
    if len({raw for raw, _ in regular}) != len(regular):
        raise _bad(file, "two regular tokens have the same bytes")
    singles = {raw for raw, _ in regular if len(raw) == 1}
    if len(singles) != 256:
        raise _bad(file, f"only {len(singles)} of the 256 single-byte tokens are present")


def read_tok_file(path: str | Path) -> TokFile:
    """Read and check tokenizer.tok.json (a model folder or the file itself)."""
    file = _resolve(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise _bad(file, f"cannot be read ({exc.strerror})", "check its permissions") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(file, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _bad(file, "not a JSON object")
    pattern = _pattern(file, data)
    regular = _entries(file, data, "regular_tokens")
    specials = _specials(file, _entries(file, data, "special_tokens"))
    _check_ids(file, regular, specials)
    n_ids = 1 + max([t for _, t in regular] + list(specials.values()))
    vocab_size = data.get("vocab_size", n_ids)
    if type(vocab_size) is not int or vocab_size < n_ids:
        raise _bad(file, f"vocab_size {vocab_size!r} is below the largest id + 1 ({n_ids})")
    sha = hashlib.sha256(raw).hexdigest()
    return TokFile(file, sha, dict(regular), specials, pattern, vocab_size)


# --- conversion to a Hugging Face tokenizer (docs/grok2.md#conversion-to-hugging-face-tokenizers)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (HF ByteLevel uses it)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return table


_BYTE_CHARS = _bytes_to_unicode()


def _hf_text(raw: bytes) -> str:
    # Latin-1 maps byte b to code point b, which translate() then maps to GPT-2's character.
    return raw.decode("latin-1").translate(_BYTE_CHARS)


def bpe_parts(ranks: dict[bytes, int], piece: bytes, max_rank: int | None = None) -> list[bytes]:
    """tiktoken's byte-pair merge: join the adjacent pair of lowest rank (< max_rank) until none."""
    limit = float("inf") if max_rank is None else max_rank
    parts = [piece[i : i + 1] for i in range(len(piece))]

    def rank(i: int) -> float:
        r = ranks.get(parts[i] + parts[i + 1])
        return r if r is not None and r < limit else float("inf")

    pair_ranks = [rank(i) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == float("inf"):
            break
        i = pair_ranks.index(best)  # leftmost on ties, as tiktoken
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = rank(i - 1)
        if i < len(pair_ranks):
            pair_ranks[i] = rank(i)
    return parts


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that builds each token: BPE on its bytes with only lower-ranked tokens.

    A token that does not end in exactly two parts gets no merge; HF then reaches it only as a
    whole pre-tokenized piece (ignore_merges), which is also the only way tiktoken reaches it.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            parts = bpe_parts(ranks, token, rank)
            if len(parts) == 2:
                merges.append((parts[0], parts[1]))
    return merges


def build_hf_tokenizer(tok: TokFile) -> Any:
    """A `tokenizers.Tokenizer` that encodes exactly as tiktoken does with the same ranks."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = {_hf_text(raw): token for raw, token in tok.ranks.items()}
    clash = [name for name in tok.specials if name in vocab]
    if clash:
        what = f"special token {clash[0]!r} is also a regular token"
        raise _bad(tok.path, what, "this file cannot be converted; report it as a bug")
    # The specials sit in the model vocab at their file ids so add_special_tokens keeps those ids
    # whatever the layout (before, after or between the regular ids).
    vocab.update(tok.specials)
    merges = [(_hf_text(a), _hf_text(b)) for a, b in recover_merges(tok.ranks)]
    hf = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    by_id = sorted(tok.specials, key=tok.specials.__getitem__)
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in by_id])
    return hf


def _specials_match(hf: Any, tok: TokFile) -> bool:
    return all(hf.token_to_id(name) == token for name, token in tok.specials.items())


def _read_cache(cache: Path, tok: TokFile) -> Any | None:
    from tokenizers import Tokenizer as HFTokenizer

    if not cache.is_file():
        return None
    try:
        hf = HFTokenizer.from_file(str(cache))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception here
        log.warning("ignoring unreadable tokenizer cache %s: %s", cache, exc)
        return None
    return hf if _specials_match(hf, tok) else None


def _cached_hf_tokenizer(tok: TokFile) -> Any:
    try:
        cache = paths.cache_dir() / "tokenizers" / f"{tok.sha256}.json"
    except OSError as exc:  # no cache folder only costs the conversion at each start
        log.warning("tokenizer cache unavailable: %s", exc)
        return build_hf_tokenizer(tok)
    hf = _read_cache(cache, tok)
    if hf is None:
        hf = build_hf_tokenizer(tok)
        _write_atomic(cache, hf.to_str())
    return hf


def _write_atomic(target: Path, text: str) -> None:
    """Best effort: a cache that cannot be written only costs the conversion next time."""
    try:
        atomic_write_text(target, text)
    except OSError as exc:
        log.warning("could not write tokenizer cache %s: %s", target, exc)


# --- the public tokenizer ----------------------------------------------------------------------


class Tokenizer:
    """Encode/decode with Grok-2's vocabulary; specials resolved from the file, never hard-coded."""

    def __init__(self, hf: Any, tok: TokFile) -> None:
        self.hf = hf  # the tokenizers.Tokenizer, for callers that need offsets or batching
        self.path = tok.path
        self.vocab_size = tok.vocab_size
        self.specials = dict(tok.specials)
        self.special_ids = set(tok.specials.values())
        self.eos_id = tok.specials[EOS]
        self.separator_id = tok.specials[SEPARATOR]
        self.pad_id = tok.specials.get(PAD)
        self._bytes = {token: raw for raw, token in tok.ranks.items()}
        self._bytes.update({token: name.encode() for name, token in tok.specials.items()})
        # A second instance that reads special-token text as ordinary text (tokenizers'
        # `encode_special_tokens`): a separate object, so no caller ever sees the switch flip.
        self._literal = type(hf).from_str(hf.to_str())
        self._literal.encode_special_tokens = True

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special-token strings in it become special tokens. No BOS/EOS.

        For a prompt someone wrote as a whole (`/v1/completions`, `generate`): the template's
        own `<|separator|>` must become the special token there. Message content goes through
        `encode_literal` instead."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_literal(self, text: str) -> list[int]:
        """Token ids of text with every special-token string in it encoded as ordinary text
        (as tiktoken's `encode_ordinary`): a user who types `<|separator|>` gets the 13
        characters, never the control token, so typed text cannot end a turn or forge one."""
        return self._literal.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Any) -> str:
        """Text of ids: their bytes joined, then UTF-8 with U+FFFD for invalid sequences."""
        return b"".join(map(self.id_to_bytes, ids)).decode("utf-8", errors="replace")

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes of a token (a special's UTF-8 text); b"" for an id with no token."""
        return self._bytes.get(int(token_id), b"")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self.id_to_bytes)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.tok.json from a model folder or the file; raises ModelFileError."""
    tok = read_tok_file(path)
    return Tokenizer(_cached_hf_tokenizer(tok), tok)
