"""Generation as layered generators (mlx-lm style):

    step_tokens    prompt ids -> next token ids, forever (prefill, then cached decode)
    stream_events  token ids  -> Token(text) events and one Finished(reason, stats)
    generate_text  events     -> (full string, Finished)

Every step is a cancellation point: the caller's threading.Event is checked between steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from app.engine.model import Grok2
from app.engine.sampling import make_generator, sample_next
from app.messages import Finished, FinishReason, GenerationParams, GenerationStats, Token

PREFILL_CHUNK = 2048  # tokens per prefill forward: bounds activation memory on long prompts


@torch.inference_mode()
def _forward_last(model: Grok2, ids: Sequence[int], start: int) -> torch.Tensor:
    """Run ids at positions start.. through the cached model; logits (V,) of the last one."""
    device = model.model.embed_tokens.weight.device
    logits = None
    for i in range(0, len(ids), PREFILL_CHUNK):
        chunk = torch.tensor([list(ids[i : i + PREFILL_CHUNK])], device=device)
        logits = model(chunk, start_pos=start + i, last_only=True)
    assert logits is not None
    return logits[0, -1]


def step_tokens(model: Grok2, prompt_ids: Sequence[int], params: GenerationParams,
                generator: torch.Generator | None, reuse: int = 0) -> Iterator[int]:
    """Yield sampled token ids one by one. The first `reuse` prompt tokens are already in the
    model's KV cache (a shared prefix with the previous request), so only the rest is prefilled."""
    history = list(prompt_ids)
    logits = _forward_last(model, history[reuse:], reuse)
    while True:
        previous = torch.tensor(history, dtype=torch.long, device=logits.device)
        token = sample_next(logits, previous, params, generator)
        yield token
        history.append(token)
        logits = _forward_last(model, [token], len(history) - 1)


@dataclass
class _Clock:
    start: float
    first: float | None = None

    def stats(self, prompt_tokens: int, completion_tokens: int) -> GenerationStats:
        now = time.perf_counter()
        ttft = (self.first or now) - self.start
        decode_s = now - (self.first or now)
        rate = (completion_tokens - 1) / decode_s if completion_tokens > 1 and decode_s > 0 else 0.0
        return GenerationStats(prompt_tokens, completion_tokens, ttft, rate, now - self.start)


def _hold_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string (not safe to emit)."""
    longest = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def stream_events(tokens: Iterator[int], tokenizer, *, prompt_tokens: int,
                  params: GenerationParams, stop_ids: set[int],
                  stop_strings: Sequence[str] = (), cancel: threading.Event | None = None,
                  max_total: int | None = None) -> Iterator[Token | Finished]:
    """Turn token ids into text events; stop on a stop id, a stop string, the token limit or
    cancellation. `max_total` is the remaining context: the reply never outgrows it."""
    clock = _Clock(time.perf_counter())
    decoder = tokenizer.stream_decoder()
    hidden = tokenizer.special_ids
    limit = min(params.max_tokens, max_total) if max_total is not None else params.max_tokens
    pending, pending_ids, count = "", [], 0
    reason: FinishReason = "length"
    while count < limit:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        token = next(tokens, None)
        if token is None:  # a finite source (tests, replays) ran out
            reason = "stop"
            break
        if clock.first is None:
            clock.first = time.perf_counter()
        if token in stop_ids:
            reason = "stop"
            break
        count += 1
        if token not in hidden:  # special tokens are not shown (SGLang skip_special_tokens)
            pending += decoder.push(token)
        pending_ids.append(token)
        cut = next((pending.index(s) for s in stop_strings if s in pending), None)
        if cut is not None:
            pending, reason = pending[:cut], "stop"
            break
        safe = len(pending) - _hold_back(pending, stop_strings)
        if safe > 0:
            yield Token(pending[:safe], tuple(pending_ids))
            pending, pending_ids = pending[safe:], []
    else:
        reason = "length"
    if reason != "stop":
        pending += decoder.flush()
    if pending or pending_ids:
        yield Token(pending, tuple(pending_ids))
    yield Finished(reason, clock.stats(prompt_tokens, count))


def generate_text(events: Iterator[Token | Finished]) -> tuple[str, list[int], Finished]:
    """Collect a whole reply: text, generated ids (stop token excluded) and the finish event."""
    parts: list[str] = []
    ids: list[int] = []
    for event in events:
        if isinstance(event, Finished):
            return "".join(parts), ids, event
        parts.append(event.text)
        ids.extend(event.token_ids)
    raise RuntimeError("generation ended without a Finished event")


def new_generator(params: GenerationParams) -> tuple[torch.Generator, int]:
    return make_generator(params.seed)
