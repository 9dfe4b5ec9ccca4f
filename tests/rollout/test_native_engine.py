"""The native rollout engine against the model itself: log-probs, greedy parity with HF generate, determinism,
stopping, one prefill per prompt, incremental yields, weight loading, and what it leaves the trainer."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from engine.rollout import build_rollout_engine
from engine.rollout.base import SamplingParams
from engine.rollout.native import NativeRolloutEngine
from engine.rollout.stopping import StopStrings, stop_token_ids
from engine.types import PromptItem

CPU = torch.device("cpu")
VOCAB = 96
EOS, PAD = 1, 0
STOPS = tuple(range(40, 52))  # common enough that rows stop at different steps and get compacted away
ARCHS = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


def tiny_model(arch: str = "qwen2", tied: bool = True, seed: int = 0) -> nn.Module:
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        tie_word_embeddings=tied, initializer_range=0.1,  # peaked logits: no near-ties
                        bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    return model_cls(config).eval()


def prompts_of(*token_lists: list[int]) -> list[PromptItem]:
    return [PromptItem(index=i, prompt_ids=list(ids), reference="") for i, ids in enumerate(token_lists)]


PROMPTS = prompts_of([5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20], [30, 31, 32, 33])


def engine_for(model: nn.Module, **kwargs) -> NativeRolloutEngine:
    return NativeRolloutEngine(model, eos_token_id=EOS, pad_token_id=PAD, device=CPU, **kwargs)


def angle_decode(ids: list[int]) -> str:
    """A stand-in tokenizer: token t reads "<t>", so a string such as "1><22" starts inside one token."""
    return "".join(f"<{i}>" for i in ids)


def by_prompt(groups) -> dict[int, list[list[int]]]:
    return {g.prompt.index: [c.token_ids for c in g.completions] for g in groups}


class ChainLM(nn.Module):
    """A tiny HF model (for a real KV cache) pushed to always continue with token (last + 1) % V, so every
    sequence's future is known from its last prompt token."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids: torch.Tensor, **kwargs):
        out = self.inner(input_ids=input_ids, **kwargs)
        fed_BT = input_ids[:, -out.logits.shape[1]:]
        out.logits = out.logits + 50.0 * F.one_hot((fed_BT + 1) % VOCAB, VOCAB)
        return out


class ForwardLog:
    """Records the input_ids shape of every forward of a module."""

    def __init__(self, model: nn.Module):
        self.shapes: list[tuple[int, int]] = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))


@pytest.mark.parametrize("arch, tied", [("qwen2", True), ("llama", False)])
@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 8), (0.0, 0)])
def test_logprobs_equal_a_teacher_forced_forward(arch, tied, temperature, top_k):
    model = tiny_model(arch, tied)
    params = SamplingParams(n=3, max_new_tokens=10, temperature=temperature, top_k=top_k, seed=1,
                            stop_token_ids=STOPS)
    groups = list(engine_for(model).generate(PROMPTS, params))
    assert sorted(g.prompt.index for g in groups) == [0, 1, 2, 3]
    for group in groups:
        for completion in group.completions:
            prompt = group.prompt.prompt_ids
            ids_1T = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                logits_TV = model(input_ids=ids_1T).logits[0, len(prompt) - 1:-1]
            logp_TV = torch.log_softmax(logits_TV / (temperature or 1.0), dim=-1)
            expected_R = logp_TV.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
            assert len(completion.logprobs) == len(completion.token_ids)
            assert torch.allclose(torch.tensor(completion.logprobs), expected_R, atol=1e-4)


@pytest.mark.parametrize("arch, tied", [("qwen2", True), ("llama", False)])
def test_greedy_equals_hf_generate_on_a_left_padded_batch(arch, tied):
    model = tiny_model(arch, tied)
    R = 12
    params = SamplingParams(n=1, max_new_tokens=R, temperature=0, stop_token_ids=STOPS)
    groups = by_prompt(engine_for(model).generate(PROMPTS, params))
    P = max(len(p.prompt_ids) for p in PROMPTS)
    ids_BP = torch.tensor([[PAD] * (P - len(p.prompt_ids)) + p.prompt_ids for p in PROMPTS])
    mask_BP = (torch.arange(P) >= P - torch.tensor([len(p.prompt_ids) for p in PROMPTS])[:, None]).long()
    hf_BR = model.generate(input_ids=ids_BP, attention_mask=mask_BP, do_sample=False, max_new_tokens=R,
                           eos_token_id=[EOS, *STOPS], pad_token_id=PAD)[:, P:]
    for b, prompt in enumerate(PROMPTS):
        hf = hf_BR[b].tolist()
        stop_at = next((r for r, token in enumerate(hf) if token in (EOS, *STOPS)), len(hf) - 1)
        assert groups[prompt.index] == [hf[:stop_at + 1]]
    # The G-fold cache expansion: every greedy sample of a prompt is its G = 1 answer.
    wide = by_prompt(engine_for(model).generate(PROMPTS, SamplingParams(n=3, max_new_tokens=R, temperature=0,
                                                                        stop_token_ids=STOPS)))
    assert all(wide[i] == groups[i] * 3 for i in groups)


