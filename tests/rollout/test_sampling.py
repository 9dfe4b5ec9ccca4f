"""Sampling helpers of the native engine: filters, the exponential-race draw, and the recorded log-probs."""
from __future__ import annotations

import math

import pytest
import torch

from engine.rollout.base import SamplingParams
from engine.rollout.sampling import (check_sampling_params, draw, mask_top_k, mask_top_p, sample_next,
                                     token_logprobs)


def _logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def test_top_k_keeps_the_k_largest():
    logits_NV = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = torch.isfinite(mask_top_k(logits_NV, 2))
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.equal(mask_top_k(logits_NV, 0), logits_NV)  # 0 = off
    assert torch.equal(mask_top_k(logits_NV, 9), logits_NV)


@pytest.mark.parametrize("p, kept", [(0.45, 1), (0.75, 2), (0.85, 3), (0.99, 4), (1e-6, 1)])
def test_top_p_keeps_the_smallest_nucleus(p, kept):
    # Shuffled so the filter must map its sorted decision back to vocabulary order.
    probs = [0.15, 0.5, 0.05, 0.3]
    logits_NV = _logits_of(probs)
    finite = torch.isfinite(mask_top_p(logits_NV, p))[0].tolist()
    by_rank = sorted(range(4), key=lambda i: -probs[i])
    assert [finite[i] for i in by_rank] == [True] * kept + [False] * (4 - kept)


def test_top_p_one_is_off():
    logits_NV = torch.randn(3, 7)
    assert torch.equal(mask_top_p(logits_NV, 1.0), logits_NV)


def test_logprobs_are_tempered_log_softmax_and_greedy_is_untempered():
    logits_NV = torch.randn(4, 11)
    assert torch.allclose(token_logprobs(logits_NV, 0.5), torch.log_softmax(logits_NV * 2, -1))
    assert torch.allclose(token_logprobs(logits_NV, 0.0), torch.log_softmax(logits_NV, -1))


def test_draw_follows_the_distribution_and_never_picks_filtered_tokens():
    probs_V = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])  # zeros inside and at the end of the CDF
    generator = torch.Generator().manual_seed(0)
    tokens_N = draw(probs_V.expand(20000, 5).contiguous(), generator)
    freq_V = torch.bincount(tokens_N, minlength=5).float() / tokens_N.numel()
    assert freq_V[1] == 0 and freq_V[4] == 0
    assert torch.allclose(freq_V, probs_V, atol=0.015)
    # Rows need not be normalised.
    assert torch.equal(draw(3 * probs_V.expand(64, 5).contiguous(), torch.Generator().manual_seed(1)),
                       draw(probs_V.expand(64, 5).contiguous(), torch.Generator().manual_seed(1)))


def test_sample_next_uses_only_its_generator():
    logits_NV = torch.randn(8, 50)
    params = SamplingParams(temperature=1.0, top_k=10, top_p=0.9)
    global_state = torch.random.get_rng_state()
    first = sample_next(logits_NV, params, torch.Generator().manual_seed(3))
    second = sample_next(logits_NV, params, torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_recorded_logprob_ignores_top_k_and_top_p_truncation():
    logits_NV = torch.randn(16, 30)
    params = SamplingParams(temperature=0.7, top_k=3, top_p=0.5)
    tokens_N, logp_N = sample_next(logits_NV, params, torch.Generator().manual_seed(0))
    full_NV = torch.log_softmax(logits_NV / 0.7, dim=-1)
    assert torch.allclose(logp_N, full_NV.gather(-1, tokens_N[:, None]).squeeze(-1))
    top3_NK = torch.topk(logits_NV, 3, dim=-1).indices
    assert (top3_NK == tokens_N[:, None]).any(-1).all()


def test_greedy_is_argmax():
    logits_NV = torch.randn(5, 9)
    tokens_N, _ = sample_next(logits_NV, SamplingParams(temperature=0.0), torch.Generator())
    assert torch.equal(tokens_N, logits_NV.argmax(-1))


@pytest.mark.parametrize("field, value", [("n", 0), ("max_new_tokens", 0), ("temperature", -0.1),
                                          ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1)])
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        check_sampling_params(SamplingParams(**{field: value}))
