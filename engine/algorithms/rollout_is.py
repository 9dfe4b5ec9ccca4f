"""Truncated importance sampling against the rollout engine's log-probs (Yao et al. 2025, "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training"), used by `algorithm.rollout_is`.

The rollout engine samples from pi_rollout (vLLM kernels, bf16 weights) while the trainer's gradient is that
of pi_trainer; their per-token ratio is not 1. The loss of each token is weighted (no gradient through the
weight) by

    token:     w_t = min(cap, exp(logp_trainer_t - logp_rollout_t))
    sequence:  w_i = min(cap, exp(sum_t (logp_trainer_t - logp_rollout_t)))   for every token t of sequence i
"""
from __future__ import annotations

import torch


def truncated_is_weights(logp_N: torch.Tensor, rollout_logp_N: torch.Tensor, seq_N: torch.Tensor, mode: str,
                         cap: float) -> torch.Tensor:
    """Detached weights w_N (see the module docstring); `mode` is "token" or "sequence"."""
    log_ratio_N = (logp_N.detach() - rollout_logp_N.to(logp_N.dtype))
    if mode == "sequence":
        n_seqs = int(seq_N.max().item()) + 1 if seq_N.numel() else 0
        log_ratio_S = torch.zeros(n_seqs, dtype=log_ratio_N.dtype, device=log_ratio_N.device)
        log_ratio_N = log_ratio_S.index_add_(0, seq_N, log_ratio_N)[seq_N]
    elif mode != "token":
        raise ValueError(f"rollout_is mode must be token or sequence, got {mode!r}")
    return torch.exp(log_ratio_N).clamp(max=cap)
