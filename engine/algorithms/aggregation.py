"""Loss aggregation: how per-token losses become the one scalar whose gradient updates the policy.

The trainer splits an iteration's sequences into micro-batches, calls an aggregation on each and sums the
backward passes. Every aggregation here is linear in the loss with weights that depend only on the
micro-batch's own sequences and on `LossTotals`, counts over the WHOLE iteration fixed before the first
backward. So the sum over micro-batches equals the full-batch value, and so do the gradients, whatever
the micro-batch size (tests/algorithms/test_aggregation.py checks both). A sequence must not be split
across micro-batches under `seq_mean`.

    token_mean = sum_t mask_t * loss_t / totals.tokens
        Every response token weighs the same. DAPO's "token-level policy gradient loss" (Yu et al. 2025,
        section 3.3); long answers are not diluted.
    seq_mean   = sum_s (sum_{t in s} mask_t * loss_t / n_s) / totals.seqs
        Each sequence's masked mean, then the mean over sequences: the 1/|o_i| of the GRPO objective
        (Shao et al. 2024, eq. 3). Dr. GRPO (Liu et al. 2025) shows it favours long wrong answers.

Layout: a flat token tensor and, per token, the index of its sequence within the micro-batch
(`seq_idx_T`, in 0..T-1, e.g. 0..N-1 for N sequences; any value, such as -1, where the mask is 0, so packed
prompt tokens need no index). Ragged responses pack with no padding. A padded (N, R) batch also works:
pass the three (N, R) tensors with `seq_idx_NR = arange(N)[:, None].expand(N, R)`; they are flattened.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class LossTotals:
    """Counts over the whole iteration (every micro-batch), the denominators of every aggregation."""

    tokens: int  # response tokens with mask 1
    seqs: int  # sequences with at least one response token with mask 1

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.seqs < 1:
            raise ValueError(f"an iteration needs at least one response token, got {self}")


def count_totals(response_lengths: Iterable[int]) -> LossTotals:
    """LossTotals from each sequence's number of masked-in response tokens (zero-length ones are not counted)."""
    lengths = list(response_lengths)
    return LossTotals(tokens=sum(lengths), seqs=sum(1 for n in lengths if n > 0))


def token_mean(
    loss_T: torch.Tensor, mask_T: torch.Tensor, seq_idx_T: torch.Tensor, totals: LossTotals
) -> torch.Tensor:
    """sum(loss * mask) / totals.tokens. `seq_idx_T` is unused; it keeps one signature for AGGREGATIONS."""
    del seq_idx_T
    return (loss_T * mask_T.to(loss_T.dtype)).sum() / totals.tokens


def seq_mean(
    loss_T: torch.Tensor, mask_T: torch.Tensor, seq_idx_T: torch.Tensor, totals: LossTotals
) -> torch.Tensor:
    """sum over sequences of (masked mean of the sequence's losses) / totals.seqs."""
    loss_T, mask_T, seq_idx_T = loss_T.reshape(-1), mask_T.reshape(-1), seq_idx_T.reshape(-1)
    weight_T = mask_T.to(loss_T.dtype)
    # Masked-out tokens may carry any index; send them to slot 0, where they add a weight of 0.
    idx_T = torch.where(mask_T.bool(), seq_idx_T, 0)
    # One slot per possible sequence: N <= T, and sizing by T needs no device-to-host sync to find N.
    len_S = weight_T.new_zeros(loss_T.shape[0]).index_add_(0, idx_T, weight_T)
    weight_T = weight_T / len_S[idx_T].clamp_min(1.0)
    return (loss_T * weight_T).sum() / totals.seqs


Aggregation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LossTotals], torch.Tensor]

AGGREGATIONS: dict[str, Aggregation] = {"token_mean": token_mean, "seq_mean": seq_mean}
