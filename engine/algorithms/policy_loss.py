"""The per-token policy-gradient loss: PPO's clipped surrogate with asymmetric clip ranges.

PPO (Schulman et al. 2017, eq. 7), as used per token by GRPO (Shao et al. 2024, eq. 3):

    ratio = exp(logp - old_logp)
    loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

Separate `clip_low` / `clip_high` are DAPO's "clip-higher" (Yu et al. 2025, section 3.1): a larger upper
range lets low-probability tokens with positive advantage grow, which keeps entropy from collapsing.
`clip_low == clip_high` is plain PPO.

Reduction over tokens is not done here: see `aggregation.py`. The KL penalty is added separately (`kl.py`).
"""
from __future__ import annotations

import torch


def clipped_surrogate(
    logp_T: torch.Tensor,
    old_logp_T: torch.Tensor,
    adv_T: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss_T, clipped_T): the per-token clipped-surrogate loss and where its clipped branch is active.

    `clipped_T[t]` is True when the clipped term is strictly the smaller one, i.e. ratio > 1 + clip_high
    with A > 0, or ratio < 1 - clip_low with A < 0; those tokens get no gradient. Its mean over response
    tokens is the usual clip-fraction metric.

    Strictly on-policy (old_logp == logp.detach()) the ratio is 1, nothing is clipped, and the gradient is
    the vanilla policy gradient -A * grad(logp). Pass float32 log-probs: in bf16 `exp(logp - old)` is off
    by up to ~1% where it should be exactly 1.
    """
    ratio_T = torch.exp(logp_T - old_logp_T)
    unclipped_T = ratio_T * adv_T
    clipped_obj_T = torch.clamp(ratio_T, 1.0 - clip_low, 1.0 + clip_high) * adv_T
    clipped_T = clipped_obj_T < unclipped_T
    # `where` rather than `minimum`: on ties `minimum` splits the gradient between two equal branches;
    # `where` sends all of it through the branch that is actually selected.
    loss_T = -torch.where(clipped_T, clipped_obj_T, unclipped_T)
    return loss_T, clipped_T
