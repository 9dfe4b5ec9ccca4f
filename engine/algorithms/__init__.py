"""GRPO's algorithmic pieces as small pure functions, tensors in and tensors out.

Selected by name: `ADVANTAGES[...]`, `POLICY_LOSSES[...]`, `KL_ESTIMATORS[kl_estimator]`,
`AGGREGATIONS[loss_aggregation]`.
"""
from engine.algorithms.advantages import (
    ADVANTAGES,
    NEEDS_FULL_BATCH,
    AdvantageEstimator,
    advantage_dr_grpo,
    advantage_grpo,
    advantage_reinforce_pp,
    advantage_reinforce_pp_baseline,
    advantage_rloo,
    grpo_advantages,
    needs_full_batch,
)
from engine.algorithms.aggregation import AGGREGATIONS, Aggregation, LossTotals, count_totals, seq_mean, token_mean
from engine.algorithms.entropy import entropy_from_logits
from engine.algorithms.kl import KL_ESTIMATORS, KLEstimator, kl_k1, kl_k2, kl_k3
from engine.algorithms.policy_loss import (
    POLICY_LOSSES,
    PolicyLoss,
    PolicyLossOutput,
    clipped_surrogate,
    policy_loss_grpo,
    policy_loss_gspo,
)

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "AdvantageEstimator",
    "Aggregation",
    "KLEstimator",
    "KL_ESTIMATORS",
    "LossTotals",
    "NEEDS_FULL_BATCH",
    "POLICY_LOSSES",
    "PolicyLoss",
    "PolicyLossOutput",
    "advantage_dr_grpo",
    "advantage_grpo",
    "advantage_reinforce_pp",
    "advantage_reinforce_pp_baseline",
    "advantage_rloo",
    "clipped_surrogate",
    "count_totals",
    "entropy_from_logits",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "needs_full_batch",
    "policy_loss_grpo",
    "policy_loss_gspo",
    "seq_mean",
    "token_mean",
]
