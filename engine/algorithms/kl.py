"""Per-token estimators of KL(pi || pi_ref) from the log-probs of tokens sampled from pi.

Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html). With
log_r = ref_logp - logp (the log of pi_ref / pi at the sampled token):

    k1 = -log_r                      unbiased, high variance, can be negative
    k2 = 0.5 * log_r ** 2            biased, low variance, >= 0
    k3 = exp(log_r) - log_r - 1      unbiased, low variance, >= 0   (GRPO's choice, DeepSeekMath eq. 4)

Each takes (logp_T, ref_logp_T) and returns kl_T; the caller scales by `kl_coef`, adds it to the policy
loss and aggregates. `ref_logp_T` is expected to carry no gradient (the reference model is frozen).

Not clamped: k3 overflows to inf when ref_logp - logp > ~88 in float32. That needs pi to sample a token it
finds e^88 times less likely than the reference does, which signals a broken run worth seeing, not hiding.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def kl_k1(logp_T: torch.Tensor, ref_logp_T: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref_logp."""
    return logp_T - ref_logp_T


def kl_k2(logp_T: torch.Tensor, ref_logp_T: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2."""
    return 0.5 * (logp_T - ref_logp_T).square()


def kl_k3(logp_T: torch.Tensor, ref_logp_T: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1."""
    log_r_T = ref_logp_T - logp_T
    # exp(x) - 1 loses everything below float32's epsilon of 1.0 near x = 0, where k3 ~ x^2 / 2 is tiny;
    # expm1 does not.
    return torch.expm1(log_r_T) - log_r_T


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
