"""CUDA fast path: FlexAttention with a BlockMask built from the shared-prompt layout.

The mask_mod is the rule of `reference.shared_prompt_mask` evaluated per (q, kv) index, so
FlexAttention skips every 128 x 128 block that is fully masked (other groups, other
responses) and only computes the partial blocks on the diagonals.

Block masks are cached by layout (a micro-batch's layout is reused by every layer and by
the reference-model forward); `flex_attention` is compiled once per process, lazily, so
importing this module costs nothing. Pad queries are fully masked rows, for which
FlexAttention returns zeros, matching the reference.

FlexAttention has no backward on CPU in torch 2.13: use `portable` there. The forward runs
on CPU in eager mode, which the CPU tests use to check the mask_mod.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from kernels.shared_prompt_attention.layout import PAD, PROMPT, SharedPromptLayout

_BLOCK_MASKS: OrderedDict = OrderedDict()
_MAX_CACHED_BLOCK_MASKS = 32
_COMPILED: dict = {}
MIN_HEAD_DIM = 16  # smaller heads (test miniatures only) take the portable kernel
FLEX_BLOCK = 128  # FlexAttention's default block size; rows are padded to a multiple of it


def flex_shared_prompt_attention(q_HTD: torch.Tensor, k_HTD: torch.Tensor, v_HTD: torch.Tensor,
                                 layout: SharedPromptLayout, *,
                                 scale: float | None = None) -> torch.Tensor:
    """Same contract as `reference_shared_prompt_attention`."""
    if q_HTD.shape[-1] < MIN_HEAD_DIM:  # tl.dot in FlexAttention's Triton kernels needs K >= 16 (not tried here)
        from kernels.shared_prompt_attention.portable import portable_shared_prompt_attention

        return portable_shared_prompt_attention(q_HTD, k_HTD, v_HTD, layout, scale=scale)
    flex_attention = _flex_attention(compiled=q_HTD.device.type != "cpu")
    T = q_HTD.shape[1]
    padded = padded_to_blocks(layout.to(q_HTD.device))
    pad = padded.seq_len - T
    q_HSD, k_HSD, v_HSD = ((torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q_HTD, k_HTD, v_HTD)) if pad
                           else (q_HTD, k_HTD, v_HTD))  # no copy per layer when T is already whole blocks
    out_1HSD = flex_attention(q_HSD[None], k_HSD[None], v_HSD[None], block_mask=shared_prompt_block_mask(padded),
                              scale=scale, enable_gqa=k_HTD.shape[0] != q_HTD.shape[0])
    return out_1HSD[0, :, :T]


def padded_to_blocks(layout: SharedPromptLayout) -> SharedPromptLayout:
    """`layout` with pad tokens appended up to a multiple of FLEX_BLOCK (kept in the layout's cache).

    With a row shorter than one block, Inductor finds no flex_attention kernel at all (NoValidChoicesError on
    torch 2.11, H200, every head_dim and dtype tried; docs/benchmarks.md). Pad queries attend to nothing and pad
    keys are never attended, so the extra tokens change no output and are sliced off.
    """
    S = -(-layout.seq_len // FLEX_BLOCK) * FLEX_BLOCK
    if S == layout.seq_len:
        return layout
    key = ("flex_padded", str(layout.device))
    if key not in layout.cache:
        layout.cache[key] = SharedPromptLayout.from_spans(layout.groups, S, layout.device)
    return layout.cache[key]


def shared_prompt_block_mask(layout: SharedPromptLayout):
    """The BlockMask of `layout` on the layout's device, cached by (layout.key, device)."""
    key = (layout.key, str(layout.device))
    if key in _BLOCK_MASKS:
        _BLOCK_MASKS.move_to_end(key)
        return _BLOCK_MASKS[key]
    from torch.nn.attention.flex_attention import create_block_mask

    block_mask = create_block_mask(_mask_mod(layout), B=None, H=None, Q_LEN=layout.seq_len,
                                   KV_LEN=layout.seq_len, device=layout.device)
    _BLOCK_MASKS[key] = block_mask
    if len(_BLOCK_MASKS) > _MAX_CACHED_BLOCK_MASKS:
        _BLOCK_MASKS.popitem(last=False)
    return block_mask


def _mask_mod(layout: SharedPromptLayout):
    gid_T, seg_T = layout.group_ids_T, layout.segment_ids_T

    def shared_prompt(b, h, q_idx, kv_idx):
        same_group = (gid_T[q_idx] == gid_T[kv_idx]) & (gid_T[q_idx] != PAD)
        visible = (seg_T[kv_idx] == PROMPT) | (seg_T[kv_idx] == seg_T[q_idx])
        return same_group & visible & (kv_idx <= q_idx)

    return shared_prompt


def _flex_attention(compiled: bool):
    if compiled not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        # Default dynamism: the second distinct T compiles a dynamic-shape kernel reused for all
        # later T (a static compile per T would hit the recompile limit and fall back to eager).
        _COMPILED[compiled] = torch.compile(flex_attention) if compiled else flex_attention
    return _COMPILED[compiled]
