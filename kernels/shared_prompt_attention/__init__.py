"""Shared-prompt attention: G responses attend to one copy of their prompt (docs/packing.md).

Every kernel has the signature of `SharedPromptKernel` and the semantics of `reference`:

    KERNELS["reference"]  dense T x T mask, explicit softmax: the specification (tests only)
    KERNELS["portable"]   plain differentiable ops, any device, CPU included
    KERNELS["flex"]       FlexAttention + cached BlockMask (CUDA; forward also runs on CPU)
    KERNELS["npu"]        one varlen fused-attention call on Ascend (unverified, see ascend.py)

To use one inside a transformers model:

    name = register_with_transformers("portable")     # "cadence_shared_prompt_portable"
    model.set_attn_implementation(name)
    out = model(input_ids=..., position_ids=..., shared_prompt_layout=layout)

transformers forwards unknown forward kwargs down to the attention function (checked for
Qwen2 and Llama on transformers 5.19). Without `shared_prompt_layout` the registered function
is plain causal SDPA, so the same model still generates (padding masks included).
"""
from __future__ import annotations

from typing import Protocol

import torch

from kernels.shared_prompt_attention.ascend import npu_shared_prompt_attention
from kernels.shared_prompt_attention.flex_cuda import flex_shared_prompt_attention
from kernels.shared_prompt_attention.layout import GroupSpan, SharedPromptLayout
from kernels.shared_prompt_attention.portable import portable_shared_prompt_attention
from kernels.shared_prompt_attention.reference import reference_shared_prompt_attention

LAYOUT_KWARG = "shared_prompt_layout"
IMPLEMENTATION_PREFIX = "cadence_shared_prompt_"


class SharedPromptKernel(Protocol):
    def __call__(self, q_HTD: torch.Tensor, k_HTD: torch.Tensor, v_HTD: torch.Tensor,
                 layout: SharedPromptLayout, *, scale: float | None = None) -> torch.Tensor:
        """q_HTD [H, T, D]; k_HTD, v_HTD [Hkv, T, D] with H % Hkv == 0 -> out_HTD [H, T, D]."""
        ...


KERNELS: dict[str, SharedPromptKernel] = {
    "reference": reference_shared_prompt_attention,
    "portable": portable_shared_prompt_attention,
    "flex": flex_shared_prompt_attention,
    "npu": npu_shared_prompt_attention,
}


def register_with_transformers(kernel_name: str) -> str:
    """Register `KERNELS[kernel_name]` as a transformers attention implementation; return its name.

    Registers under the same name an attention-mask function that builds transformers' usual
    SDPA mask for generation (padding, KV cache) and no mask for an unpadded full-sequence
    forward, where the packed layout (or plain causality) defines attention. Idempotent.
    """
    if kernel_name not in KERNELS:
        raise KeyError(f"unknown shared-prompt kernel {kernel_name!r}; known: {sorted(KERNELS)}")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = IMPLEMENTATION_PREFIX + kernel_name
    AttentionInterface.register(name, make_transformers_attention(KERNELS[kernel_name]))
    AttentionMaskInterface.register(name, _fallback_mask)
    return name


def make_transformers_attention(kernel: SharedPromptKernel):
    """Wrap a kernel in transformers' attention-function signature (module, q, k, v, mask, ...)."""
    def shared_prompt_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: torch.Tensor | None,
                                scaling: float | None = None, dropout: float = 0.0, **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        if layout is None:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, attention_mask,
                                          dropout=dropout, scaling=scaling, **kwargs)
        _check_packed_call(query, key, dropout, kwargs)
        out_HTD = kernel(query[0], key[0], value[0], layout.to(query.device), scale=scaling)
        return out_HTD.transpose(0, 1).unsqueeze(0).contiguous(), None  # [1, T, H, D]

    return shared_prompt_attention


def _check_packed_call(query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict) -> None:
    if query.shape[0] != 1:
        raise ValueError(f"a shared-prompt layout describes one packed row; got batch {query.shape[0]}")
    if key.shape[2] != query.shape[2]:
        raise ValueError("a shared-prompt layout forward takes no KV cache (use_cache=False)")
    if dropout:
        raise NotImplementedError("attention dropout is not supported with a shared-prompt layout")
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("sliding-window layers are not supported with a shared-prompt layout")


def _fallback_mask(**kwargs):
    # transformers would otherwise read restarting position_ids as independent packed sequences
    # and build a T x T mask; with a layout that mask is ignored, so skip it in that case.
    if _unpadded_full_forward(kwargs):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**kwargs)


def _unpadded_full_forward(kwargs: dict) -> bool:
    return (kwargs.get("attention_mask") is None and kwargs.get("local_size") is None
            and kwargs["q_length"] == kwargs["kv_length"]
            and _is_zero(kwargs.get("q_offset", 0)) and _is_zero(kwargs.get("kv_offset", 0)))


def _is_zero(offset) -> bool:
    return isinstance(offset, int) and offset == 0


__all__ = ["GroupSpan", "KERNELS", "LAYOUT_KWARG", "SharedPromptKernel", "SharedPromptLayout",
           "make_transformers_attention", "register_with_transformers"]
