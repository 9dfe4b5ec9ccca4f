"""Ascend path: one varlen `torch_npu.npu_fusion_attention` call per layer.

UNVERIFIED: written to the documented API of `torch_npu.npu_fusion_attention`
(Ascend/op-plugin docs, torch_npu 2.x: input_layout "TND", actual_seq_qlen/actual_seq_kvlen
as cumulative lengths, sparse_mode=3 "rightDownCausal" with the compressed 2048 x 2048
upper-triangular atten_mask where True means masked). No NPU was available when this was
written; the CPU test only checks the arguments against a fake torch_npu that implements
those documented semantics. Run tests/parity/test_shared_prompt_attention.py on an Ascend
machine before relying on it.

Every group becomes 1 + G varlen "sequences" of (query, key/value):
  prompt:      q = prompt (P)     kv = prompt (P)                -> causal
  response k:  q = r_k    (R_k)   kv = [prompt ; r_k] (P + R_k)  -> bottom-right causal
rightDownCausal aligns the causal diagonal to the bottom-right corner, so response query j
sees all P prompt keys and its own keys 0..j: exactly the shared-prompt rule. The queries are
the packed row itself (same order), so only K/V are gathered; prompt K/V is copied G times
per layer, as in the portable kernel. Gradients flow through the gather back into the
shared prompt K/V. GQA is native (Nq a multiple of Nkv).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.shared_prompt_attention.layout import SharedPromptLayout

RIGHT_DOWN_CAUSAL = 3  # sparse_mode value in the npu_fusion_attention documentation
COMPRESSED_MASK_SIZE = 2048  # sparse_mode 2/3/4 take an optimised 2048 x 2048 causal mask
MAX_VARLEN_SEQUENCES = 1024  # documented limit on len(actual_seq_qlen) in the varlen case


@dataclass(frozen=True, slots=True)
class VarlenPlan:
    """Host-side lengths and device-side K/V gather index for one layout."""

    kv_index: torch.Tensor  # [S_kv] token positions forming the concatenated K/V sequences
    cu_seqlens_q: list[int]  # cumulative query lengths, one entry per varlen sequence
    cu_seqlens_kv: list[int]  # cumulative key/value lengths


def npu_shared_prompt_attention(q_HTD: torch.Tensor, k_HTD: torch.Tensor, v_HTD: torch.Tensor,
                                layout: SharedPromptLayout, *,
                                scale: float | None = None) -> torch.Tensor:
    """Same contract as `reference_shared_prompt_attention` (unverified on hardware)."""
    import torch_npu  # lazy: only importable on an Ascend install

    H, T, D = q_HTD.shape
    plan = varlen_plan(layout, q_HTD.device)
    used = layout.num_real_tokens
    q_NHD = q_HTD[:, :used].transpose(0, 1)  # TND: [tokens, heads, head_dim]
    k_SHD = k_HTD.transpose(0, 1).index_select(0, plan.kv_index)
    v_SHD = v_HTD.transpose(0, 1).index_select(0, plan.kv_index)
    out_NHD = torch_npu.npu_fusion_attention(
        q_NHD.contiguous(), k_SHD, v_SHD, H, "TND",
        atten_mask=_compressed_causal_mask(q_HTD.device),
        scale=D ** -0.5 if scale is None else scale,
        keep_prob=1.0,
        actual_seq_qlen=plan.cu_seqlens_q,
        actual_seq_kvlen=plan.cu_seqlens_kv,
        sparse_mode=RIGHT_DOWN_CAUSAL,
    )[0]
    out_HND = out_NHD.transpose(0, 1)
    if used == T:
        return out_HND
    return torch.cat([out_HND, out_HND.new_zeros(H, T - used, D)], dim=1)


def varlen_plan(layout: SharedPromptLayout, device: torch.device) -> VarlenPlan:
    key = ("npu", "plan", str(device))
    if key not in layout.cache:
        layout.cache[key] = _build_plan(layout, device)
    return layout.cache[key]


def _build_plan(layout: SharedPromptLayout, device: torch.device) -> VarlenPlan:
    kv_index: list[int] = []
    q_lens: list[int] = []
    kv_lens: list[int] = []
    for span in layout.groups:
        prompt = list(range(span.start, span.start + span.prompt_len))
        kv_index += prompt
        q_lens.append(span.prompt_len)
        kv_lens.append(span.prompt_len)
        offset = span.start + span.prompt_len
        for r_len in span.response_lens:
            kv_index += prompt + list(range(offset, offset + r_len))
            q_lens.append(r_len)
            kv_lens.append(span.prompt_len + r_len)
            offset += r_len
    if len(q_lens) > MAX_VARLEN_SEQUENCES:
        raise ValueError(f"{len(q_lens)} varlen sequences (prompts + responses) exceed the documented "
                         f"limit of {MAX_VARLEN_SEQUENCES}; split the micro-batch")
    return VarlenPlan(torch.tensor(kv_index, dtype=torch.long, device=device),
                      _cumsum(q_lens), _cumsum(kv_lens))


_CAUSAL_MASKS: dict[str, torch.Tensor] = {}


def _compressed_causal_mask(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _CAUSAL_MASKS:
        ones = torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool, device=device)
        _CAUSAL_MASKS[key] = torch.triu(ones, diagonal=1)  # True = masked (future keys)
    return _CAUSAL_MASKS[key]


def _cumsum(lengths: list[int]) -> list[int]:
    out, total = [], 0
    for n in lengths:
        total += n
        out.append(total)
    return out