def test_same_seed_same_tokens_different_seed_different_tokens():
    engine = engine_for(tiny_model())
    run = lambda seed: by_prompt(engine.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=8, seed=seed)))
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_ignore_eos_runs_every_response_to_max_new_tokens():
    engine = NativeRolloutEngine(ChainLM(tiny_model()), eos_token_id=40, pad_token_id=PAD, device=CPU)
    params = SamplingParams(n=2, max_new_tokens=5, stop_token_ids=(10, 12), seed=0, ignore_eos=True)
    # The chains that stop at 10 and at eos 40 above run on past them.
    groups = {g.prompt.index: g for g in engine.generate(prompts_of([3, 8], [9], [37]), params)}
    expected = {0: [9, 10, 11, 12, 13], 1: [10, 11, 12, 13, 14], 2: [38, 39, 40, 41, 42]}
    for index, tokens in expected.items():
        assert all((c.token_ids, c.finished) == (tokens, False) for c in groups[index].completions)


def test_stop_tokens_eos_and_max_new_tokens():
    engine = NativeRolloutEngine(ChainLM(tiny_model()), eos_token_id=40, pad_token_id=PAD, device=CPU)
    params = SamplingParams(n=2, max_new_tokens=5, stop_token_ids=(10, 12), seed=0)
    # Chains: 8 -> 9 10 (stop), 9 -> 10 (stop at once), 37 -> 38 39 40 (eos), 20 -> 21..25 (length).
    groups = {g.prompt.index: g for g in engine.generate(prompts_of([3, 8], [9], [37], [5, 20]), params)}
    expected = {0: ([9, 10], True), 1: ([10], True), 2: ([38, 39, 40], True), 3: ([21, 22, 23, 24, 25], False)}
    for index, (tokens, finished) in expected.items():
        for completion in groups[index].completions:
            assert (completion.token_ids, completion.finished) == (tokens, finished)
            assert len(completion.logprobs) == len(tokens)


def test_stop_ids_of_a_generation_config_list_end_generation():
    engine = NativeRolloutEngine(ChainLM(tiny_model()), eos_token_id=40, pad_token_id=PAD, device=CPU)
    ids = stop_token_ids(SimpleNamespace(eos_token_id=40), GenerationConfig(eos_token_id=[12, 40, 10]))
    assert ids == (40, 12, 10)
    params = SamplingParams(n=2, max_new_tokens=6, stop_token_ids=ids)
    groups = {g.prompt.index: g for g in engine.generate(prompts_of([8], [10], [37], [20]), params)}
    expected = {0: ([9, 10], True), 1: ([11, 12], True), 2: ([38, 39, 40], True), 3: ([21, 22, 23, 24, 25, 26], False)}
    for index, (tokens, finished) in expected.items():
        assert [(c.token_ids, c.finished) for c in groups[index].completions] == [(tokens, finished)] * 2


def test_a_stop_string_ends_the_sequence_at_the_token_that_completes_it():
    engine = NativeRolloutEngine(ChainLM(tiny_model()), eos_token_id=40, pad_token_id=PAD, device=CPU,
                                 decode=angle_decode)
    params = SamplingParams(n=2, max_new_tokens=5, stop_strings=("1><22", "<57>", "<6"), seed=0)
    # Chains: 20 -> 21 22 ("1><22" spans two tokens), 55 -> 56 57, 4 -> 5 6 ("<6" ends inside token 6),
    # 21 -> 22..26: "<21>" is in the prompt only, "1><22" never forms, and 22 alone does not complete it.
    groups = {g.prompt.index: g for g in engine.generate(prompts_of([19, 20], [55], [4], [20, 21]), params)}
    expected = {0: ([21, 22], True), 1: ([56, 57], True), 2: ([5, 6], True), 3: ([22, 23, 24, 25, 26], False)}
    for index, (tokens, finished) in expected.items():
        for completion in groups[index].completions:
            assert (completion.token_ids, completion.finished) == (tokens, finished)
            assert len(completion.logprobs) == len(tokens)


