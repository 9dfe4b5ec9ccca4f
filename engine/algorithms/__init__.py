"""GRPO's algorithmic pieces as small pure functions, tensors in and tensors out.

Selected by the names in `AlgorithmConfig`: `KL_ESTIMATORS[kl_estimator]`, `AGGREGATIONS[loss_aggregation]`.
"""
from engine.algorithms.advantages import grpo_advantages
from engine.algorithms.aggregation import AGGREGATIONS, Aggregation, LossTotals, count_totals, seq_mean, token_mean
from engine.algorithms.entropy import entropy_from_logits
from engine.algorithms.kl import KL_ESTIMATORS, KLEstimator, kl_k1, kl_k2, kl_k3
from engine.algorithms.policy_loss import clipped_surrogate

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "KLEstimator",
    "KL_ESTIMATORS",
    "LossTotals",
    "clipped_surrogate",
    "count_totals",
    "entropy_from_logits",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "seq_mean",
    "token_mean",
]
