"""Streaming detokenizer: token ids in, complete UTF-8 text out (docs/grok2.md#encode-and-decode).

One Grok-2 token can end in the middle of a multi-byte character (an emoji is often split over
two or three tokens, and some regular tokens are not valid UTF-8 on their own). Decoding each
token separately would print U+FFFD and then the rest of the character. Instead the token bytes
go through Python's incremental UTF-8 decoder, which holds back an incomplete sequence until the
next bytes complete it and replaces only bytes that can never become valid.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


class StreamDecoder:
    """Turns a stream of token ids into text pieces whose concatenation equals a full decode."""

    def __init__(self, id_to_bytes: Callable[[int], bytes]) -> None:
        self._id_to_bytes = id_to_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is still partial)."""
        return self._utf8.decode(self._id_to_bytes(token_id))

    def flush(self) -> str:
        """End of stream: return held-back bytes (an unfinished character becomes U+FFFD)."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
