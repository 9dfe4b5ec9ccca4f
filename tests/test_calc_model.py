"""engine.calc_model (`embedded://tiny-calc`): a miniature build loads and is cached under its own stamp, and
its demonstrations are exactly what the multi-turn rollout engine sees: separately tokenized segments whose
observation carries no loss."""
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine import calc_model as cm
from engine import default_model as dm
from engine.data.calc import format_prompt, make_split
from engine.envs.base import EpisodeEnd, Observation
from engine.envs.tools import ToolEnvironment, calculator_tool
from engine.rewards.gsm8k import gsm8k_reward
from engine.rollout.multiturn import MultiTurnOptions
from engine.rollout.stopping import StopStrings, token_decoder

TINY = cm.CalcBuild(dm.BuildSpec(tokenizer_problems=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                 intermediate_size=64, sft_problems=200, sft_steps=3, batch_size=8, warmup_steps=1))


def _quiet(_: str) -> None:
    pass


def _build(cache: Path, builder=cm.build_calc_folder) -> Path:
    return dm._ensure(cache, dm.CALC_NAME, TINY, 0, _quiet, builder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tokenizer(tiny_folder):
    return AutoTokenizer.from_pretrained(tiny_folder)


def _options(tokenizer) -> MultiTurnOptions:
    """The multi-turn engine's defaults (observation format, turn-end string) with this tokenizer."""
    return MultiTurnOptions(environment=lambda prompt, reference: ToolEnvironment([calculator_tool()]),
                            encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
                            decode=token_decoder(tokenizer))


def test_build_is_a_loadable_qwen2_folder_with_its_own_stamp(tiny_folder, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert tiny_folder.name == "tiny-calc" and model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer) and tokenizer.pad_token_id != tokenizer.eos_token_id

    def must_not_build(*_):
        raise AssertionError("rebuilt although the stamp matches")

    assert _build(tiny_folder.parent, builder=must_not_build) == tiny_folder


def test_tokenizer_covers_the_tool_call_and_response(tokenizer):
    """Trained on whole demonstrations: the call's fixed JSON and the response tags are a few tokens each."""
    vocab = tokenizer.get_vocab()
    assert {"calculator", "expression", "arguments", "tool", "_call", "_response"} <= vocab.keys()
    demo, = cm.demonstrations(tokenizer, make_split("train", 1))
    assert len(demo.turn) - sum(c.isdigit() for c in tokenizer.decode(demo.turn)) <= 30  # of ~75 characters
    assert len(demo.observation) - sum(c.isdigit() for c in tokenizer.decode(demo.observation)) <= 12


def test_observation_tokens_carry_no_loss(tokenizer):
    demo, = cm.demonstrations(tokenizer, make_split("train", 1))
    example = cm.tool_example(demo, format_loss=True)
    _, labels_BT = dm._collate([example], pad_id=tokenizer.pad_token_id)
    labels = labels_BT[0].tolist()
    P, turn, obs = len(demo.prompt), len(demo.turn), len(demo.observation)
    assert labels[:P] == [-100] * P
    assert labels[P:P + turn] == demo.turn
    assert labels[P + turn:P + turn + obs] == [-100] * obs
    assert labels[P + turn + obs:] == demo.answer and demo.answer[-1] == tokenizer.eos_token_id


def test_sft_mixes_tool_and_direct_examples_and_supervises_few_decisions(tokenizer):
    examples = cm._sft_examples(tokenizer, TINY.spec, seed=0)
    tools = [e for e in examples if e.context]
    assert 0.6 < len(tools) / len(examples) < 0.95  # working_fraction 0.8
    assert all(e.format_loss for e in examples if not e.context)
    assert sum(e.format_loss for e in tools) < 0.3 * len(tools)  # keep_decision ~0.08


def test_segments_are_what_the_rollout_engine_sees(tokenizer):
    """Replay a demonstration through the engine's own pieces: its turn ends at the last token (turn-end string),
    the environment answers with the result, whose rendering the engine encodes to exactly the observation
    segment; the answer turn ends the episode with a correct, rewarded trajectory."""
    options = _options(tokenizer)
    stops = StopStrings(options.turn_end_strings, options.decode)
    for problem, demo in zip(problems := make_split("heldout", 20), cm.demonstrations(tokenizer, problems)):
        assert demo.prompt == tokenizer(format_prompt(problem.question), add_special_tokens=False)["input_ids"]
        assert stops.first_stop(demo.turn) == len(demo.turn) - 1
        env = options.environment(format_prompt(problem.question), problem.answer)
        step = env.step(options.decode(demo.turn))
        assert isinstance(step, Observation) and step.text == problem.answer and step.tool_errors == 0
        assert options.encode(options.observation_format.format(text=step.text)) == demo.observation
        assert isinstance(env.step(options.decode(demo.answer[:-1])), EpisodeEnd)
        trajectory = demo.turn + demo.observation + demo.answer
        assert gsm8k_reward(options.decode(trajectory), problem.answer) == 1.0


def test_resolve_model_path_builds_tiny_calc(tmp_path, monkeypatch):
    monkeypatch.setattr(cm, "CALC_BUILD", TINY)
    built = dm.resolve_model_path("embedded://tiny-calc", tmp_path, log=_quiet)
    assert built == tmp_path / "tiny-calc" and (built / "config.json").is_file()
    with pytest.raises(ValueError, match="tiny-math, tiny-calc"):
        dm.resolve_model_path("embedded://tiny-huge", tmp_path)
