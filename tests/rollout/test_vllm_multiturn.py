"""Multi-turn rollouts on vLLM (engine/rollout/vllm_multiturn.py) on the tiny Qwen2 of tests/rollout/
test_vllm_engine.py: every turn is a request continuing prompt + trajectory, the sampled tokens' log-probs
equal a float32 forward over the concatenated trajectory, observations are the environment's ids, the limits
cut trajectories, and a slow environment holds only its own group.

The miniature's byte-level output is noise, so turns end at a quarter of the vocabulary taken as stop ids (or at
single-letter turn-end strings); needs vllm (`.venv-vllm`). At most one vLLM engine lives at a time.
"""
from __future__ import annotations

import pytest
import torch

from engine.envs.base import EnvLimits
from engine.rollout.base import SamplingParams
from engine.rollout.multiturn import MultiTurnOptions
from engine.rollout.vllm_multiturn import turn_seed
from engine.types import PromptItem
from helpers import ScriptedEnv

PARITY_TOL = 1e-4  # the single-turn vLLM parity bound (tests/rollout/test_vllm_engine.py)
TURN_ENDS = tuple(range(100, 164))  # a quarter of the 256 ids: turns end after a few tokens
PARAMS = SamplingParams(n=3, max_new_tokens=12, temperature=1.0, stop_token_ids=TURN_ENDS, seed=7)
PROMPTS = [PromptItem(index=i, prompt_ids=ids, reference="", text=f"p{i}")
           for i, ids in enumerate([[5, 6, 7, 8, 40], [9, 10, 11], [50, 51, 52, 53, 54, 55, 56], [60, 61]])]
FORMAT = "{text}!"


def test_turn_seeds_differ_by_sample_and_turn_only():
    seeds = {turn_seed(7, i, k, turn) for i in range(4) for k in range(3) for turn in range(1, 5)}
    assert len(seeds) == 48 and all(0 <= s < 2 ** 63 for s in seeds)
    assert turn_seed(7, 2, 1, 3) == turn_seed(7, 2, 1, 3) != turn_seed(8, 2, 1, 3)


# ---------------------------------------------------------------------- engine fixtures
@pytest.fixture(scope="module")
def tokenizer(vllm_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vllm_model_dir)


@pytest.fixture(scope="module")
def base(vllm_model_dir, tokenizer):
    from engine.rollout.vllm import VllmOptions, VllmRolloutEngine

    engine = VllmRolloutEngine(vllm_model_dir, tokenizer.eos_token_id, VllmOptions(
        dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=256, max_num_seqs=64))
    yield engine
    engine.close()


def encode_with(tokenizer):
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def engine_for(base, tokenizer, factory=ScriptedEnv, limits=EnvLimits(max_turns=4, max_tokens=120),
               turn_end_strings=()):
    from engine.rollout.stopping import token_decoder
    from engine.rollout.vllm_multiturn import VllmMultiTurnEngine

    options = MultiTurnOptions(environment=factory, encode=encode_with(tokenizer), decode=token_decoder(tokenizer),
                               limits=limits, turn_end_strings=turn_end_strings, observation_format=FORMAT)
    return VllmMultiTurnEngine(base, options)


