"""Portable shared-prompt attention from plain differentiable ops (any device, CPU included).

Per group, instead of one T x T mask:
  1. prompt queries attend causally to the prompt: one SDPA call, `is_causal=True`;
  2. the G responses form a batch: response k's queries attend to [prompt K/V ; own K/V]
     with a bottom-right-aligned causal mask of shape (R_max, P + R_max). Prompt K/V is
     computed once by the model and only broadcast here; autograd sums the G gradients
     flowing back into it.
Cost per group is P^2/2 + G * R * (P + R) score entries instead of (P + G R)^2 for the
dense reference, and no (P + G R)^2 mask is built. Responses shorter than R_max are padded
by repeating a valid index; the padded queries are dropped and padded keys are never
visible to real queries (they sit after them in the causal order), so their gradient is 0.

Caveat: the concatenation materialises G copies of the prompt K/V per layer (kept for
backward), i.e. 2 * G * P * Hkv * D values per layer. That is small next to the MLP
activations it saves, but it is not zero.

Legend: H query heads, Hkv key/value heads, T packed tokens, D head dim,
G responses in a group, P prompt length, R response length (R_max: longest in the group).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.shared_prompt_attention.layout import GroupSpan, SharedPromptLayout


def portable_shared_prompt_attention(q_HTD: torch.Tensor, k_HTD: torch.Tensor, v_HTD: torch.Tensor,
                                     layout: SharedPromptLayout, *,
                                     scale: float | None = None) -> torch.Tensor:
    """Same contract as `reference_shared_prompt_attention`."""
    H, T, D = q_HTD.shape
    gqa = k_HTD.shape[0] != H
    layout = layout.to(q_HTD.device)
    # One split per input (backward: one cat) instead of overlapping slices (backward: a
    # zero-filled full-size gradient per slice).
    sizes = [n for span in layout.groups for n in (span.prompt_len, span.length - span.prompt_len)]
    sizes.append(T - layout.num_real_tokens)
    q_parts, k_parts, v_parts = (x.split(sizes, dim=1) for x in (q_HTD, k_HTD, v_HTD))
    pieces = []
    for g, span in enumerate(layout.groups):
        prompt = (q_parts[2 * g], k_parts[2 * g], v_parts[2 * g])  # each [H or Hkv, P, D]
        responses = (q_parts[2 * g + 1], k_parts[2 * g + 1], v_parts[2 * g + 1])  # [., sum R_k, D]
        pieces.append(_prompt_part(*prompt, scale, gqa))
        pieces.append(_response_part(prompt, responses, span, layout, scale, gqa))
    if sizes[-1]:
        pieces.append(q_HTD.new_zeros(H, sizes[-1], D))
    return torch.cat(pieces, dim=1)


def _prompt_part(q_HPD, k_HPD, v_HPD, scale, gqa) -> torch.Tensor:
    out_1HPD = F.scaled_dot_product_attention(q_HPD[None], k_HPD[None], v_HPD[None],
                                              is_causal=True, scale=scale, enable_gqa=gqa)
    return out_1HPD[0]


def _response_part(prompt, responses, span: GroupSpan, layout: SharedPromptLayout,
                   scale, gqa) -> torch.Tensor:
    _, k_HPD, v_HPD = prompt
    P, G = span.prompt_len, len(span.response_lens)
    R = max(span.response_lens)
    q_GHRD, k_GHRD, v_GHRD = (_responses_as_batch(x, span, layout) for x in responses)
    Hkv = k_GHRD.shape[1]
    k_GHSD = torch.cat([k_HPD[None].expand(G, Hkv, P, -1), k_GHRD], dim=2)  # S = P + R
    v_GHSD = torch.cat([v_HPD[None].expand(G, Hkv, P, -1), v_GHRD], dim=2)
    allowed_RS = _bottom_right_causal(R, P, layout)
    out_GHRD = F.scaled_dot_product_attention(q_GHRD, k_GHSD, v_GHSD, attn_mask=allowed_RS,
                                              scale=scale, enable_gqa=gqa)
    H, D = out_GHRD.shape[1], out_GHRD.shape[3]
    out_HND = out_GHRD.transpose(0, 1).reshape(H, G * R, D)  # N = G * R_max (padded)
    if min(span.response_lens) == R:
        return out_HND
    return out_HND.index_select(1, _unpad_index(span, layout))


def _responses_as_batch(x_HND: torch.Tensor, span: GroupSpan, layout: SharedPromptLayout) -> torch.Tensor:
    """[H, sum(R_k), D] responses back to back -> [G, H, R_max, D] (a view when lengths are equal)."""
    H, _, D = x_HND.shape
    G, R = len(span.response_lens), max(span.response_lens)
    if min(span.response_lens) == R:
        return x_HND.view(H, G, R, D).transpose(0, 1)
    return x_HND.index_select(1, _pad_index(span, layout)).view(H, G, R, D).transpose(0, 1)


def _pad_index(span: GroupSpan, layout: SharedPromptLayout) -> torch.Tensor:
    """Index [G * R_max] into the responses; padded slots repeat the response's first token."""
    def build():
        R = max(span.response_lens)
        starts = torch.tensor(_offsets(span.response_lens), dtype=torch.long)
        lens = torch.tensor(span.response_lens, dtype=torch.long)
        j_R = torch.arange(R)
        index_GR = starts[:, None] + torch.where(j_R[None, :] < lens[:, None], j_R[None, :], 0)
        return index_GR.reshape(-1).to(layout.device)
    return _cached(layout, ("pad_index", span), build)


def _unpad_index(span: GroupSpan, layout: SharedPromptLayout) -> torch.Tensor:
    """Index into the padded [G * R_max] responses picking the real tokens, in packed order."""
    def build():
        R = max(span.response_lens)
        index = [k * R + j for k, r_len in enumerate(span.response_lens) for j in range(r_len)]
        return torch.tensor(index, dtype=torch.long, device=layout.device)
    return _cached(layout, ("unpad_index", span), build)


def _bottom_right_causal(R: int, P: int, layout: SharedPromptLayout) -> torch.Tensor:
    """allowed_RS: response query j sees all P prompt keys and own keys 0..j."""
    def build():
        j_R1 = torch.arange(R)[:, None]
        s_1S = torch.arange(P + R)[None, :]
        return ((s_1S < P) | (s_1S - P <= j_R1)).to(layout.device)
    return _cached(layout, ("bottom_right_causal", R, P), build)


def _offsets(lengths: tuple[int, ...]) -> list[int]:
    starts, total = [], 0
    for n in lengths:
        starts.append(total)
        total += n
    return starts


def _cached(layout: SharedPromptLayout, key: tuple, build):
    # Every layer of the model reuses the same index tensors: build them once per layout.
    full_key = ("portable",) + key
    if full_key not in layout.cache:
        layout.cache[full_key] = build()
    return layout.cache[full_key]
