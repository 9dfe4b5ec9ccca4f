"""Truncated importance sampling against the rollout engine's log-probs, by hand."""
from __future__ import annotations

import math

import torch

from engine.algorithms.rollout_is import truncated_is_weights


def test_token_and_sequence_weights_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    rollout = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
    seq = torch.tensor([0, 0, 1])
    # token: exp(0.5) = 1.6487, exp(-1) = 0.3679, exp(0) = 1; cap 1.5 truncates the first
    torch.testing.assert_close(truncated_is_weights(logp, rollout, seq, "token", 1.5),
                               torch.tensor([1.5, math.exp(-1.0), 1.0], dtype=torch.float64))
    # sequence 0: exp(0.5 - 1) = exp(-0.5) for both tokens; sequence 1: exp(0) = 1
    w = truncated_is_weights(logp, rollout, seq, "sequence", 2.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(-0.5), math.exp(-0.5), 1.0], dtype=torch.float64))
    assert not w.requires_grad  # a weight, not a path for the gradient