@pytest.mark.parametrize("capacity", [256, 5])
def test_stop_strings_cut_the_samples_and_leave_the_random_streams_alone(capacity):
    """With stop strings each sample is its stringless twin cut after the first completed string: same tokens,
    same log-probs, whatever else shares the batch (the per-prompt random streams do not see the stops)."""
    model = tiny_model()
    strings = ("7><", "<2", "<33>")  # "7><": a token ending in 7, completed by whatever token follows it
    base = SamplingParams(n=3, max_new_tokens=12, seed=2, stop_token_ids=STOPS)
    free = {g.prompt.index: g for g in engine_for(model).generate(PROMPTS, base)}
    cut = engine_for(model, max_batch_sequences=capacity, decode=angle_decode).generate(
        PROMPTS, SamplingParams(n=3, max_new_tokens=12, seed=2, stop_token_ids=STOPS, stop_strings=strings))
    matcher, stopped = StopStrings(strings, angle_decode), 0
    for group in cut:
        for got, want in zip(group.completions, free[group.prompt.index].completions):
            stop = matcher.first_stop(want.token_ids)
            length = len(want.token_ids) if stop is None else stop + 1
            assert got.token_ids == want.token_ids[:length]
            assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(want.logprobs[:length]), atol=1e-5)
            assert got.finished == (want.finished or stop is not None)
            stopped += stop is not None and stop + 1 < len(want.token_ids)
    assert stopped >= 4  # the strings did cut samples short


def test_stop_strings_need_a_decode():
    with pytest.raises(ValueError, match="decode"):
        engine_for(tiny_model()).generate(PROMPTS, SamplingParams(stop_strings=("x",)))
    with pytest.raises(ValueError, match="stop_strings"):
        engine_for(tiny_model(), decode=angle_decode).generate(PROMPTS, SamplingParams(stop_strings=("",)))


def test_each_prompt_is_prefilled_once_and_the_capacity_bounds_the_batch():
    model = tiny_model()
    log = ForwardLog(model)
    list(engine_for(model).generate(PROMPTS, SamplingParams(n=5, max_new_tokens=6)))
    P = max(len(p.prompt_ids) for p in PROMPTS)
    assert log.shapes[0] == (len(PROMPTS), P)  # B rows, not B*G
    assert all(t == 1 and rows <= len(PROMPTS) * 5 for rows, t in log.shapes[1:])
    assert len(log.shapes) <= 6  # one prefill + at most R - 1 decode forwards

    log.shapes.clear()
    list(engine_for(model, max_batch_sequences=6).generate(PROMPTS, SamplingParams(n=3, max_new_tokens=4)))
    prefills = [rows for rows, t in log.shapes if t > 1]
    assert prefills[0] == 2 and sum(prefills) == 4  # 6 // G = 2 prompts fit; the rest wait for free rows
    assert max(rows for rows, _ in log.shapes) <= 6


def test_freed_rows_are_refilled_with_waiting_prompts():
    model = ChainLM(tiny_model())
    log = ForwardLog(model)
    params = SamplingParams(n=2, max_new_tokens=30, stop_token_ids=(10,))
    # Room for two groups. Prompt 1 stops after 2 tokens; prompt 2 must start before prompt 0 (30 tokens) ends.
    engine = engine_for(model, max_batch_sequences=4)
    groups = list(engine.generate(prompts_of([19, 20], [7, 8], [3, 4]), params))
    assert [g.prompt.index for g in groups] == [1, 2, 0]
    assert [c.token_ids for c in groups[1].completions] == [[5, 6, 7, 8, 9, 10]] * 2
    assert all(len(c.token_ids) == 30 for c in groups[2].completions)
    prefill_at = [i for i, (rows, t) in enumerate(log.shapes) if t > 1]
    assert len(prefill_at) == 2 and prefill_at[1] < 6  # refilled right after prompt 1's group ended
    assert max(rows for rows, _ in log.shapes) <= 4


def test_samples_do_not_depend_on_batch_composition():
    """Each prompt has its own random stream: capacity, prompt order and the other prompts of the call do not
    change its samples (what lets a restarted worker regenerate only the missing prompts)."""
    model = tiny_model()
    params = SamplingParams(n=3, max_new_tokens=10, seed=4, stop_token_ids=STOPS)
    full = list(engine_for(model).generate(PROMPTS, params))
    for capacity in (3, 7):
        narrow = list(engine_for(model, max_batch_sequences=capacity).generate(PROMPTS, params))
        assert by_prompt(narrow) == by_prompt(full)
        logp = {g.prompt.index: [c.logprobs for c in g.completions] for g in narrow}
        for g in full:
            for a, b in zip(logp[g.prompt.index], [c.logprobs for c in g.completions]):
                assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    assert by_prompt(engine_for(model).generate(PROMPTS[::-1], params)) == by_prompt(full)
    alone = by_prompt(engine_for(model).generate(PROMPTS[2:3], params))
    assert alone == {2: by_prompt(full)[2]}


