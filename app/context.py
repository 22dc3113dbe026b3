"""What to send when a conversation no longer fits the model's context: the context policies.

A conversation longer than the context is never an error. Each conversation chooses a policy
(stored in its settings as "context_policy"):

- "rolling" (the default): keep the system prompt and the newest turns that fit, leaving room
  for the reply.
- "stop": send nothing and say so in one clear line.
- "middle": keep the system prompt, the first exchange and the newest turns; drop the middle.

Messages are cut only at a fixed chain of cut points (each at least `slack` tokens after the
previous one), so the kept part starts at the same message for several turns and the engine's
KV cache reuses the whole kept prefix instead of re-reading everything after every turn.

Token counting is a callable (the loaded model's tokenizer in the app, anything in tests); no
torch and no Qt here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ChatMessage = dict[str, str]
Counter = Callable[[list[ChatMessage]], int]

POLICIES = ("rolling", "stop", "middle")
DEFAULT_POLICY = "rolling"
LABELS = {
    "rolling": "Rolling window: keep the newest turns",
    "stop": "Stop at the limit",
    "middle": "Truncate the middle",
}
SLACK_FRACTION = 8  # a cut moves at least limit / 8 tokens forward: room for several turns
REPLY_FRACTION = 4  # the reply is given at most a quarter of the context when cutting


def policy_of(params: dict | None) -> str:
    """A conversation's policy from its stored settings; the default for a missing or unknown
    value (an old row, a hand-edited import)."""
    value = (params or {}).get("context_policy")
    return value if value in POLICIES else DEFAULT_POLICY


def reply_reserve(max_tokens: int, limit: int) -> int:
    """Tokens kept free for the reply: max_tokens, but at most a quarter of the context."""
    return max(1, min(max_tokens, limit // REPLY_FRACTION))


@dataclass(frozen=True)
class ContextFit:
    """What goes to the model. `dropped` are indexes into the input that are left out;
    `stopped` is the one line to show instead of generating (None: generate)."""

    messages: list[ChatMessage]
    dropped: tuple[int, ...] = ()
    tokens: int = 0  # prompt tokens of `messages`
    limit: int = 0
    policy: str = DEFAULT_POLICY
    stopped: str | None = None
    first_after_gap: int | None = None  # input index of the first message kept after a gap
    counts: dict[int, int] = field(default_factory=dict, compare=False)


def fit_context(messages: Sequence[ChatMessage], count: Counter, limit: int, policy: str,
                reserve: int, count_one: Callable[[ChatMessage], int] | None = None
                ) -> ContextFit:
    """Choose the messages to send under `policy` so that prompt + `reserve` <= `limit` tokens.

    `count(messages)` returns the prompt tokens of a message list (as the engine renders it);
    `count_one(message)` the tokens of one message alone (default `count([message])`; a
    caller may memoize it). Cut points are first judged by the sum of single-message counts,
    and the exact `count` confirms the one chosen, so a long chat costs one pass over its
    messages, not one full count per cut point.
    The last message (the user's turn, or the reply being continued) is always kept; if it
    alone cannot fit, the result is `stopped` with the sizes and what to do.
    """
    messages = list(messages)
    policy = policy if policy in POLICIES else DEFAULT_POLICY
    if not messages:
        return ContextFit(messages, (), count(messages), limit, policy)
    head = 1 if messages[0].get("role") == "system" else 0
    last = len(messages) - 1
    counts: dict[int, int] = {}
    one = count_one or (lambda m: count([m]))
    prompt = count([])  # the generation prompt every count includes once

    def size(i: int) -> int:
        if i not in counts:
            counts[i] = max(0, one(messages[i]) - prompt)
        return counts[i]

    suffix = [0] * (len(messages) + 1)  # suffix[i]: estimated tokens of messages[i:]
    for i in range(last, -1, -1):
        suffix[i] = suffix[i + 1] + size(i)
    slack = max(1, limit // SLACK_FRACTION)
    whole = prompt + suffix[0]  # estimated tokens of the whole chat
    if whole + reserve <= limit + slack // 4:
        total = count(messages)
        if total + reserve <= limit:
            return ContextFit(messages, (), total, limit, policy, counts=counts)
    if policy == "stop":
        return ContextFit(messages, (), whole, limit, policy, stopped=(
            f"This chat has reached the model's context: about {whole:,} tokens plus "
            f"{reserve:,} for the reply, the limit is {limit:,}. Start a new chat, fork from "
            "an earlier message, or choose another context policy in the chat settings."))
    keep_head = head
    if policy == "middle" and last - head >= 3:
        keep_head = head + 2  # the first exchange: the user's first message and its reply
    for heads in ((keep_head, head) if keep_head != head else (head,)):
        cut = heads
        head_tokens = suffix[0] - suffix[heads]
        while cut <= last:
            estimate = prompt + head_tokens + suffix[cut]
            if estimate + reserve <= limit + slack // 4 or cut == last:
                kept = messages[:heads] + messages[cut:]
                tokens = count(kept)
                if tokens + reserve <= limit:
                    dropped = tuple(range(heads, cut))
                    return ContextFit(kept, dropped, tokens, limit, policy,
                                      first_after_gap=cut if dropped else None, counts=counts)
            if cut == last:
                break
            moved, start = 0, cut  # the next cut point: at least `slack` tokens further on
            while cut < last and (moved < slack or cut == start):
                moved += size(cut)
                cut += 1
    tokens = count(messages[:head] + messages[last:])
    return ContextFit(messages, (), whole, limit, policy, stopped=(
        f"The last message alone is {tokens:,} tokens and the context holds {limit:,} "
        f"(with {reserve:,} kept for the reply): shorten it or attach less, or raise the "
        "context length in Settings."), counts=counts)
