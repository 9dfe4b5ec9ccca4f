"""Per-token policy-gradient losses: PPO's clipped surrogate (GRPO) and its sequence-level form (GSPO).

Every loss in `POLICY_LOSSES` has one signature,
`fn(logp_N, old_logp_N, adv_N, seq_N, clip_low, clip_high, dual_clip=None) -> PolicyLossOutput`, over the
N response tokens of a micro-batch laid flat (`seq_N[t]` is the index of token t's sequence, >= 0; every
token of a sequence is a response token). It returns per-token losses; the trainer weighs and sums them
(`engine.trainer.token_weights`: token_mean or seq_mean), and the KL penalty is added separately (`kl.py`).

grpo: PPO (Schulman et al. 2017, eq. 7), applied per token by GRPO (Shao et al. 2024, eq. 3):

    ratio_t = exp(logp_t - old_logp_t)
    loss_t  = -min(ratio_t * A_t, clip(ratio_t, 1 - clip_low, 1 + clip_high) * A_t)

  Separate `clip_low` / `clip_high` are DAPO's "clip-higher" (Yu et al. 2025, section 3.1): a larger upper
  range lets low-probability tokens with positive advantage grow, which keeps entropy from collapsing.
  `clip_low == clip_high` is plain PPO (Schulman et al. use 0.2; DAPO uses clip_low 0.2, clip_high 0.28).

dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning"):
  for A < 0 the clipped surrogate above is unbounded as the ratio grows (-min(rA, clip(r)A) = r|A|), so one
  stale token can dominate the step. With `dual_clip = c > 1`, where A < 0: loss_t = min(loss_t, -c * A_t),
  i.e. at most c|A|. Tokens held at that bound get no gradient. Ye et al. and verl use c = 3. It never acts
  strictly on-policy (ratio 1).

gspo (Zheng et al. 2025, "Group Sequence Policy Optimization", section 4.1): one importance ratio
  per sequence, the geometric mean of its token ratios,

    s_i = exp(1/|y_i| * sum_{t in i} (logp_t - old_logp_t))

  clipped like PPO's but with far smaller ranges (the paper uses clip_low = 3e-4, clip_high = 4e-4; the
  caller passes them). Implemented as GSPO-token (section 4.3): per token, s_{i,t} = sg[s_i] * pi_t / sg[pi_t],
  whose value is s_i and whose gradient is s_i * grad(logp_t), so

    loss_t = -min(s_{i,t} * A_t, clip(s_{i,t}, 1 - clip_low, 1 + clip_high) * A_t)

  With A_t = A_i for every token of sequence i, the gradient of sum_i 1/|y_i| * sum_{t in i} loss_t equals
  the gradient of the sequence-level objective sum_i -min(s_i A_i, clip(s_i) A_i); the `seq_mean`
  aggregation (that sum divided by the iteration's B * G sequences) is GSPO's 1/G * sum_i, averaged over
  the B prompts. Under `token_mean` each sequence is instead weighted by its length. A clip decision is
  the sequence's: all its tokens are clipped or none.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch


class PolicyLossOutput(NamedTuple):
    loss_N: torch.Tensor  # per-token loss, to be aggregated by the caller
    clipped_N: torch.Tensor  # bool: the ratio clip is active (r > 1 + clip_high, A > 0; r < 1 - clip_low, A < 0)
    dual_clipped_N: torch.Tensor  # bool: the dual-clip bound -c * A is active (A < 0, loss > c|A|)


class PolicyLoss(Protocol):
    def __call__(self, logp_N: torch.Tensor, old_logp_N: torch.Tensor, adv_N: torch.Tensor, seq_N: torch.Tensor,
                 clip_low: float, clip_high: float, dual_clip: float | None = None) -> PolicyLossOutput: ...


def _check_clips(clip_low: float, clip_high: float, dual_clip: float | None) -> None:
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, "
                         f"clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")


def _clipped_objective(ratio_N: torch.Tensor, adv_N: torch.Tensor, clip_low: float, clip_high: float,
                       dual_clip: float | None) -> PolicyLossOutput:
    """-min(r * A, clip(r) * A), then min(.., -c * A) where A < 0 if `dual_clip` is c."""
    unclipped_N = ratio_N * adv_N
    clipped_obj_N = torch.clamp(ratio_N, 1.0 - clip_low, 1.0 + clip_high) * adv_N
    clipped_N = clipped_obj_N < unclipped_N
    # `where` rather than `minimum`: on ties `minimum` splits the gradient between two equal branches;
    # `where` sends all of it through the branch that is actually selected.
    loss_N = -torch.where(clipped_N, clipped_obj_N, unclipped_N)
    if dual_clip is None:
        return PolicyLossOutput(loss_N, clipped_N, torch.zeros_like(clipped_N))
    bound_N = -dual_clip * adv_N.detach()  # c|A| where A < 0; a constant, so those tokens get no gradient
    dual_clipped_N = (adv_N < 0) & (loss_N > bound_N)
    return PolicyLossOutput(torch.where(dual_clipped_N, bound_N, loss_N), clipped_N, dual_clipped_N)


def policy_loss_grpo(logp_N: torch.Tensor, old_logp_N: torch.Tensor, adv_N: torch.Tensor, seq_N: torch.Tensor,
                     clip_low: float, clip_high: float, dual_clip: float | None = None) -> PolicyLossOutput:
    """PPO/GRPO token-level clipped surrogate with DAPO's asymmetric clip and optional dual clip.

    loss_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t), r_t = exp(logp_t - old_logp_t);
    with dual_clip = c > 1, loss_t = min(loss_t, -c A_t) where A_t < 0. `seq_N` is unused (one signature
    for POLICY_LOSSES). Strictly on-policy (old_logp == logp.detach()) nothing is clipped and the gradient
    is the vanilla policy gradient -A * grad(logp). Pass float32 (or float64) log-probs: in bf16
    `exp(logp - old)` is off by up to ~1% where it should be exactly 1.
    """
    del seq_N
    _check_clips(clip_low, clip_high, dual_clip)
    return _clipped_objective(torch.exp(logp_N - old_logp_N), adv_N, clip_low, clip_high, dual_clip)


def policy_loss_gspo(logp_N: torch.Tensor, old_logp_N: torch.Tensor, adv_N: torch.Tensor, seq_N: torch.Tensor,
                     clip_low: float, clip_high: float, dual_clip: float | None = None) -> PolicyLossOutput:
    """GSPO, as GSPO-token: the token ratio sg[s_i] * pi_t / sg[pi_t], s_i = exp(mean_{t in i}(logp - old)).

    Its value is the sequence ratio s_i (clipped with GSPO's small ranges, e.g. 3e-4 / 4e-4); its gradient
    is s_i * grad(logp_t). Aggregate with `seq_mean` for the exact sequence-level GSPO gradient (module
    docstring). `seq_N` (long, >= 0) indexes each token's sequence; tokens of a sequence need not be
    contiguous. A token that should not count in its sequence's ratio must not be passed at all.
    """
    _check_clips(clip_low, clip_high, dual_clip)
    log_ratio_N = (logp_N.detach() - old_logp_N.detach()).to(torch.promote_types(logp_N.dtype, torch.float32))
    # One slot per possible sequence: S <= N, and sizing by N needs no device-to-host sync to find S.
    n = log_ratio_N.shape[0]
    sum_S = log_ratio_N.new_zeros(n).index_add_(0, seq_N, log_ratio_N)
    len_S = log_ratio_N.new_zeros(n).index_add_(0, seq_N, torch.ones_like(log_ratio_N))
    log_s_N = (sum_S / len_S.clamp_min(1.0))[seq_N]
    # logp - sg[logp] is exactly 0 in value and carries d/dlogp = 1: value s_i, gradient s_i * grad(logp_t).
    ratio_N = torch.exp(log_s_N + (logp_N - logp_N.detach()))
    return _clipped_objective(ratio_N, adv_N, clip_low, clip_high, dual_clip)


POLICY_LOSSES: dict[str, PolicyLoss] = {"grpo": policy_loss_grpo, "gspo": policy_loss_gspo}

