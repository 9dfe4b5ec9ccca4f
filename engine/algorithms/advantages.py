"""Outcome advantages: one scalar per sample from the rewards of its group (or of the whole iteration).

Every estimator in `ADVANTAGES` has one signature, `fn(rewards_BG, *, std="sample", eps=1e-6) -> adv_BG`:
rows are prompts (B), columns their G samples; estimators that have no std ignore `std` and `eps`. The
caller broadcasts a sample's advantage to its response tokens (`adv_BG.reshape(-1)[seq_N]`).

    grpo                  (r - mean_G(r)) / (std_G(r) + eps)        Shao et al. 2024, "DeepSeekMath" 4.1.2
    dr_grpo               r - mean_G(r)                             Liu et al. 2025, "Understanding R1-Zero-Like
                                                                    Training" (Dr. GRPO)
    rloo                  r_i - mean_{j != i} r_j                   Ahmadian et al. 2024, "Back to Basics"
                          = G / (G - 1) * (r_i - mean_G(r))
    reinforce_pp          (r - mean_BG(r)) / (std_BG(r) + eps)      Hu 2025, "REINFORCE++" (global batch
                                                                    normalisation, no per-prompt baseline)
    reinforce_pp_baseline x = r - mean_G(r); (x - mean_BG(x)) / (std_BG(x) + eps)
                                                                    Hu 2025, REINFORCE++-baseline

Which std. `std="sample"` divides the squared deviations by n - 1 (Bessel's correction, torch's default),
`std="population"` by n. DeepSeekMath writes std(r) without saying which; the implementations practitioners
compare against (TRL's GRPOTrainer, verl's compute_grpo_outcome_advantage, OpenRLHF's group_norm) all call
torch's default, the sample std, so that is our default. The two differ by the constant factor
sqrt(G / (G - 1)) per run (7% for G = 8): nearly invisible to Adam, but it shifts the balance against a KL
term. A run picks one with `algorithm.std` (engine/config.py), whose default is the population std.

Which REINFORCE++. The paper's REINFORCE++ has no per-prompt baseline: the advantage is the (KL-shaped)
return, normalised by the mean and std over the whole batch. With outcome rewards and the KL as a loss term,
that is `reinforce_pp`. For one prompt sampled G times, the paper's later revisions and both verl
(`reinforce_plus_plus_baseline`) and OpenRLHF (`reinforce_baseline`) subtract the group mean first and
then normalise over the batch; that variant, `reinforce_pp_baseline`, is what GRPO-style setups (G
samples per prompt) use in practice, and the one to pick here. Both are provided under their own names.

Deviation to note: verl and OpenRLHF normalise REINFORCE++ over response *tokens* (a sample weighs by its
length); we normalise over samples (each weighs 1), since this module sees rewards and not lengths.

The batch estimators (`NEEDS_FULL_BATCH`) must be called once with all B groups of the iteration; the
group estimators may be called group by group, as groups arrive, with the same result. Under the periodic
asynchronous schedule a batch estimator makes the trainer wait for the last group before any backward.

Where there is no signal the advantage is exactly zero, not float round-off from `r - mean`: in a group
whose rewards are all equal (G = 1 included; rloo needs G >= 2) for every estimator with a group baseline,
and in a batch whose rewards are all equal for `reinforce_pp`, which judges a sample against the batch.
Rewards keep a float64 dtype; others become float32.
"""
from __future__ import annotations

from typing import Literal, Protocol

import torch

StdKind = Literal["sample", "population"]
_CORRECTION: dict[str, int] = {"sample": 1, "population": 0}


class AdvantageEstimator(Protocol):
    def __call__(self, rewards_BG: torch.Tensor, *, std: StdKind = "sample", eps: float = 1e-6) -> torch.Tensor: ...


def _as_rewards(rewards_BG: torch.Tensor) -> torch.Tensor:
    if rewards_BG.dim() != 2:
        raise ValueError(f"rewards_BG must be 2-D (prompts, samples), got shape {tuple(rewards_BG.shape)}")
    return rewards_BG.to(torch.promote_types(rewards_BG.dtype, torch.float32))


def _correction(std: str) -> int:
    if std not in _CORRECTION:
        raise ValueError(f"std must be one of {sorted(_CORRECTION)}, got {std!r}")
    return _CORRECTION[std]


def _normalise(centered_BG: torch.Tensor, x_BG: torch.Tensor, dim: tuple[int, ...], std: str, eps: float,
               uniform: torch.Tensor) -> torch.Tensor:
    """centered / (std of x over `dim` + eps), exactly 0 where `uniform` (no signal)."""
    correction = _correction(std)
    n = 1
    for d in dim:
        n *= x_BG.shape[d]
    if n <= correction:  # the sample std of one value is undefined; such a set is uniform anyway
        return torch.zeros_like(x_BG)
    std_ = x_BG.std(dim=dim, keepdim=True, correction=correction)
    # Uniform sets have centered == 0 exactly; a unit std keeps them 0 instead of 0 / (0 + eps) round-off.
    std_ = std_.masked_fill(uniform, 1.0)
    return centered_BG / (std_ + eps)


