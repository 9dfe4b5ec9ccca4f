"""algorithm.truncated: responses cut by max_new_tokens are trained, masked or penalised."""
from __future__ import annotations

import pytest
import torch

from engine.algorithms.overlong import overlong_penalty
from engine.config import AlgorithmConfig
from engine.types import Completion
from helpers import make_trainer, random_groups


def _truncate_first(groups, new_tokens=None):
    c = groups[0].completions[0]
    ids = new_tokens if new_tokens is not None else c.token_ids
    groups[0].completions[0] = Completion(ids, [0.0] * len(ids), finished=False)
    return groups


def _grads(model_dir, truncated, groups):
    trainer = make_trainer(model_dir, algo=AlgorithmConfig(truncated=truncated), dtype="float64")
    trainer.accumulate(groups)
    trainer.finalize_gradients()
    return torch.cat([p.grad.flatten() for p in trainer.trimodel.actor.parameters()])


@pytest.mark.parametrize("truncated, same", [("mask", True), ("train", False)])
def test_a_masked_truncated_response_contributes_no_gradient(tiny_model_dir, truncated, same):
    vocab = 256
    a = _grads(tiny_model_dir, truncated, _truncate_first(random_groups(2, 4, vocab, seed=3)))
    other = [7] * len(random_groups(2, 4, vocab, seed=3)[0].completions[0].token_ids)  # other tokens, same length
    b = _grads(tiny_model_dir, truncated, _truncate_first(random_groups(2, 4, vocab, seed=3), other))
    assert torch.equal(a, b) == same


def test_masked_tokens_leave_the_normaliser(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, algo=AlgorithmConfig(truncated="mask"))
    groups = _truncate_first(random_groups(2, 4, 256, seed=1))
    trainer.accumulate(groups)
    all_tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
    assert trainer._sums.tokens == all_tokens - len(groups[0].completions[0].token_ids)
    assert trainer._sums.seqs == sum(len(g.completions) for g in groups) - 1  # seq_mean's normaliser too


def test_soft_overlong_penalty_matches_dapo_by_hand():
    # L_max = 10, L_cache = 4: no penalty up to 6 tokens, then -(|y| - 6) / 4, -1 at 10
    lengths = torch.tensor([3, 6, 7, 8, 10])
    expected = torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4), expected)
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, penalty=0.5), expected * 0.5)


def test_penalty_shapes_the_reward_not_the_score(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    trimodel = trainer.trimodel
    trimodel.overlong = (8, 4, 1.0)
    group = random_groups(1, 2, 256)[0]
    group.completions = [Completion([5] * 8, [0.0] * 8, False), Completion([5] * 2, [0.0] * 2, True)]
    trimodel.score(group)
    torch.testing.assert_close(group.rewards_G - group.scores_G, torch.tensor([-1.0, 0.0]))
