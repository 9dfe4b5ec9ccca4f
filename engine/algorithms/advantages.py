"""Group-relative advantages: each sample is judged against the other samples of its own prompt.

GRPO (Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome supervision) normalises a group's rewards,
A_i = (r_i - mean(r)) / std(r). Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") drops the
division by std, which up-weights prompts that are nearly solved or nearly failed; `normalize_std=False`.

Deviation to note: we use the population std (`unbiased=False`, divide by G). The papers do not say; TRL and
verl use Bessel's correction (divide by G - 1). Ours is defined for G = 1 and makes the normalised group
have unit variance exactly; the two differ by the constant factor sqrt(G / (G - 1)) per run.
"""
from __future__ import annotations

import torch


def grpo_advantages(rewards_BG: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """adv_BG = (r - mean_G(r)) / (std_G(r) + eps), or r - mean_G(r) when `normalize_std` is False.

    Rows are prompts (B), columns their G samples. A group whose rewards are all equal carries no signal
    and gets exactly zero advantage (not float round-off from `r - mean`).
    """
    if rewards_BG.dim() != 2:
        raise ValueError(f"rewards_BG must be 2-D (prompts, samples), got shape {tuple(rewards_BG.shape)}")
    rewards_BG = rewards_BG.float()
    centered_BG = rewards_BG - rewards_BG.mean(dim=1, keepdim=True)
    # The mean of G equal floats need not equal them bit for bit; force the no-signal case to zero.
    uniform_B1 = (rewards_BG == rewards_BG[:, :1]).all(dim=1, keepdim=True)
    centered_BG = centered_BG.masked_fill(uniform_B1, 0.0)
    if not normalize_std:
        return centered_BG
    std_B1 = rewards_BG.std(dim=1, keepdim=True, unbiased=False)
    return centered_BG / (std_B1 + eps)

