"""Whole-model parity: shared-prompt packing == expanded packing == plain per-sequence forward.

For tiny Qwen2 and Llama models (GQA) the response-token log-probs and every parameter gradient of a
GRPO-like loss sum(w * logp) agree (relative error max |a - b| / max |b| per tensor), with several
groups of different prompt and response lengths in one micro-batch: within EXACT_RTOL in float64 (the
model's RMSNorms kept in float64, see helpers.RMSNormInInputDtype), and within
`roundoff_bound(float32, tokens)` for the unmodified float32 model (every weight gradient sums over the
micro-batch's tokens).
"""
from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from engine.packing import (PackedBatch, pack_expanded, pack_groups, response_token_logprobs,
                            select_logit_positions)
from kernels.shared_prompt_attention import LAYOUT_KWARG, register_with_transformers

from helpers import EXACT_RTOL, norms_in_input_dtype, roundoff_bound
VOCAB = 101
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             initializer_range=0.2)  # larger than default, so log-probs are far from uniform
MODELS = {
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZES)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SIZES)),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_groups(seed: int) -> list:
    rng = random.Random(seed)
    tok = lambda: rng.randrange(1, VOCAB)  # noqa: E731
    shapes = [(1, 2), (7, 1), (12, 4), (5, 3)]  # (P, G); response lengths vary inside a group
    return [([tok() for _ in range(P)], [[tok() for _ in range(rng.randint(1, 11))] for _ in range(G)])
            for P, G in shapes]


def make_model(arch: str, attn: str, dtype: torch.dtype = torch.float32):
    """float64: the same weights (initialised in float32), RMSNorm in float64 (transformers' is float32)."""
    torch.manual_seed(0)
    model = MODELS[arch]().float().to(dtype)
    if dtype == torch.float64:
        norms_in_input_dtype(model)
    model.set_attn_implementation(attn)
    return model


def loss_weights(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.linspace(-1.0, 1.5, n, dtype=dtype)  # stands in for per-token advantages


def packed_logprobs_and_grads(model, packed: PackedBatch):
    model.zero_grad(set_to_none=True)
    logits = model(**packed.model_kwargs()).logits
    logp_N = response_token_logprobs(logits, packed)
    assert logp_N.dtype == logits.dtype  # log-softmax at least float32, float64 stays float64
    (loss_weights(logp_N.numel(), logp_N.dtype).to(logp_N.device) * logp_N).sum().backward()
    return logp_N.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def plain_logprobs_and_grads(model, groups):
    """Each (prompt, response) on its own through the model's own attention, no packing."""
    model.zero_grad(set_to_none=True)
    logps = []
    for prompt, responses in groups:
        for response in responses:
            logits_LV = model(input_ids=torch.tensor([prompt + response])).logits[0]
            logp_LV = logits_LV.log_softmax(-1)[len(prompt) - 1:-1]  # the model's dtype: float32 or float64
            logps.append(logp_LV.gather(-1, torch.tensor(response)[:, None])[:, 0])
    logp_N = torch.cat(logps)
    (loss_weights(logp_N.numel(), logp_N.dtype) * logp_N).sum().backward()
    return logp_N.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b, label, rtol):
    logp_a, grads_a = a
    logp_b, grads_b = b
    assert rel_err(logp_a, logp_b) < rtol, f"{label}: log-probs rel err {rel_err(logp_a, logp_b):.2e} >= {rtol:.2e}"
    worst = max(grads_b, key=lambda n: rel_err(grads_a[n], grads_b[n]))
    assert rel_err(grads_a[worst], grads_b[worst]) < rtol, \
        f"{label}: grad of {worst} rel err {rel_err(grads_a[worst], grads_b[worst]):.2e} >= {rtol:.2e}"


def assert_shared_equals_expanded_equals_plain(arch, kernel, dtype, rtol):
    groups = make_groups(seed=len(arch))
    model = make_model(arch, register_with_transformers(kernel), dtype)
    shared = packed_logprobs_and_grads(model, pack_groups(groups, pad_id=0, pad_to_multiple_of=16))
    expanded = packed_logprobs_and_grads(model, pack_expanded(groups, pad_id=0))
    model.set_attn_implementation("sdpa")
    plain = plain_logprobs_and_grads(model, groups)
    assert shared[0].dtype == expanded[0].dtype == plain[0].dtype == dtype
    assert_same(shared, expanded, "shared vs expanded", rtol)
    assert_same(shared, plain, "shared vs plain", rtol)


def plain_tokens(groups) -> int:
    return sum(len(prompt) + len(response) for prompt, responses in groups for response in responses)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("kernel", ["portable", "reference"])
def test_shared_equals_expanded_equals_plain(arch, kernel):
    assert_shared_equals_expanded_equals_plain(arch, kernel, torch.float64, EXACT_RTOL)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_float32_shared_expanded_and_plain_differ_by_round_off(arch):
    """float32 documents, transformers' models unmodified: measured <= 1.4 * eps * sqrt(tokens) (two
    decoder layers, initializer_range 0.2), the bound is 16 * eps * sqrt(tokens) of the plain layout."""
    rtol = roundoff_bound(torch.float32, plain_tokens(make_groups(seed=len(arch))))
    assert_shared_equals_expanded_equals_plain(arch, "portable", torch.float32, rtol)


def test_the_layout_matters():
    """Guard against a vacuous pass: the packed row with plain causal attention is wrong."""
    groups = make_groups(seed=3)
    model = make_model("qwen2", register_with_transformers("portable"))
    packed = pack_groups(groups, pad_id=0)
    with torch.no_grad():
        right = response_token_logprobs(model(**packed.model_kwargs()).logits, packed)
        kwargs = {k: v for k, v in packed.model_kwargs().items() if k != LAYOUT_KWARG}
        wrong = response_token_logprobs(model(**kwargs).logits, packed)
    assert rel_err(wrong, right) > 1e-3


def test_lm_head_on_selected_positions_only():
    groups = make_groups(seed=5)
    model = make_model("llama", register_with_transformers("portable"), torch.float64)
    packed = pack_groups(groups, pad_id=0)
    with torch.no_grad():
        full = response_token_logprobs(model(**packed.model_kwargs()).logits, packed)
        hidden = model.get_decoder()(**packed.model_kwargs()).last_hidden_state
        selected = model.get_output_embeddings()(select_logit_positions(hidden, packed))
        assert full.dtype == torch.float64
        assert rel_err(response_token_logprobs(selected, packed), full) < EXACT_RTOL
        kept = model(**packed.model_kwargs(), logits_to_keep=packed.logit_positions).logits[0]
        assert rel_err(response_token_logprobs(kept, packed), full) < EXACT_RTOL


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_generation_without_layout_is_plain_sdpa(arch):
    """No layout kwarg: the registered implementation is causal SDPA, padding masks included."""
    prompts = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    outputs = {}
    for attn in ("sdpa", register_with_transformers("portable")):
        model = make_model(arch, attn)
        outputs[attn] = model.generate(prompts, attention_mask=attention_mask, max_new_tokens=6,
                                       do_sample=False, pad_token_id=0)
    first, second = outputs.values()
    assert torch.equal(first, second)


def test_layout_rejects_batched_rows():
    model = make_model("qwen2", register_with_transformers("portable"))
    packed = pack_groups(make_groups(seed=1), pad_id=0)
    kwargs = packed.model_kwargs()
    kwargs["input_ids"] = kwargs["input_ids"].repeat(2, 1)
    kwargs["position_ids"] = kwargs["position_ids"].repeat(2, 1)
    with pytest.raises(ValueError, match="one packed row"):
        model(**kwargs)
