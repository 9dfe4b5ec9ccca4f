"""DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
at Scale", eq. 13), used by `algorithm.truncated=penalty`."""
from __future__ import annotations

import torch


def overlong_penalty(length_G: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """Reward added to each response of length |y| (L_max = max_len, L_cache = buffer, c = penalty):

        R(y) = 0                                   if |y| <= L_max - L_cache
             = c * ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
             = -c                                  if |y| > L_max

    float32 (G,), in [-c, 0]; a response cut at max_new_tokens gets -c.
    """
    soft_start = max_len - buffer
    over_G = (length_G.float() - soft_start).clamp_min(0.0)
    return -penalty * (over_G / buffer).clamp_max(1.0)
