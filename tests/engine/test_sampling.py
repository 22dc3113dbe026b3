"""Sampling filters against hand-computed distributions."""

from __future__ import annotations

import pytest
import torch

from app.engine.sampling import apply_repetition_penalty, filter_probs, sample_next
from app.messages import GenerationParams

P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])


def test_top_k_keeps_k_largest():
    """top_k=2 keeps the two largest probabilities, renormalised."""
    out = filter_probs(P, top_k=2, top_p=1.0, min_p=0.0)
    assert torch.allclose(out, torch.tensor([0.5, 0.2, 0, 0, 0]) / 0.7)


def test_top_p_keeps_smallest_set_reaching_p():
    """top_p=0.8 keeps 0.5+0.2+0.15 (the first set whose mass reaches 0.8)."""
    out = filter_probs(P, top_k=0, top_p=0.8, min_p=0.0)
    assert (out > 0).tolist() == [True, True, True, False, False]


def test_min_p_is_relative_to_the_top():
    """min_p=0.3 drops tokens below 0.3 * 0.5 = 0.15."""
    out = filter_probs(P, top_k=0, top_p=1.0, min_p=0.3)
    assert (out > 0).tolist() == [True, True, True, False, False]


def test_repetition_penalty_signs():
    """Positive logits of seen tokens shrink, negative ones grow more negative."""
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_greedy_and_seeded_sampling():
    """temperature 0 is argmax; the same seed gives the same samples."""
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    none = torch.tensor([], dtype=torch.long)
    assert sample_next(logits, none, GenerationParams(temperature=0), None) == 1
    params = GenerationParams(temperature=1.0, top_p=1.0)
    runs = [[sample_next(logits, none, params, torch.Generator().manual_seed(7))
             for _ in range(5)] for _ in range(2)]
    assert runs[0] == runs[1]
    many = {sample_next(logits, none, params, g) for g in [torch.Generator().manual_seed(1)]
            for _ in range(50)}
    assert many <= {0, 1, 2, 3} and len(many) > 1


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-40, 1.0), (1e-6, 1.0), (0.7, 5e-324),
                                                    (0.7, 1e-30), (1e-40, 1e-30)])
def test_tiny_temperature_and_top_p_pick_the_top_token(temperature, top_p):
    """Values a settings file or an API client may send: never NaN probabilities, always the
    most likely token (before: RuntimeError from multinomial on NaN)."""
    logits = torch.tensor([0.5, 3.0, 1.0, -2.0])
    params = GenerationParams(temperature=temperature, top_p=top_p)
    gen = torch.Generator().manual_seed(0)
    assert {sample_next(logits, torch.tensor([], dtype=torch.long), params, gen)
            for _ in range(20)} == {1}