def hf_logprobs(model, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    """float32 log_softmax at every position of prompt + trajectory, from one plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0].float()
    P = len(prompt_ids)
    return torch.log_softmax(logits[P - 1:-1], -1).gather(1, torch.tensor(ids)[:, None])[:, 0]


def stop_ids(tokenizer) -> set[int]:
    """The ids vLLM ends a sequence at by itself: the tokenizer's eos and the folder's generation_config eos ids
    (special tokens, a superset)."""
    return set(tokenizer.all_special_ids)


def runs_of(ids: list[int], flags: list[bool]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for token, flag in zip(ids, flags):
        if runs and runs[-1][1] == flag:
            runs[-1][0].append(token)
        else:
            runs.append(([token], flag))
    return runs


# ---------------------------------------------------------------------- the properties
@pytest.mark.vllm
def test_sampled_logprobs_equal_a_float32_forward_over_the_trajectory(base, tokenizer, vllm_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32).eval()
    groups = list(engine_for(base, tokenizer).generate(PROMPTS, PARAMS))
    assert sorted(g.prompt.index for g in groups) == [0, 1, 2, 3]
    observed, gap = 0, 0.0
    for group in groups:
        for c in group.completions:
            flags = torch.tensor(c.sampled)
            observed += int((~flags).sum())
            expected = hf_logprobs(model, group.prompt.prompt_ids, c.token_ids)[flags]
            gap = max(gap, (torch.tensor(c.logprobs)[flags] - expected).abs().max().item())
            assert all(lp == 0.0 for lp, s in zip(c.logprobs, c.sampled) if not s)
    assert observed > 0  # later turns continued after observations
    assert gap < PARITY_TOL


@pytest.mark.vllm
def test_observations_are_the_environments_ids_appended_after_the_turn(base, tokenizer):
    encode = encode_with(tokenizer)
    for group in engine_for(base, tokenizer).generate(PROMPTS[:2], PARAMS):
        for c in group.completions:
            runs = runs_of(c.token_ids, c.sampled)
            env_runs = [ids for ids, sampled in runs if not sampled]
            assert env_runs == [encode(FORMAT.format(text="r" * (1 + 3 * k))) for k in range(1, len(env_runs) + 1)]
            for ids, sampled in runs[:-1]:  # every turn but the last ended on a stop id
                if sampled:
                    assert ids[-1] in {*TURN_ENDS, *stop_ids(tokenizer)}
            if c.finished:
                assert c.episode.turns == 3 and c.episode.tool_calls == 2
                assert dict(c.episode.reward_parts) == {"bonus": 0.5}


@pytest.mark.vllm
def test_turn_end_strings_end_a_turn_with_the_completing_token_kept(base, tokenizer):
    from engine.rollout.stopping import token_decoder

    decode, letters = token_decoder(tokenizer), tuple("abcdefghijklmnopqrstuvwxyz")
    params = SamplingParams(n=3, max_new_tokens=24, temperature=1.0, seed=3)
    limits = EnvLimits(max_turns=4, max_tokens=120)
    ended = 0
    for group in engine_for(base, tokenizer, limits=limits, turn_end_strings=letters).generate(PROMPTS, params):
        for c in group.completions:
            for ids, sampled in runs_of(c.token_ids, c.sampled)[:-1]:
                if sampled and ids[-1] not in stop_ids(tokenizer):  # else at an eos id
                    ended += 1
                    text = decode(ids)  # the turn ends at the first token completing a letter, kept
                    assert any(text.endswith(s) for s in letters)
                    assert not any(s in decode(ids[:-1]) for s in letters)
    assert ended > 0


@pytest.mark.vllm
def test_trajectories_are_repeatable_and_do_not_depend_on_the_batch(base, tokenizer):
    together = {g.prompt.index: g for g in engine_for(base, tokenizer).generate(PROMPTS, PARAMS)}
    (alone,) = engine_for(base, tokenizer).generate(PROMPTS[1:2], PARAMS)
    assert [c.token_ids for c in alone.completions] == [c.token_ids for c in together[1].completions]
    assert len({tuple(c.token_ids) for c in alone.completions}) > 1  # the G trajectories differ


@pytest.mark.vllm
def test_turn_and_token_limits_cut_the_trajectory(base, tokenizer):
    encode = encode_with(tokenizer)
    engine = engine_for(base, tokenizer, limits=EnvLimits(max_turns=2, max_tokens=120))
    cut_after_two = 0
    for group in engine.generate(PROMPTS, PARAMS):
        for c in group.completions:
            assert c.episode.turns <= 2 and not c.finished  # ScriptedEnv ends only at its third step
            if c.episode.turns == 2:
                cut_after_two += 1
                assert sum(not s for s in c.sampled) == len(encode(FORMAT.format(text="rrrr")))
    assert cut_after_two > 0
    engine = engine_for(base, tokenizer, limits=EnvLimits(max_turns=4, max_tokens=10))
    lengths = [len(c.token_ids) for g in engine.generate(PROMPTS, PARAMS) for c in g.completions
               if not c.finished]
    assert lengths and max(lengths) <= 10


@pytest.mark.vllm
def test_a_slow_environment_does_not_hold_the_other_trajectories(base, tokenizer):
    def factory(prompt_text, reference):
        return ScriptedEnv(prompt_text, reference, turns=2, delay_s=1.5 if prompt_text == "p0" else 0.0)

    order = [g.prompt.index for g in engine_for(base, tokenizer, factory=factory).generate(PROMPTS, PARAMS)]
    assert order[-1] == 0 and len(order) == 4


@pytest.mark.vllm
def test_weights_cannot_change_under_an_unexhausted_call(base, tokenizer):
    engine = engine_for(base, tokenizer)
    stream = engine.generate(PROMPTS, PARAMS)
    next(stream)
    with pytest.raises(RuntimeError, match="unexhausted"):
        engine.load_weights([], version=base.version + 1)
    stream.close()  # aborts the requests in flight
    assert not base._in_flight and not base._engine.has_unfinished_requests()


@pytest.mark.vllm
def test_prompt_and_trajectory_must_fit_max_model_len(base, tokenizer):
    engine = engine_for(base, tokenizer, limits=EnvLimits(max_turns=4, max_tokens=253))
    with pytest.raises(ValueError, match="env.max_tokens=253 exceed"):
        engine.generate(PROMPTS[:1], PARAMS)


@pytest.mark.vllm
def test_later_turns_continue_through_the_prefix_cache(base, tokenizer):
    """A later turn's request re-sends prompt + trajectory; vLLM finds the KV of the earlier turns' sampled
    tokens cached and prefills only the rest (RequestOutput.num_cached_tokens). Blocks are cached whole (128
    tokens on the CPU): the 120-token prompt alone fills none, so a hit holds tokens vLLM sampled itself.
    Observations were never computed before their turn, so only the blocks of earlier computation count."""
    engine = engine_for(base, tokenizer, limits=EnvLimits(max_turns=4, max_tokens=120))
    hits: list[tuple[int, int]] = []  # (tokens whose KV the previous turns computed, cached tokens) of later turns
    take_turn = engine._take_turn

    def recording(t, out, version):
        if t.turns > 1:  # the KV of everything up to the previous turn's last sampled token (excluded) exists
            last_sampled = max(i for i, sampled in enumerate(t.sampled) if sampled)
            hits.append((len(t.prompt.prompt_ids) + last_sampled, out.num_cached_tokens))
        take_turn(t, out, version)

    engine._take_turn = recording
    prompt = PromptItem(index=9, prompt_ids=[(7 * i) % 90 + 5 for i in range(120)], reference="", text="p9")
    list(engine.generate([prompt], PARAMS))
    assert any(computed >= 128 for computed, _ in hits), hits  # some turn filled a block with sampled tokens
    assert all(cached >= computed // 128 * 128 for computed, cached in hits), hits


class _Trickle:
    """A PromptSource (a fleet's dealer, engine/rollout/fleet/ranks.py) that hands out one prompt per take."""

    def __init__(self, prompts):
        self.prompts, self.takes = list(prompts), 0

    def take(self, k: int, wait: bool):
        self.takes += 1
        if not self.prompts:
            return None
        return [self.prompts.pop(0)] if k > 0 else []


@pytest.mark.vllm
def test_a_prompt_source_is_drained_and_gives_the_trajectories_of_a_list(base, tokenizer):
    """Under torchrun every rank's engine is fed by a source (rollout on every rank): prompts taken while
    others are in flight get the same trajectories as the whole list at once (per-turn seeds)."""
    together = {g.prompt.index: g for g in engine_for(base, tokenizer).generate(PROMPTS, PARAMS)}
    source = _Trickle(PROMPTS)
    fed = {g.prompt.index: g for g in engine_for(base, tokenizer).generate(source, PARAMS)}
    assert sorted(fed) == sorted(together) and source.takes > len(PROMPTS)  # taken one by one, then exhausted
    for index, group in fed.items():
        assert [c.token_ids for c in group.completions] == [c.token_ids for c in together[index].completions]
    assert engine_for(base, tokenizer).max_batch_sequences == base.max_batch_sequences
