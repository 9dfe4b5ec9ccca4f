"""Token-level entropy of the policy, a health metric for RL runs: its collapse towards 0 means the policy
has stopped exploring (DAPO, Yu et al. 2025, section 3.1)."""
from __future__ import annotations

import torch


def entropy_from_logits(logits_TV: torch.Tensor) -> torch.Tensor:
    """H_T = -sum_v p_v log p_v with p = softmax(logits), in float32 whatever the input dtype.

    Stable for any finite logits (log_softmax, no exp overflow) and for -inf logits (masked vocabulary
    entries add 0, not nan, to the value and to the gradient). Materialises a float32 (T, V) tensor: for
    long sequences with a large vocabulary call it on chunks of tokens, under no_grad when it is only logged.
    """
    logp_TV = torch.log_softmax(logits_TV.float(), dim=-1)
    # A -inf log-prob has p = 0; clamping it to the most negative finite float turns 0 * -inf (nan) into 0,
    # and clamp passes no gradient there, so the backward stays finite too.
    logp_TV = logp_TV.clamp_min(torch.finfo(logp_TV.dtype).min)
    return -(logp_TV.exp() * logp_TV).sum(dim=-1)
