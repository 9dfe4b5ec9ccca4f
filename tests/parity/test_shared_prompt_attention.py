"""Shared-prompt attention kernels vs the dense reference: values and q/k/v gradients.

Relative error = max |fast - reference| / max |reference| per tensor (an elementwise relative
error is meaningless for gradient entries that are ~0). The reference always runs in float64 on the
inputs upcast: a kernel in float64 must match it within EXACT_RTOL; a kernel in float32 (the float32
test on CPU; FlexAttention on CUDA, whose logsumexp is float32 whatever the input dtype) within
`roundoff_bound(float32, T)`: T, the keys of a softmax row and the queries summed into a key's
gradient, is the longest sum.
"""
from __future__ import annotations

import random
import sys
import time
import types
import warnings

import pytest
import torch

from kernels.shared_prompt_attention import KERNELS, GroupSpan, SharedPromptLayout
from kernels.shared_prompt_attention import ascend
from kernels.shared_prompt_attention.reference import shared_prompt_mask

from helpers import EXACT_RTOL, roundoff_bound


def _has_accelerator(kind: str) -> bool:
    accelerator = torch.accelerator.current_accelerator()
    return accelerator is not None and accelerator.type == kind


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def random_layout(rng: random.Random, max_groups=3, max_prompt=12, max_g=4, max_r=9, max_pad=4):
    spans, start = [], 0
    for _ in range(rng.randint(1, max_groups)):
        P = rng.randint(1, max_prompt)
        lens = tuple(rng.randint(1, max_r) for _ in range(rng.randint(1, max_g)))
        spans.append(GroupSpan(start, P, lens))
        start += P + sum(lens)
    return SharedPromptLayout.from_spans(tuple(spans), start + rng.randint(0, max_pad))


