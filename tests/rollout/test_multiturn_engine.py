"""The multi-turn engine: trajectories alternate sampled turns and appended observations in one KV cache.

Exactness: every sampled token's recorded log-prob equals a plain forward over prompt + trajectory (float64),
so the masked cache columns and the positions are right; the trained ids are the sampled ids, never a
re-tokenization; a prompt's trajectories do not depend on its batch; environments run beside generation.
"""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from engine.envs.base import EnvLimits
from engine.rollout.base import SamplingParams
from engine.rollout.multiturn import MultiTurnOptions, MultiTurnRolloutEngine
from engine.rollout.native import NativeRolloutEngine
from engine.types import PromptItem
from helpers import ScriptedEnv

CPU = torch.device("cpu")
VOCAB, EOS, PAD = 96, 1, 0
TURN_ENDS = tuple(range(40, 56))  # frequent: turns end after a few tokens, at different steps per row
OBS_BASE = 70  # observation "tokenizer": one id per character, in 70..89


def tiny_model(seed: int = 0) -> torch.nn.Module:
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=None, eos_token_id=EOS,
                         pad_token_id=PAD)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval().double()


def encode(text: str) -> list[int]:
    return [OBS_BASE + ord(c) % 20 for c in text]


def decode(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def engine_for(model, factory=ScriptedEnv, limits=EnvLimits(max_turns=4, max_tokens=200), batch=64):
    base = NativeRolloutEngine(model, eos_token_id=EOS, pad_token_id=PAD, device=CPU, max_batch_sequences=batch)
    options = MultiTurnOptions(environment=factory, encode=encode, decode=decode, limits=limits,
                               turn_end_strings=(), observation_format="{text}!")
    return MultiTurnRolloutEngine(base, options)


PARAMS = SamplingParams(n=3, max_new_tokens=12, temperature=1.0, stop_token_ids=TURN_ENDS, seed=7)
PROMPTS = [PromptItem(index=i, prompt_ids=ids, reference="", text=f"p{i}")
           for i, ids in enumerate([[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20], [30, 31, 32, 33]])]


def plain_logprobs(model, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
    P = len(prompt_ids)
    return torch.log_softmax(logits[P - 1:-1].double(), -1).gather(1, torch.tensor(ids)[:, None])[:, 0]


def test_sampled_logprobs_equal_a_plain_forward_over_the_trajectory():
    model = tiny_model()
    groups = list(engine_for(model).generate(PROMPTS, PARAMS))
    assert sorted(g.prompt.index for g in groups) == [0, 1, 2, 3]
    observed = 0
    for group in groups:
        for c in group.completions:
            flags = torch.tensor(c.sampled)
            observed += int((~flags).sum())
            expected = plain_logprobs(model, group.prompt.prompt_ids, c.token_ids)[flags]
            # the engine samples from float32 logits (sampling.py): a float32-derived bound
            torch.testing.assert_close(torch.tensor(c.logprobs, dtype=torch.float64)[flags], expected,
                                       rtol=0, atol=1e-5)
            assert all(lp == 0.0 for lp, s in zip(c.logprobs, c.sampled) if not s)
    assert observed > 0  # the layout with holes was exercised


def test_observations_are_the_environments_ids_appended_after_the_turn():
    group = next(iter(engine_for(tiny_model()).generate(PROMPTS[:1], PARAMS)))
    for c in group.completions:
        runs = _runs(c.token_ids, c.sampled)
        env_runs = [ids for ids, sampled in runs if not sampled]
        expected = [encode("r" * (1 + 3 * k) + "!") for k in range(1, len(env_runs) + 1)]
        assert env_runs == expected
        for ids, sampled in runs[:-1]:  # every turn but the last ended on a turn-end token
            if sampled:
                assert ids[-1] in (*TURN_ENDS, EOS)
        if c.finished:
            assert c.episode.turns == 3 and c.episode.tool_calls == 2
            assert dict(c.episode.reward_parts) == {"bonus": 0.5}


def test_trajectories_do_not_depend_on_the_batch():
    model = tiny_model()
    together = {g.prompt.index: g for g in engine_for(model).generate(PROMPTS, PARAMS)}
    for prompt in PROMPTS:
        (alone,) = engine_for(model, batch=3).generate([prompt], PARAMS)
        assert [c.token_ids for c in alone.completions] == [c.token_ids for c in together[prompt.index].completions]


def test_trained_ids_are_the_sampled_ids_not_a_retokenization():
    """With a tokenizer whose encode(decode(ids)) differs from ids (here every id decodes to "<id>", which the
    observation tokenizer would read as one id per character), the completion still holds the sampled ids:
    the recorded log-probs match the model's on exactly those ids."""
    model = tiny_model()
    (group,) = engine_for(model).generate(PROMPTS[:1], PARAMS)
    c = group.completions[0]
    assert encode(decode(c.token_ids)) != c.token_ids
    flags = torch.tensor(c.sampled)
    expected = plain_logprobs(model, group.prompt.prompt_ids, c.token_ids)[flags]
    torch.testing.assert_close(torch.tensor(c.logprobs, dtype=torch.float64)[flags], expected, rtol=0, atol=1e-5)


def test_turn_and_token_limits_cut_the_trajectory():
    limits = EnvLimits(max_turns=2, max_tokens=200)
    (group,) = engine_for(tiny_model(), limits=limits).generate(PROMPTS[:1], PARAMS)
    for c in group.completions:
        assert c.episode.turns <= 2
        if c.episode.turns == 2 and not c.finished:
            assert sum(not s for s in c.sampled) == len(encode("rrrr!"))  # one observation, then cut
    (group,) = engine_for(tiny_model(), limits=EnvLimits(max_turns=4, max_tokens=10)).generate(PROMPTS[:1], PARAMS)
    assert all(len(c.token_ids) <= 10 for c in group.completions)


def test_a_slow_environment_does_not_hold_the_other_trajectories():
    slow_prompt = PROMPTS[0].index

    def factory(prompt_text, reference):
        slow = prompt_text == "p0"
        return ScriptedEnv(prompt_text, reference, turns=2, delay_s=1.5 if slow else 0.0)

    order = [g.prompt.index for g in engine_for(tiny_model(), factory=factory).generate(PROMPTS, PARAMS)]
    assert order[-1] == slow_prompt and len(order) == 4


def test_a_step_past_its_bound_ends_the_trajectory():
    def factory(prompt_text, reference):
        return ScriptedEnv(prompt_text, reference, turns=3, delay_s=5.0)

    limits = EnvLimits(max_turns=4, max_tokens=200, call_timeout_s=0.2, step_timeout_s=0.3)
    (group,) = engine_for(tiny_model(), factory=factory, limits=limits).generate(PROMPTS[:1], PARAMS)
    assert all(not c.finished and c.episode.tool_errors == 1 for c in group.completions)
    # cut at the bound, not when the 5 s step would have answered (wall time would include a busy CPU)
    assert all(c.episode.env_time_s < 2.5 for c in group.completions)


def _runs(ids: list[int], flags: list[bool]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for token, flag in zip(ids, flags):
        if runs and runs[-1][1] == flag:
            runs[-1][0].append(token)
        else:
            runs.append(([token], flag))
    return runs