def _group_centered(rewards_BG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r - mean_G(r), uniform_B1): the centred rewards, exactly 0 in groups whose rewards are all equal."""
    centered_BG = rewards_BG - rewards_BG.mean(dim=1, keepdim=True)
    # The mean of G equal floats need not equal them bit for bit; force the no-signal case to zero.
    uniform_B1 = (rewards_BG == rewards_BG[:, :1]).all(dim=1, keepdim=True)
    return centered_BG.masked_fill(uniform_B1, 0.0), uniform_B1


def advantage_grpo(rewards_BG: torch.Tensor, *, std: StdKind = "sample", eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, "DeepSeekMath", section 4.1.2): adv_BG = (r - mean_G(r)) / (std_G(r) + eps).

    `std`: "sample" (divide by G - 1; TRL, verl, OpenRLHF; default) or "population" (divide by G).
    """
    rewards_BG = _as_rewards(rewards_BG)
    centered_BG, uniform_B1 = _group_centered(rewards_BG)
    return _normalise(centered_BG, rewards_BG, (1,), std, eps, uniform_B1)


def advantage_dr_grpo(rewards_BG: torch.Tensor, *, std: StdKind = "sample", eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): adv_BG = r - mean_G(r), no std.

    The std division up-weights prompts that are nearly always solved or nearly always failed (a question-
    level difficulty bias); dropping it removes the bias. `std` and `eps` are ignored.
    """
    del std, eps
    return _group_centered(_as_rewards(rewards_BG))[0]


def advantage_rloo(rewards_BG: torch.Tensor, *, std: StdKind = "sample", eps: float = 1e-6) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): adv_i = r_i - 1/(G-1) * sum_{j != i} r_j.

    The leave-one-out baseline is independent of the sample it judges, so the estimator is unbiased; it
    equals G / (G - 1) * (r_i - mean_G(r)), Dr. GRPO scaled by G / (G - 1). Needs G >= 2. `std` and `eps`
    are ignored.
    """
    del std, eps
    rewards_BG = _as_rewards(rewards_BG)
    G = rewards_BG.shape[1]
    if G < 2:
        raise ValueError(f"rloo needs at least 2 samples per prompt, got G = {G}")
    others_mean_BG = (rewards_BG.sum(dim=1, keepdim=True) - rewards_BG) / (G - 1)
    uniform_B1 = (rewards_BG == rewards_BG[:, :1]).all(dim=1, keepdim=True)
    return (rewards_BG - others_mean_BG).masked_fill(uniform_B1, 0.0)


def _batch_normalised(x_BG: torch.Tensor, std: str, eps: float) -> torch.Tensor:
    """(x - mean_BG(x)) / (std_BG(x) + eps): one mean and one std over every sample of the iteration."""
    uniform_11 = (x_BG == x_BG.reshape(-1)[0]).all().reshape(1, 1)
    centered_BG = (x_BG - x_BG.mean()).masked_fill(uniform_11, 0.0)
    return _normalise(centered_BG, x_BG, (0, 1), std, eps, uniform_11)


def advantage_reinforce_pp(rewards_BG: torch.Tensor, *, std: StdKind = "sample",
                           eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262, global advantage normalisation), no per-prompt baseline:
    adv_BG = (r - mean_BG(r)) / (std_BG(r) + eps), mean and std over ALL B * G samples of the iteration.

    The caller must pass the whole iteration's rewards at once (it is in `NEEDS_FULL_BATCH`).
    """
    return _batch_normalised(_as_rewards(rewards_BG), std, eps)


def advantage_reinforce_pp_baseline(rewards_BG: torch.Tensor, *, std: StdKind = "sample",
                                    eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025; verl `reinforce_plus_plus_baseline`, OpenRLHF `reinforce_baseline`):
    x = r - mean_G(r) (the group mean as baseline, no group std), then
    adv_BG = (x - mean_BG(x)) / (std_BG(x) + eps) over ALL B * G samples of the iteration.

    The recommended REINFORCE++ when each prompt is sampled G times. The caller must pass the whole
    iteration's rewards at once (it is in `NEEDS_FULL_BATCH`).
    """
    return _batch_normalised(_group_centered(_as_rewards(rewards_BG))[0], std, eps)


ADVANTAGES: dict[str, AdvantageEstimator] = {
    "grpo": advantage_grpo,
    "dr_grpo": advantage_dr_grpo,
    "rloo": advantage_rloo,
    "reinforce_pp": advantage_reinforce_pp,
    "reinforce_pp_baseline": advantage_reinforce_pp_baseline,
}

# Estimators whose value for one group depends on the other groups of the iteration.
NEEDS_FULL_BATCH: frozenset[str] = frozenset({"reinforce_pp", "reinforce_pp_baseline"})


def needs_full_batch(name: str) -> bool:
    """True if ADVANTAGES[name] must see all B groups of the iteration at once (not group by group)."""
    if name not in ADVANTAGES:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGES)}")
    return name in NEEDS_FULL_BATCH

