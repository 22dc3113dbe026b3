"""Context policies (app/context.py): rolling window, stop at the limit, truncate the middle,
with a word-count tokenizer so every number can be checked by hand."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from app.context import DEFAULT_POLICY, fit_context, policy_of, reply_reserve


def words(messages: list[dict[str, str]]) -> int:
    """One token per word plus one per message (the turn marker)."""
    return sum(len(m["content"].split()) + 1 for m in messages)


def chat(n: int, size: int = 9, system: bool = True) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "be brief"}] if system else []
    for i in range(n):
        out.append({"role": "user" if i % 2 == 0 else "assistant",
                    "content": " ".join([f"w{i}"] * size)})
    return out


def test_everything_fits_nothing_dropped():
    msgs = chat(4)
    fit = fit_context(msgs, words, limit=100, policy="rolling", reserve=10)
    assert fit.messages == msgs and fit.dropped == () and fit.stopped is None
    assert fit.tokens == words(msgs) == 43


def test_rolling_keeps_system_and_newest_turns_with_room_for_the_reply():
    msgs = chat(20)  # 3 + 20 * 10 = 203 tokens
    fit = fit_context(msgs, words, limit=100, policy="rolling", reserve=20)
    assert fit.stopped is None
    assert fit.messages[0] == msgs[0] and fit.messages[-1] == msgs[-1]
    assert fit.tokens + 20 <= 100 and fit.tokens == words(fit.messages)
    assert fit.dropped == tuple(range(1, fit.first_after_gap))
    assert fit.messages[1:] == msgs[fit.first_after_gap:]


def test_rolling_cut_stays_put_for_several_turns_so_the_prefix_cache_is_reused():
    """Adding turns keeps the same first kept message until it no longer fits."""
    starts = []
    for n in range(12, 30):
        fit = fit_context(chat(n), words, limit=120, policy="rolling", reserve=10)
        assert fit.stopped is None and fit.tokens + 10 <= 120
        starts.append(fit.first_after_gap)
    changes = sum(1 for a, b in itertools.pairwise(starts) if a != b)
    assert changes <= len(starts) // 2, starts  # a sliding-by-one window would change every turn


def test_stop_policy_sends_nothing_and_says_why():
    fit = fit_context(chat(20), words, limit=100, policy="stop", reserve=20)
    assert fit.stopped is not None and "203 tokens" in fit.stopped and "100" in fit.stopped
    assert fit.dropped == ()


def test_truncate_the_middle_keeps_the_first_exchange():
    msgs = chat(20)
    fit = fit_context(msgs, words, limit=100, policy="middle", reserve=20)
    assert fit.stopped is None
    assert fit.messages[:3] == msgs[:3] and fit.messages[-1] == msgs[-1]
    assert fit.dropped[0] == 3 and fit.tokens + 20 <= 100


def test_a_last_message_larger_than_the_context_is_one_clear_line():
    msgs = chat(2) + [{"role": "user", "content": "x " * 500}]
    fit = fit_context(msgs, words, limit=100, policy="rolling", reserve=20)
    assert fit.stopped is not None and "last message alone is 504 tokens" in fit.stopped


def test_policy_of_falls_back_to_the_default():
    assert policy_of(None) == DEFAULT_POLICY == "rolling"
    assert policy_of({"context_policy": "middle"}) == "middle"
    assert policy_of({"context_policy": 3}) == DEFAULT_POLICY
    assert reply_reserve(1024, 4096) == 1024 and reply_reserve(4000, 4096) == 1024


@given(st.integers(1, 40), st.integers(1, 30), st.integers(30, 300),
       st.sampled_from(["rolling", "middle", "stop", "bogus"]))
def test_fit_never_overflows_and_keeps_order(n, size, limit, policy):
    msgs = chat(n, size)
    reserve = reply_reserve(50, limit)
    fit = fit_context(msgs, words, limit, policy, reserve)
    if fit.stopped is None:
        assert fit.tokens + reserve <= limit and fit.tokens == words(fit.messages)
        kept = [i for i in range(len(msgs)) if i not in fit.dropped]
        assert fit.messages == [msgs[i] for i in kept] and kept[-1] == len(msgs) - 1
        assert kept[0] == 0  # the system prompt stays
    else:
        assert words(msgs) + reserve > limit
