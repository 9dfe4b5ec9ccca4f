"""GRPO's algorithmic pieces as small pure functions, tensors in and tensors out.

Selected by name: `ADVANTAGES[advantage]`, `POLICY_LOSSES[policy_loss]`, `KL_ESTIMATORS[kl_estimator]`. The
loss aggregation (token_mean, seq_mean) is the trainer's per-token weighting (`engine.trainer.token_weights`).
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
    needs_full_batch,
)
from engine.algorithms.entropy import entropy_from_logits
from engine.algorithms.kl import KL_ESTIMATORS, KLEstimator, kl_k1, kl_k2, kl_k3
from engine.algorithms.policy_loss import (
    POLICY_LOSSES,
    PolicyLoss,
    PolicyLossOutput,
    policy_loss_grpo,
    policy_loss_gspo,
)

__all__ = [
    "ADVANTAGES",
    "AdvantageEstimator",
    "KLEstimator",
    "KL_ESTIMATORS",
    "NEEDS_FULL_BATCH",
    "POLICY_LOSSES",
    "PolicyLoss",
    "PolicyLossOutput",
    "advantage_dr_grpo",
    "advantage_grpo",
    "advantage_reinforce_pp",
    "advantage_reinforce_pp_baseline",
    "advantage_rloo",
    "entropy_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "needs_full_batch",
    "policy_loss_grpo",
    "policy_loss_gspo",
]