def qkv(layout, H, Hkv, D, device="cpu", seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    T = layout.seq_len
    return [torch.randn(h, T, D, generator=gen, dtype=dtype).to(device).requires_grad_() for h in (H, Hkv, Hkv)]


def tolerance(dtype: torch.dtype, layout) -> float:
    return EXACT_RTOL if dtype == torch.float64 else roundoff_bound(dtype, layout.seq_len)


def as_float64(tensors):
    return [x.detach().double().requires_grad_(x.requires_grad) for x in tensors]


def out_and_grads(kernel, q, k, v, layout, scale=None):
    out = kernel(q, k, v, layout, scale=scale)
    # float32 values whatever out.dtype: a float32 kernel and the float64 reference get the same weights
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    return (out.detach(),) + grads


def assert_parity(kernel_name, layout, H, Hkv, D, device="cpu", scale=None, dtype=torch.float64):
    """`kernel_name` in `dtype` vs the float64 reference on the same inputs, within `tolerance(dtype)`."""
    layout = layout.to(device)
    q, k, v = qkv(layout, H, Hkv, D, device, dtype=dtype)
    fast = out_and_grads(KERNELS[kernel_name], q, k, v, layout, scale)
    ref = out_and_grads(KERNELS["reference"], *as_float64((q, k, v)), layout, scale)
    rtol = tolerance(dtype, layout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert a.shape == b.shape and a.dtype == dtype and b.dtype == torch.float64
        err = rel_err(a.double(), b)
        assert err < rtol, f"{kernel_name} {name} ({dtype}): rel err {err:.2e} >= {rtol:.2e}"


def test_reference_mask_is_the_rule():
    layout = SharedPromptLayout.from_spans((GroupSpan(0, 3, (2, 1)), GroupSpan(6, 2, (3, 2))), 15)
    gid, seg = layout.group_ids_T.tolist(), layout.segment_ids_T.tolist()
    expected = [[gid[q] == gid[k] != -1 and k <= q and seg[k] in (0, seg[q]) for k in range(15)]
                for q in range(15)]
    assert shared_prompt_mask(layout).tolist() == expected


def random_case(seed: int) -> dict:
    rng = random.Random(seed)
    H, Hkv = rng.choice([(4, 4), (4, 2), (4, 1), (6, 3)])
    return dict(layout=random_layout(rng), H=H, Hkv=Hkv, D=rng.choice([8, 16]), scale=rng.choice([None, 0.3]))


@pytest.mark.parametrize("seed", range(12))
def test_portable_matches_reference(seed):
    assert_parity("portable", **random_case(seed))


@pytest.mark.parametrize("seed", range(3))
def test_portable_in_float32_is_within_float32_round_off_of_the_reference(seed):
    """float32 documents: measured <= 0.6 * eps * sqrt(T) here, the bound is 16 * eps * sqrt(T)."""
    assert_parity("portable", **random_case(seed), dtype=torch.float32)


@pytest.mark.parametrize("spans, seq_len", [
    ((GroupSpan(0, 5, (4,)),), 9),  # G = 1, no padding
    ((GroupSpan(0, 1, (1, 1, 1)),), 6),  # one-token prompt and responses, trailing pad
    ((GroupSpan(0, 7, (3, 3, 3, 3)), GroupSpan(19, 2, (5, 1))), 32),  # equal and unequal R_k
])
def test_portable_edge_layouts(spans, seq_len):
    assert_parity("portable", SharedPromptLayout.from_spans(spans, seq_len), H=4, Hkv=2, D=8)


def test_flex_mask_mod_matches_reference_forward_on_cpu():
    """FlexAttention has no CPU backward in torch 2.13; its eager forward checks the mask_mod and the padding of
    rows to whole 128-token blocks (head_dim 16: smaller heads take the portable kernel)."""
    rng = random.Random(7)
    short = SharedPromptLayout.from_spans((GroupSpan(0, 5, (3, 1, 2)),), 13)
    for layout in [short] + [random_layout(rng) for _ in range(3)]:
        q, k, v = (x.detach() for x in qkv(layout, 4, 2, 16))  # float64: eager flex computes in float64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = KERNELS["flex"](q, k, v, layout)
        assert out.dtype == torch.float64
        assert rel_err(out, KERNELS["reference"](q, k, v, layout)) < EXACT_RTOL


def test_portable_is_faster_than_reference_at_p1024_r128_g8():
    layout = SharedPromptLayout.from_spans((GroupSpan(0, 1024, (128,) * 8),), 2048)
    q, k, v = qkv(layout, H=4, Hkv=2, D=64, dtype=torch.float32)

    def best_of_3(name):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            KERNELS[name](q, k, v, layout).sum().backward()
            times.append(time.perf_counter() - start)
        return min(times)

    assert best_of_3("portable") < best_of_3("reference")


@pytest.mark.cuda
@pytest.mark.skipif(not _has_accelerator("cuda"), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("kernel_name, dtype", [("portable", torch.float64), ("flex", torch.float32)])
@pytest.mark.parametrize("seed", range(4))
def test_cuda_kernels_match_reference(kernel_name, dtype, seed):
    """flex in float32: FlexAttention keeps its logsumexp in float32 whatever the input dtype."""
    rng = random.Random(seed)
    layout = random_layout(rng, max_groups=4, max_prompt=300, max_g=8, max_r=200, max_pad=64)
    assert_parity(kernel_name, layout, H=8, Hkv=rng.choice([8, 2]), D=64, device="cuda", dtype=dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not _has_accelerator("cuda"), reason="no CUDA device visible to torch")
def test_flex_on_rows_shorter_than_one_block():
    """Inductor has no flex_attention kernel for a row under 128 tokens; the kernel pads it to one block."""
    layout = SharedPromptLayout.from_spans((GroupSpan(0, 9, (4, 7, 2)), GroupSpan(22, 3, (5,))), 40)
    assert_parity("flex", layout, H=4, Hkv=2, D=64, device="cuda", dtype=torch.float32)


# ---- Ascend: argument construction against a fake torch_npu that follows the documentation ----

def _fake_npu_fusion_attention(calls: list):
    """npu_fusion_attention for TND + sparse_mode=3, as documented; records its arguments."""
    def npu_fusion_attention(query, key, value, head_num, input_layout, *, atten_mask=None, scale=1.0,
                             keep_prob=1.0, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                             **unused):
        calls.append(dict(head_num=head_num, input_layout=input_layout, atten_mask=atten_mask, scale=scale,
                          keep_prob=keep_prob, actual_seq_qlen=list(actual_seq_qlen),
                          actual_seq_kvlen=list(actual_seq_kvlen), sparse_mode=sparse_mode, unused=unused))
        outs, q0, kv0 = [], 0, 0
        for q1, kv1 in zip(actual_seq_qlen, actual_seq_kvlen):
            q_NHD, k_SHD, v_SHD = query[q0:q1], key[kv0:kv1], value[kv0:kv1]
            rep = q_NHD.shape[1] // k_SHD.shape[1]
            k_SHD, v_SHD = k_SHD.repeat_interleave(rep, 1), v_SHD.repeat_interleave(rep, 1)
            scores_HNS = torch.einsum("nhd,shd->hns", q_NHD, k_SHD) * scale
            Sq, Skv = q1 - q0, kv1 - kv0
            masked_NS = torch.arange(Skv)[None, :] > torch.arange(Sq)[:, None] + (Skv - Sq)  # right-down causal
            probs_HNS = scores_HNS.masked_fill(masked_NS, float("-inf")).softmax(-1)
            outs.append(torch.einsum("hns,shd->nhd", probs_HNS, v_SHD))
            q0, kv0 = q1, kv1
        out = torch.cat(outs)
        return out, None, None, None, 0, 0, 0
    return npu_fusion_attention


@pytest.mark.ascend
def test_npu_kernel_arguments_and_values_with_fake_torch_npu(monkeypatch):
    calls: list = []
    fake = types.ModuleType("torch_npu")
    fake.npu_fusion_attention = _fake_npu_fusion_attention(calls)
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    layout = SharedPromptLayout.from_spans((GroupSpan(0, 4, (3, 1, 2)), GroupSpan(10, 2, (2,))), 16)
    assert_parity("npu", layout, H=4, Hkv=2, D=8, scale=0.25)
    call = calls[0]
    assert call["input_layout"] == "TND" and call["head_num"] == 4 and call["scale"] == 0.25
    assert call["sparse_mode"] == ascend.RIGHT_DOWN_CAUSAL == 3 and call["keep_prob"] == 1.0
    # sequences: prompt 0 (4), its responses (3, 1, 2), prompt 1 (2), its response (2)
    assert call["actual_seq_qlen"] == [4, 7, 8, 10, 12, 14]
    assert call["actual_seq_kvlen"] == [4, 11, 16, 22, 24, 28]
    mask = call["atten_mask"]
    assert mask.dtype == torch.bool and mask.shape == (2048, 2048)
    assert torch.equal(mask, torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1))
    assert not call["unused"]
