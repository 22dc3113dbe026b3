"""Sampling: pure functions of logits and an explicit torch.Generator (no global RNG)."""

from __future__ import annotations

import torch
from torch import Tensor

from app.messages import GenerationParams


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """CTRL-style: divide positive logits of seen tokens by penalty, multiply negative ones.
    logits (V,), previous (n,) token ids."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = previous.unique()
    picked = logits[seen]
    logits = logits.clone()
    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


GREEDY_BELOW = 1e-5


def filter_probs(probs: Tensor, top_k: int, top_p: float, min_p: float) -> Tensor:
    """Zero out what top-k, then min-p, then top-p exclude, and renormalise. probs (V,)."""
    if top_k > 0 and top_k < probs.numel():
        kth = torch.topk(probs, top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if min_p > 0:
        probs = torch.where(probs >= min_p * probs.max(), probs, torch.zeros_like(probs))
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass strictly before each token
        keep_sorted = before < top_p * sorted_p.sum()
        keep_sorted[0] = True  # the most likely token always stays (a tiny top_p underflows)
        keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum()


def sample_next(logits: Tensor, previous: Tensor, params: GenerationParams,
                generator: torch.Generator | None) -> int:
    """Pick the next token id from fp32 logits (V,). A temperature below GREEDY_BELOW is greedy
    (as vLLM): logits / 1e-40 would overflow float32 into NaN probabilities."""
    logits = apply_repetition_penalty(logits.float(), previous, params.repetition_penalty)
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    probs = filter_probs(probs, params.top_k, params.top_p, params.min_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def make_generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A CPU generator and the seed it used (a random one is drawn and reported if None)."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    return torch.Generator().manual_seed(seed), seed
