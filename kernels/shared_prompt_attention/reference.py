"""Reference shared-prompt attention: a dense T x T boolean mask and an explicit softmax.

This is the specification every fast kernel is tested against. It costs O(T^2) memory and
time per head, so it is only for tests and small batches.

Legend: H query heads, Hkv key/value heads (H % Hkv == 0), T packed tokens, D head dim.
"""
from __future__ import annotations

import torch

from kernels.shared_prompt_attention.layout import PAD, PROMPT, SharedPromptLayout


def shared_prompt_mask(layout: SharedPromptLayout) -> torch.Tensor:
    """allowed_TT[q, k]: True where query token q may attend to key token k (see layout.py)."""
    gid_T, seg_T = layout.group_ids_T, layout.segment_ids_T
    pos_T = torch.arange(layout.seq_len, device=gid_T.device)
    same_group_TT = (gid_T[:, None] == gid_T[None, :]) & (gid_T[:, None] != PAD)
    not_future_TT = pos_T[None, :] <= pos_T[:, None]
    visible_TT = (seg_T[None, :] == PROMPT) | (seg_T[None, :] == seg_T[:, None])
    return same_group_TT & not_future_TT & visible_TT


def reference_shared_prompt_attention(q_HTD: torch.Tensor, k_HTD: torch.Tensor, v_HTD: torch.Tensor,
                                      layout: SharedPromptLayout, *,
                                      scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale, masked by `shared_prompt_mask`) v; zeros at pad queries.

    k_HTD / v_HTD may have fewer heads than q_HTD (grouped-query attention): query head h
    reads key/value head h // (H // Hkv), as in transformers' `repeat_kv`.
    """
    H, T, D = q_HTD.shape
    group_size = H // k_HTD.shape[0]
    k_HTD = k_HTD.repeat_interleave(group_size, dim=0)
    v_HTD = v_HTD.repeat_interleave(group_size, dim=0)
    scale = D ** -0.5 if scale is None else scale
    layout = layout.to(q_HTD.device)
    allowed_TT = shared_prompt_mask(layout)
    real_T = layout.group_ids_T != PAD
    # A pad query has no allowed key; let it see itself so the softmax stays finite, then zero it.
    allowed_TT = allowed_TT | torch.diag(~real_T)
    scores_HTT = torch.matmul(q_HTD, k_HTD.transpose(1, 2)) * scale
    scores_HTT = scores_HTT.masked_fill(~allowed_TT, float("-inf"))
    # softmax in at least float32 (float64 inputs stay float64, so float64 parity tests are exact)
    probs_HTT = torch.softmax(scores_HTT, dim=-1, dtype=torch.promote_types(q_HTD.dtype, torch.float32)).to(q_HTD.dtype)
    out_HTD = torch.matmul(probs_HTT, v_HTD)
    return out_HTD * real_T[None, :, None].to(out_HTD.dtype)