def test_groups_are_yielded_as_they_finish_with_the_engine_version():
    model = ChainLM(tiny_model())
    log = ForwardLog(model)
    engine = engine_for(model)
    engine.load_weights([], version=7)
    params = SamplingParams(n=2, max_new_tokens=30, stop_token_ids=(10,))
    stream = engine.generate(prompts_of([19, 20], [7, 8]), params)  # prompt 0 runs 30 tokens, prompt 1 stops at 2
    assert log.shapes == []  # lazy: nothing runs before the first next()
    first = next(stream)
    assert first.prompt.index == 1 and first.version == 7
    assert len(log.shapes) == 2  # prefill + one decode: the long group is far from done
    rest = list(stream)
    assert [g.prompt.index for g in rest] == [0] and rest[0].version == 7
    assert all(len(c.token_ids) == 30 for c in rest[0].completions)


@pytest.mark.parametrize("tied", [True, False])
def test_load_weights_changes_outputs_and_sets_the_version(tied):
    model, other = tiny_model("qwen2", tied, seed=0), tiny_model("qwen2", tied, seed=1)
    engine = engine_for(model)
    params = SamplingParams(n=2, max_new_tokens=8, temperature=0)
    before = by_prompt(engine.generate(PROMPTS, params))
    engine.load_weights(model.named_parameters(), version=1)  # colocated: the same storage, a no-op
    assert by_prompt(engine.generate(PROMPTS, params)) == before and engine.version == 1

    engine.load_weights(other.state_dict().items(), version=2)  # state_dict names a tied lm_head too
    after = by_prompt(engine.generate(PROMPTS, params))
    assert after != before and engine.version == 2
    assert after == by_prompt(engine_for(other).generate(PROMPTS, params))
    groups = list(engine.generate(PROMPTS, params))
    assert all(g.version == 2 for g in groups)


def test_load_weights_rejects_unknown_names_and_diverging_tied_aliases():
    model = tiny_model(tied=True)
    engine = engine_for(model)
    with pytest.raises(KeyError, match="no_such.weight"):
        engine.load_weights([("no_such.weight", torch.zeros(1))], version=1)
    embed = model.get_input_embeddings().weight
    with pytest.raises(ValueError, match="tied"):
        engine.load_weights([("model.embed_tokens.weight", torch.zeros_like(embed)),
                             ("lm_head.weight", torch.ones_like(embed))], version=1)


def test_top_k_one_and_tiny_top_p_equal_greedy():
    engine = engine_for(tiny_model("llama", tied=False))
    greedy = by_prompt(engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8, temperature=0)))
    top_k = by_prompt(engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8, top_k=1, seed=5)))
    top_p = by_prompt(engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8, top_p=1e-6, seed=6)))
    assert top_k == greedy and top_p == greedy


def test_the_consumer_trains_between_yields():
    model = ChainLM(tiny_model())
    model.train()
    stream = engine_for(model).generate(prompts_of([19, 20], [7, 8]), SamplingParams(n=2, max_new_tokens=20,
                                                                                     stop_token_ids=(10,)))
    next(stream)
    # The generator is suspended: grad mode and train mode are the consumer's again, backward works.
    assert torch.is_grad_enabled() and model.training and model.inner.model.layers[0].training
    model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
    assert list(stream) and model.training


def test_a_weight_write_during_generation_raises():
    model = tiny_model()
    stream = engine_for(model, max_batch_sequences=2).generate(PROMPTS, SamplingParams(n=2, max_new_tokens=3))
    next(stream)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # an optimizer step before the last group
    with pytest.raises(RuntimeError, match="written while generate"):
        list(stream)


def test_bad_calls_fail_at_the_call():
    engine = engine_for(tiny_model())
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(PROMPTS, SamplingParams(temperature=-1.0))
    with pytest.raises(ValueError, match="no tokens"):
        engine.generate(prompts_of([]), SamplingParams())


def test_build_rollout_engine():
    model = tiny_model()
    engine = build_rollout_engine("native", model, SimpleNamespace(eos_token_id=3, pad_token_id=None), CPU)
    assert isinstance(engine, NativeRolloutEngine) and engine.version == 0
    assert (engine.eos_token_id, engine.pad_token_id) == (3, 3)
    tokenizer = SimpleNamespace(eos_token_id=3, pad_token_id=0, decode=lambda ids, **kw: angle_decode(ids))
    engine = build_rollout_engine("native", ChainLM(model), tokenizer, CPU)  # the tokenizer's decode: stop strings
    group = next(engine.generate(prompts_of([7]), SamplingParams(n=2, max_new_tokens=5, stop_strings=("<9>",))))
    assert [c.token_ids for c in group.completions] == [[8, 9]] * 2
    with pytest.raises(ValueError, match="build_vllm_engine"):
        build_rollout_engine("vllm", model, SimpleNamespace(eos_token_id=3, pad_token_id=0), CPU)
    with pytest.raises(ValueError, match="native"):
        build_rollout_engine("sglang", model, SimpleNamespace(eos_token_id=3, pad_token_id=0), CPU)
