"""The rolling context window keeps the engine's prefix cache useful: while the cut point
stays put, the next turn's prompt starts with everything the previous prompt put in the cache,
so only the new text is prefilled."""

from __future__ import annotations

import torch

from app.engine.engine import Engine, _common_prefix
from app.messages import Finished, GenerationParams
from app.worker import fit_for_engine


def test_rolling_window_turns_reuse_the_cached_prefix():
    from app.engine.tiny import ensure_demo_checkpoint

    engine = Engine.load(ensure_demo_checkpoint(), device="cpu", dtype=torch.float32,
                         context_length=512)
    params = GenerationParams(max_tokens=4, temperature=0, seed=1)
    chat = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        role = "user" if i % 2 == 0 else "assistant"
        chat.append({"role": role, "content": f"turn {i} " + "words and more words " * 6})
    reused, cuts, lengths = [], [], []
    for turn in range(8):
        chat.append({"role": "user", "content": f"question {turn} why"})
        fit = fit_for_engine(engine, chat, params, "rolling")
        assert fit.stopped is None and fit.dropped  # the chat is longer than the context
        ids = engine.chat_prompt_ids(fit.messages)
        assert len(ids) + 4 <= 512
        reused.append(_common_prefix(engine._cached_ids, ids))
        cuts.append(fit.first_after_gap)
        lengths.append(len(ids))
        reply = "".join(e.text for e in engine.stream_chat(fit.messages, params)
                        if not isinstance(e, Finished))
        chat.append({"role": "assistant", "content": reply})
    same_cut = [i for i in range(1, len(cuts)) if cuts[i] == cuts[i - 1]]
    assert len(same_cut) >= len(cuts) // 2, cuts  # the cut point holds for most turns...
    for i in same_cut:  # ...and then the whole previous prompt comes from the cache
        assert reused[i] >= lengths[i - 1], (i, reused, lengths, cuts)
