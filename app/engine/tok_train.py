"""Training a small byte-level BPE vocabulary in the official tokenizer.tok.json format.

Used for the tiny demo and test checkpoints only; the real Grok-2 vocabulary ships with the
model. Deterministic: the same corpus and merge count give the same file.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from typing import Any

from app.engine.tokenizer import EOS, PAD, SEPARATOR, V1_PATTERN


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(word_counts: dict[bytes, int], n_merges: int) -> list[bytes]:
    """Byte-level BPE: up to n_merges new tokens, most frequent pair first, ties by bytes.

    Stops early when every word is a single token. A pair whose joined bytes already form a
    token is skipped, so each token keeps a single merge.
    """
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    tokens = [bytes([b]) for b in range(256)]
    known = set(tokens)
    counts: Counter[tuple[int, int]] = Counter()
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        for pair in itertools.pairwise(word):
            counts[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [(-c, tokens[a], tokens[b], a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merged: list[bytes] = []
    while heap and len(merged) < n_merges:
        neg, _, _, a, b = heapq.heappop(heap)
        joined = tokens[a] + tokens[b]
        if counts[(a, b)] != -neg or joined in known:
            continue  # stale heap entry, or the bytes already are a token
        new = len(tokens)
        tokens.append(joined)
        known.add(joined)
        merged.append(joined)
        changed: set[tuple[int, int]] = set()
        for wi in sorted(where.pop((a, b))):
            old, word = words[wi], _merge_word(words[wi], a, b, new)
            for pair in itertools.pairwise(old):
                counts[pair] -= freqs[wi]
                changed.add(pair)
            for pair in itertools.pairwise(word):
                counts[pair] += freqs[wi]
                where[pair].add(wi)
                changed.add(pair)
            words[wi] = word
        for pa, pb in sorted(changed):
            if counts[(pa, pb)] > 0:
                heapq.heappush(heap, (-counts[(pa, pb)], tokens[pa], tokens[pb], pa, pb))
    return merged


def split_words(text: str, pattern: str = V1_PATTERN) -> Counter[bytes]:
    """Count the pre-tokenized pieces of text (the regex split that BPE never crosses)."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return Counter(piece.encode("utf-8") for piece, _ in split.pre_tokenize_str(text))


def build_tok_json(
    corpus: str, n_merges: int, *, specials_first: bool = True, n_reserved: int = 13
) -> dict[str, Any]:
    """A tokenizer.tok.json dict: 256 byte tokens + up to n_merges merges (ranks = ids), specials.

    Specials are <|pad|>, <|separator|>, <|eos|>, <|reserved_3|> ... <|reserved_{2+n_reserved}|>,
    at ids 0, 1, 2, ... with specials_first (the Grok-2 layout), else after the regular ids.
    Deterministic for a given corpus.
    """
    regular = [bytes([b]) for b in range(256)] + train_bpe(split_words(corpus), n_merges)
    names = [PAD, SEPARATOR, EOS] + [f"<|reserved_{i}|>" for i in range(3, 3 + n_reserved)]
    first_regular, first_special = (len(names), 0) if specials_first else (0, len(regular))
    return {
        "regular_tokens": [
            {"bytes": list(raw), "token": first_regular + i} for i, raw in enumerate(regular)
        ],
        "special_tokens": [
            {"bytes": list(name.encode()), "token": first_special + i}
            for i, name in enumerate(names)
        ],
        "word_split": "V1",
        "vocab_size": len(regular) + len(names),
    }
